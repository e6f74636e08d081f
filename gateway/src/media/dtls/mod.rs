//! DTLS for the media sessions: the webrtc-dtls handshake driver and the record filter
//! that guards an established association.
//!
//! - [`tokio`](self::tokio): webrtc-dtls on a per-thread current-thread runtime, the only
//!   place that sees either.
//! - [`filter`]: which records may still reach an association after its handshake.
mod filter;
mod tokio;

#[cfg(test)]
pub(crate) use self::tokio::test_client;
pub(crate) use self::tokio::FLIGHT_INTERVAL;
pub use self::{
    filter::acceptable_after_handshake,
    tokio::{DtlsDriver, DtlsEvent, DtlsHandle, HandshakeError, SrtpKeys},
};
