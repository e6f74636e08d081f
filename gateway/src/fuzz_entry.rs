//! Entry points for the libFuzzer targets in `gateway/fuzz`, and the seed replay test.
//!
//! Each function takes arbitrary bytes, drives one parser or state machine through its
//! public (or crate-private) API exactly as the logic thread would, and panics only when
//! an invariant breaks. The fuzz crate is a thin wrapper around these, so the plain
//! `cargo test` replay of every checked-in seed and regression input exercises the very
//! same code without libFuzzer.
//!
//! Compiled for `cfg(fuzzing)` (cargo fuzz) and for the crate's own tests (the replay).

mod classifier;
mod config;
mod dtls;
#[cfg(test)]
mod replay;
mod rtp;
mod sdp;
mod sfu;
mod stun;

pub use classifier::classifier;
pub use config::config;
pub use dtls::dtls_filter;
pub use rtp::rtp_rtcp;
pub use sdp::sdp;
pub use sfu::sfu;
pub use stun::stun;

/// A target's entry point: the bytes libFuzzer hands in.
pub type Entry = fn(&[u8]);

/// Every target by the name of its fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("stun", stun),
    ("classifier", classifier),
    ("sdp", sdp),
    ("rtp_rtcp", rtp_rtcp),
    ("sfu", sfu),
    ("dtls_filter", dtls_filter),
    ("config", config),
];
