//! RTP header extensions (RFC 8285) on the forwarding path: read the values roomgate
//! acts on, and write a packet's header again with a new extension block.
//!
//! Sans-IO and allocation-free: parsing borrows from the packet, and the writer fills a
//! caller-provided pool buffer. Extension IDs are per session, so a packet is parsed
//! with its publisher's [`ExtensionIds`] and rewritten with each subscriber's.
//!
//! - [`ids`]: one session's negotiated ID ⇄ kind map.
//! - [`parse`]: the one- and two-byte element walk, into [`Extensions`].
//! - [`write`]: a forwarded packet with a fresh extension block.
//! - [`outgoing`]: what a forwarded packet carries, by kind, written under a
//!   subscriber's IDs.
//! - [`values`]: wire encodings of the values roomgate stamps itself.

pub mod ids;
pub mod outgoing;
pub mod parse;
pub mod values;
pub mod write;

pub use ids::{ExtensionIds, ExtensionIdsError};
pub use outgoing::{Elements, OutgoingExtensions};
pub use parse::{parse_extensions, ExtensionError, Extensions};
pub use values::{
    abs_send_time_to_duration, encode_abs_send_time, encode_transport_seq, ABS_SEND_TIME_LEN,
    TRANSPORT_SEQ_LEN,
};
pub use write::{write_rewritten, WriteError};

/// Profile word of the one-byte form (RFC 8285 §4.2).
pub const ONE_BYTE_PROFILE: u16 = 0xbede;
/// Profile word of the two-byte form with zero appbits (RFC 8285 §4.3); on receipt the
/// low four bits are application bits and are ignored.
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

#[cfg(test)]
mod tests;
