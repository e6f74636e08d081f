//! Sans-IO SFU core: RTP/RTCP views and the per-room forwarding state.
//!
//! Everything here takes plaintext packets (SRTP already removed by the session layer),
//! member IDs and `now`, and queues plaintext packets to send; the logic thread protects
//! and sends them. No sockets, no clock, no locks: one room lives on one thread.
//!
//! - [`rtp`]: zero-copy RTP header view and in-place rewriting.
//! - [`rtcp`]: compound RTCP parsing (SR, RR, SDES, BYE, NACK, PLI, FIR) and writers.
//! - [`RoomCore`]: publishers' tracks, subscribers' slots, forwarding with SSRC/PT/seq/ts
//!   rewriting, NACK answers from per-track buffers, keyframe requests, RR generation.
//!   Output buffers come from a bounded per-room pool that [`RoomCore::recycle`] refills,
//!   so a warm room forwards, answers NACKs and sends RTCP without allocating.

/// Test builds only: the crate's counting `#[global_allocator]`. Declared here and
/// nowhere else, since a crate may have only one; other tests use
/// `crate::sfu::alloc_count::allocations()`.
#[cfg(test)]
pub(crate) mod alloc_count;
pub mod bwe;
pub mod codec;
mod congestion;
mod forward;
pub mod layers;
mod nack_gen;
mod pool;
mod receive;
pub mod rtcp;
pub mod rtp;
pub mod rtp_ext;
mod rtx;
#[cfg(test)]
mod rtx_tests;
#[cfg(test)]
mod simulcast_tests;
mod sink;
mod slot;
#[cfg(test)]
mod tests;
mod track;
pub mod transport_feedback;
pub mod twcc;

pub use forward::{
    EstimateSamples, ForwardConfig, ForwardError, ForwardStats, MemberId, NackMiss, Output,
    PublishedTrack, RoomCore, RttSamples, SlotView, SubscribedSlot, ESTIMATE_BUCKETS_BPS,
    NACK_RTT_BUCKETS_MS,
};
pub use layers::LayerRequest;
