//! What transport-wide congestion-control feedback says about one packet roomgate sent:
//! the meeting point of the send history (which knows send times and sizes) and the
//! bandwidth estimator (which only needs this).

use std::time::{Duration, Instant};

/// One sent packet, as reported by a subscriber's transport-cc feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketResult {
    /// Unwrapped transport-wide sequence number.
    pub seq: u64,
    /// Bytes on the wire as counted by the estimator (the RTP packet after SRTP).
    pub size: usize,
    /// When roomgate handed it to the socket.
    pub sent: Instant,
    /// Arrival time on the receiver's clock, relative to an arbitrary epoch that stays
    /// fixed for the session; `None` when the feedback reports the packet lost.
    pub received: Option<Duration>,
}
