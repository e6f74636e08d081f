//! The session layer between the wire and the SFU core: DTLS handshakes and SRTP.
//!
//! - [`identity`]: the gateway's DTLS certificate and its SDP fingerprint.
//! - [`dtls`]: webrtc-dtls server handshakes run on the owning logic thread.
//! - [`srtp`]: SRTP/SRTCP contexts from the exported keying material.
//! - [`transport`]: one session's DTLS-SRTP behind `handle_*`/`poll_*`.
//! - `final_flight`: roomgate's last handshake flight, repeated for a client that lost it.
pub mod dtls;
mod final_flight;
pub mod identity;
pub mod srtp;
pub mod transport;

pub use dtls::{acceptable_after_handshake, DtlsDriver, DtlsEvent, DtlsHandle, SrtpKeys};
pub use identity::Identity;
pub use srtp::{SrtpSession, UnprotectFailure};
pub use transport::{DtlsInput, RecvError, TransmitError, Transport};
