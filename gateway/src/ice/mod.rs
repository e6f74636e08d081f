//! Sans-IO ICE-lite core: STUN Binding handling and consent freshness.
//!
//! Nothing here touches a socket or reads a clock. The logic thread hands in datagrams
//! (already classified as STUN by their first byte), the peer address and `now`; it gets
//! back bytes to send and decisions (pin this address, unpin that one, consent expired).
//!
//! - [`stun`]: [`parse`] a datagram into a [`StunView`], then [`answer`] a Binding Request
//!   with the session's [`Credentials`] (RFC 8489 short-term credentials, RFC 8445 lite).
//! - [`consent`]: per-session ICE state, the bounded set of validated client addresses and
//!   consent expiry (RFC 7675).
//! - [`credentials`]: server-side ICE credentials and their random generation.
//! - [`sdpfrag`]: RFC 8840 SDP fragments (WHIP/WHEP PATCH: trickle and ICE restarts);
//!   [`patch`]: what a PATCH asks of a session and what came of it.

pub mod consent;
pub mod credentials;
pub mod patch;
pub mod sdpfrag;
pub mod stun;

#[cfg(test)]
mod test_crypto;

pub use consent::{IceSession, IceState, CONSENT_TIMEOUT, MAX_ADDRESSES};
pub use credentials::{constant_time_eq, random_ice_chars, Credentials, RandomError};
pub use stun::{
    answer, bad_request, parse, Answer, StunError, StunOutcome, StunView, MAX_ATTRIBUTES,
    MAX_MESSAGE_LEN,
};
