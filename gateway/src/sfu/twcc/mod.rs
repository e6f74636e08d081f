//! Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01),
//! sans-IO, both directions:
//!
//! - [`feedback`]: the RTCP feedback packet (RTPFB FMT 15), parsed as a borrowed view and
//!   written into a caller's buffer.
//! - [`recorder`]: roomgate receiving from a publisher: records arrivals per transport-wide
//!   sequence number and writes feedback every 50 ms, so the publisher's estimator works.
//! - [`history`]: roomgate sending to a subscriber: hands out transport-wide sequence
//!   numbers, remembers sends, and maps the subscriber's feedback to
//!   [`PacketResult`](crate::sfu::transport_feedback::PacketResult)s for the estimator.

pub mod feedback;
pub mod history;
pub mod recorder;
#[cfg(test)]
mod tests;

pub use feedback::{
    write_feedback, FeedbackError, FeedbackHeader, PacketStatus, TransportFeedback, WriteError,
};
pub use history::{HistoryStats, TwccHistory};
pub use recorder::{RecorderStats, TwccRecorder};
