//! What a publisher sends in the simulcast comparison: one video stream (single layer) or
//! three (simulcast, bound by RID), plus audio, each paced evenly at its own rate.
use std::time::{Duration, Instant};

use crate::schedule::{video_pps, AUDIO_PAYLOAD, AUDIO_PPS, FPS, VIDEO_PAYLOAD};
use crate::webrtc::{Kind, Peer, Stream, EXT_ID_RID, EXT_ID_TWCC};

/// RIDs the publishers offer, lowest layer first, and the names viewers ask for them by.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
pub const LAYER_NAMES: [&str; 3] = ["low", "mid", "high"];
/// Each layer's bitrate as a share of `--kbps`. Their mean is 1, so with viewers split
/// evenly across the layers the simulcast run forwards as many video packets as the
/// single-layer run at `--kbps`; the ratios are close to a browser's 1/4, 1/2, full
/// resolution ladder.
pub const LAYER_SHARE: [f64; 3] = [0.25, 0.75, 2.0];
/// A keyframe on every layer about once a second: a viewer's first packets of a layer
/// are forwarded from a keyframe on, and the test client does not answer PLIs.
const KEYFRAME_SECS: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Single,
    Simulcast,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Single => "single layer",
            Variant::Simulcast => "simulcast (3 layers)",
        }
    }
}

/// One paced video stream of a publisher.
struct Video {
    stream: Stream,
    rid: Option<&'static str>,
    per_frame: u32,
    keyframe_every: u64,
    every: Duration,
}

/// A publisher's streams: videos first, audio last.
pub struct Source {
    videos: Vec<Video>,
    audio: Stream,
    /// Transport-wide sequence number, shared by all of the publisher's video layers.
    twcc_seq: u16,
}

/// Packets per second of one video layer (or the single stream) at `kbps` overall.
pub fn layer_pps(variant: Variant, kbps: u64, layer: usize) -> f64 {
    match variant {
        Variant::Single => video_pps(kbps),
        Variant::Simulcast => video_pps((kbps as f64 * LAYER_SHARE[layer]).round() as u64),
    }
}

impl Source {
    pub fn new(peer: &Peer, variant: Variant, kbps: u64) -> Source {
        let pt = peer.offered_pt(Kind::Video);
        let video = |ssrc: u32, rid: Option<&'static str>, pps: f64| {
            let pps = pps.max(1.0);
            let per_frame = (pps / FPS).ceil().max(1.0) as u32;
            let frames_per_sec = pps / f64::from(per_frame);
            Video {
                stream: Stream::new(Kind::Video, ssrc, pt),
                rid,
                per_frame,
                keyframe_every: (frames_per_sec * KEYFRAME_SECS).round().max(1.0) as u64,
                every: Duration::from_secs_f64(1.0 / pps),
            }
        };
        let videos = match variant {
            Variant::Single => vec![video(
                peer.ssrc(Kind::Video),
                None,
                layer_pps(variant, kbps, 0),
            )],
            Variant::Simulcast => peer
                .offer
                .simulcast
                .iter()
                .zip(RIDS)
                .enumerate()
                .map(|(l, ((_, ssrc), rid))| video(*ssrc, Some(rid), layer_pps(variant, kbps, l)))
                .collect(),
        };
        Source {
            videos,
            audio: Stream::for_peer(peer, Kind::Audio),
            twcc_seq: 0,
        }
    }

    /// The interval between packets of each stream: the video layers, then audio.
    pub fn intervals(&self) -> Vec<Duration> {
        self.videos
            .iter()
            .map(|v| v.every)
            .chain([Duration::from_secs_f64(1.0 / AUDIO_PPS)])
            .collect()
    }

    /// The next plaintext packet of `stream`. Simulcast layers carry the RID and a
    /// transport-wide sequence number in a one-byte extension block, as a browser sends.
    pub fn next_packet(&mut self, stream: usize) -> Vec<u8> {
        let Some(v) = self.videos.get_mut(stream) else {
            return self.audio.next(AUDIO_PAYLOAD, 1).to_bytes();
        };
        let pkt = v
            .stream
            .next_with_keyframes(VIDEO_PAYLOAD, v.per_frame, v.keyframe_every);
        match v.rid {
            None => pkt.to_bytes(),
            Some(rid) => {
                let seq = self.twcc_seq;
                self.twcc_seq = seq.wrapping_add(1);
                pkt.to_bytes_with_extensions(&[
                    (EXT_ID_RID, rid.as_bytes()),
                    (EXT_ID_TWCC, &seq.to_be_bytes()),
                ])
            }
        }
    }
}

/// Sent and dropped (socket full, never retried) packets per (source, stream).
pub type Counts = Vec<Vec<(u64, u64)>>;

/// Pace every stream of every source at its own rate for `duration`, staggered across
/// sources; `intervals[source][stream]` as [`Source::intervals`] gives them, and
/// `send(source, stream)` sends one packet and says whether the socket took it.
pub fn pace(
    intervals: &[Vec<Duration>],
    duration: Duration,
    mut send: impl FnMut(usize, usize) -> bool,
) -> Counts {
    let start = Instant::now();
    let n = intervals.len().max(1) as u32;
    let mut next: Vec<Vec<Instant>> = intervals
        .iter()
        .enumerate()
        .map(|(i, every)| every.iter().map(|e| start + *e * i as u32 / n).collect())
        .collect();
    let mut counts: Counts = intervals.iter().map(|e| vec![(0, 0); e.len()]).collect();
    let end = start + duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut earliest = end;
        for (i, every) in intervals.iter().enumerate() {
            for (j, at) in next[i].iter_mut().enumerate() {
                while *at <= now {
                    let c = &mut counts[i][j];
                    if send(i, j) {
                        c.0 += 1;
                    } else {
                        c.1 += 1;
                    }
                    *at += every[j];
                }
                earliest = earliest.min(*at);
            }
        }
        let wait = earliest.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    counts
}
