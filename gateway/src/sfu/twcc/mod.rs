//! Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01),
//! sans-IO:
//!
//! - [`feedback`]: the RTCP feedback packet (RTPFB FMT 15), parsed as a borrowed view and
//!   written into a caller's buffer.
//! - [`recorder`]: roomgate receiving from a publisher: records arrivals per transport-wide
//!   sequence number and writes feedback every 50 ms, so the publisher's estimator works.

pub mod feedback;
pub mod recorder;

pub use feedback::{
    write_feedback, FeedbackError, FeedbackHeader, PacketStatus, TransportFeedback, WriteError,
};
pub use recorder::{RecorderStats, TwccRecorder};
