//! Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01),
//! sans-IO:
//!
//! - [`feedback`]: the RTCP feedback packet (RTPFB FMT 15), parsed as a borrowed view and
//!   written into a caller's buffer.

pub mod feedback;

pub use feedback::{
    write_feedback, FeedbackError, FeedbackHeader, PacketStatus, TransportFeedback, WriteError,
};
