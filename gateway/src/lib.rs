//! roomgate: a WebRTC media gateway that shares one UDP port across all cores and has
//! the kernel steer every packet to the logic thread that owns its room.
//!
//! - [`ice`]: sans-IO ICE-lite / STUN core (bytes and `now` in, bytes out).
//! - [`logic`]: the per-core event loops that own sockets, rooms and sessions.
//! - [`steering`]: the eBPF `sk_reuseport` program's userspace side, or the connected fallback.
//! - [`control`]: the HTTP API, talking to logic threads by message.
//! - [`cluster`]: several hosts sharing one room directory in Redis.
pub mod app;
pub mod cluster;
pub mod config;
pub mod control;
// The fuzz targets' entry points (gateway/fuzz) and the replay of their seeds in tests.
#[cfg(any(fuzzing, test))]
pub mod fuzz_entry;
pub mod ice;
pub mod logic;
pub mod media;
pub mod net;
pub mod room;
pub mod sdp;
pub mod sfu;
pub mod stats;
pub mod steering;
