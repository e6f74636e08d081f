//! The publishers' packet schedule, the same as the roomgate media bench's: video spread
//! evenly at the configured bitrate in frames of several ~1100-byte packets at 30 frames/s
//! (marker on the last), plus 50 packets/s of 160-byte audio, staggered across rooms.
use std::time::{Duration, Instant};

use super::signal::Publisher;
use crate::webrtc::{Kind, Stream};

pub const VIDEO_PAYLOAD: usize = 1100;
pub const AUDIO_PAYLOAD: usize = 160;
pub const AUDIO_PPS: f64 = 50.0;
pub const FPS: f64 = 30.0;

pub fn video_pps(kbps: u64) -> f64 {
    kbps as f64 * 1000.0 / 8.0 / VIDEO_PAYLOAD as f64
}

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

/// Send for `duration`; returns (sent, send drops). A full socket is a drop, never a retry.
pub fn send_for(
    publishers: &[Publisher],
    streams: &mut [(Stream, Stream)],
    kbps: u64,
    duration: Duration,
) -> (u64, u64) {
    let vpps = video_pps(kbps).max(1.0);
    let video_every = Duration::from_secs_f64(1.0 / vpps);
    let audio_every = Duration::from_secs_f64(1.0 / AUDIO_PPS);
    let per_frame = (vpps / FPS).ceil().max(1.0) as u32;
    let start = Instant::now();
    let n = publishers.len().max(1) as u32;
    let mut next: Vec<(Instant, Instant)> = (0..publishers.len())
        .map(|i| {
            (
                start + video_every * i as u32 / n,
                start + audio_every * i as u32 / n,
            )
        })
        .collect();
    let (mut sent, mut drops) = (0u64, 0u64);
    let end = start + duration;
    let mut count = |ok: bool| {
        if ok {
            sent += 1;
        } else {
            drops += 1;
        }
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut earliest = end;
        for ((p, (next_v, next_a)), (video, audio)) in publishers
            .iter()
            .zip(next.iter_mut())
            .zip(streams.iter_mut())
        {
            while *next_v <= now {
                let pkt = video.next(VIDEO_PAYLOAD, per_frame);
                count(p.peer.try_send_rtp(&pkt.to_bytes()));
                *next_v += video_every;
            }
            while *next_a <= now {
                let pkt = audio.next(AUDIO_PAYLOAD, 1);
                count(p.peer.try_send_rtp(&pkt.to_bytes()));
                *next_a += audio_every;
            }
            earliest = earliest.min(*next_v).min(*next_a);
        }
        let wait = earliest.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    (sent, drops)
}
