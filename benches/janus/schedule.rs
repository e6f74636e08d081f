//! Janus's publishers on the media bench's packet schedule (`crate::schedule`), so Janus
//! faces the same load as roomgate and the relay.
use std::time::Duration;

use super::signal::Publisher;
use crate::{
    schedule::{next_packet, send_schedule, Schedule},
    webrtc::{Kind, Stream},
};

/// Per-publisher (video, audio) sequence state, carried across calls as a sender's is.
pub fn streams(publishers: &[Publisher]) -> Vec<(Stream, Stream)> {
    publishers
        .iter()
        .map(|p| {
            (
                Stream::new(Kind::Video, p.video.1, p.video.0),
                Stream::new(Kind::Audio, p.audio.1, p.audio.0),
            )
        })
        .collect()
}

/// Send for `duration` on the shared schedule; returns (sent, send drops).
pub fn send_for(
    publishers: &[Publisher],
    streams: &mut [(Stream, Stream)],
    kbps: u64,
    duration: Duration,
) -> (u64, u64) {
    let schedule = Schedule {
        kbps,
        frame_bursts: false,
    };
    send_schedule(
        publishers.len(),
        schedule,
        duration,
        |i, kind, per_frame| {
            publishers[i]
                .peer
                .try_send_rtp(&next_packet(&mut streams[i], kind, per_frame))
        },
    )
}
