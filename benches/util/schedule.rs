//! The publishers' packet schedule shared by every media baseline (roomgate, the relay,
//! Janus), so they all face the same load: video at the configured bitrate in frames of
//! several ~1100-byte packets at 30 frames/s (marker on the last), plus 50 packets/s of
//! 160-byte audio, staggered across publishers.
use std::time::{Duration, Instant};

use crate::webrtc::{Kind, Stream};

pub const VIDEO_PAYLOAD: usize = 1100;
pub const AUDIO_PAYLOAD: usize = 160;
pub const AUDIO_PPS: f64 = 50.0;
pub const FPS: f64 = 30.0;

pub fn video_pps(kbps: u64) -> f64 {
    kbps as f64 * 1000.0 / 8.0 / VIDEO_PAYLOAD as f64
}

/// How one publisher's media is spread in time.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub kbps: u64,
    /// Each video frame's packets back to back at the frame time (an encoder without a
    /// pacer), instead of spread evenly.
    pub frame_bursts: bool,
}

/// The next packet of `kind` from a publisher's (video, audio) streams.
pub fn next_packet(streams: &mut (Stream, Stream), kind: Kind, per_frame: u32) -> Vec<u8> {
    match kind {
        Kind::Video => streams.0.next(VIDEO_PAYLOAD, per_frame),
        Kind::Audio => streams.1.next(AUDIO_PAYLOAD, 1),
    }
    .to_bytes()
}

/// Pace `sources` senders for `duration`. `send(i, kind, packets_per_frame)` sends one
/// packet of sender `i` and says whether the socket took it; a full socket is a drop,
/// never a retry. Returns (sent, drops).
pub fn send_schedule(
    sources: usize,
    schedule: Schedule,
    duration: Duration,
    mut send: impl FnMut(usize, Kind, u32) -> bool,
) -> (u64, u64) {
    let vpps = video_pps(schedule.kbps).max(1.0);
    let per_frame = (vpps / FPS).ceil().max(1.0) as u32;
    // With frame bursts a video "tick" is one frame of `per_frame` packets.
    let (video_every, video_per_tick) = if schedule.frame_bursts {
        (
            Duration::from_secs_f64(f64::from(per_frame) / vpps),
            per_frame,
        )
    } else {
        (Duration::from_secs_f64(1.0 / vpps), 1)
    };
    let audio_every = Duration::from_secs_f64(1.0 / AUDIO_PPS);
    let start = Instant::now();
    let n = sources.max(1) as u32;
    let mut state: Vec<(Instant, Instant)> = (0..sources)
        .map(|i| {
            (
                start + video_every * i as u32 / n,
                start + audio_every * i as u32 / n,
            )
        })
        .collect();
    let (mut sent, mut drops) = (0u64, 0u64);
    let end = start + duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut earliest = end;
        for (i, (next_v, next_a)) in state.iter_mut().enumerate() {
            for (next, every, kind, per_tick) in [
                (&mut *next_v, video_every, Kind::Video, video_per_tick),
                (&mut *next_a, audio_every, Kind::Audio, 1),
            ] {
                while *next <= now {
                    for _ in 0..per_tick {
                        if send(i, kind, per_frame) {
                            sent += 1;
                        } else {
                            drops += 1;
                        }
                    }
                    *next += every;
                }
                earliest = earliest.min(*next);
            }
        }
        let wait = earliest.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    (sent, drops)
}
