//! A publisher's track as the room holds it: one layer for a plain stream, up to three
//! for simulcast, each with its own SSRC, retransmission buffer, reception statistics
//! and keyframe-request state.

use std::time::{Duration, Instant};

use crate::sdp::{Codec, MediaKind};

use super::codec::CodecKind;
use super::forward::ForwardStats;
use super::layers::LayerInfo;
use super::nack_gen::NackGenerator;
use super::receive::ReceiveStats;
use super::rtp_ext::Extensions;
use super::rtx::{RtxBuffer, AUDIO_ENTRY_RESERVE, VIDEO_ENTRY_RESERVE};
use super::MemberId;

/// Most simulcast layers accepted per track (Chrome, Firefox and OBS send three).
pub const MAX_LAYERS: usize = 3;

/// A layer with no packet for this long is not offered to subscribers: the publisher
/// stopped it (its own uplink is congested) or never started it.
pub(super) const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// Bitrates are measured over windows of this length.
const BITRATE_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TrackKey {
    pub publisher: MemberId,
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotRef {
    pub subscriber: MemberId,
    pub slot: usize,
}

pub(super) struct Layer {
    /// The RID announced in the offer; `None` for a track without simulcast.
    pub rid: Option<Box<[u8]>>,
    /// From the SDP, else learned from the first packet naming this layer.
    pub ssrc: Option<u32>,
    /// The layer's RTX stream (RFC 4588): from the SDP's FID group, the
    /// `repaired-rtp-stream-id` extension, or learned.
    pub rtx_ssrc: Option<u32>,
    /// What roomgate missed of this layer and asks the publisher for.
    pub nacks: NackGenerator,
    pub rtx: RtxBuffer,
    pub recv: ReceiveStats,
    /// LSR value (NTP middle 32 bits) and arrival time of the latest SR.
    pub last_sr: Option<(u32, Instant)>,
    pub last_keyframe_request: Option<Instant>,
    pub fir_seq: u8,
    pub last_packet: Option<Instant>,
    window_start: Option<Instant>,
    window_bytes: u64,
    pub bitrate_bps: u64,
}

impl Layer {
    /// `buffer`: how long packets are kept for NACK answers, and at most how many.
    fn new(
        rid: Option<Box<[u8]>>,
        ssrc: Option<u32>,
        kind: MediaKind,
        buffer: (Duration, usize),
    ) -> Self {
        let reserve = match kind {
            MediaKind::Video => VIDEO_ENTRY_RESERVE,
            MediaKind::Audio => AUDIO_ENTRY_RESERVE,
        };
        Self {
            rid,
            ssrc,
            rtx_ssrc: None,
            nacks: NackGenerator::default(),
            rtx: RtxBuffer::new(buffer.0, buffer.1, reserve),
            recv: ReceiveStats::default(),
            last_sr: None,
            last_keyframe_request: None,
            fir_seq: 0,
            last_packet: None,
            window_start: None,
            window_bytes: 0,
            bitrate_bps: 0,
        }
    }

    pub fn on_packet(&mut self, len: usize, now: Instant) {
        self.last_packet = Some(now);
        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += len as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= BITRATE_WINDOW {
            self.bitrate_bps =
                self.window_bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }

    pub fn info(&self, now: Instant) -> LayerInfo {
        let active = self
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE);
        LayerInfo {
            active,
            bitrate_bps: if active { self.bitrate_bps } else { 0 },
        }
    }
}

pub(super) struct Track {
    pub kind: MediaKind,
    pub codec: Codec,
    pub codec_kind: CodecKind,
    /// The m-line's mid, to place packets that carry the `sdes:mid` extension.
    pub mid: Box<str>,
    pub layers: Vec<Layer>,
    /// Slots currently fed by this track.
    pub bound: Vec<SlotRef>,
    /// Publisher offered `ccm fir` without `nack pli`: it may ignore PLIs.
    pub fir_only: bool,
    /// The publisher's `rtx` payload type, when negotiated.
    pub rtx_pt: Option<u8>,
    /// The publisher agreed to generic NACK: roomgate asks it for what it missed.
    pub nack: bool,
}

impl Track {
    /// `rids` empty: one plain layer with `ssrc` (if announced).
    pub fn new(
        kind: MediaKind,
        codec: Codec,
        mid: &str,
        ssrc: Option<u32>,
        rids: &[String],
        buffer: (Duration, usize),
    ) -> Self {
        let layers = if rids.is_empty() {
            vec![Layer::new(None, ssrc, kind, buffer)]
        } else {
            rids.iter()
                .take(MAX_LAYERS)
                .map(|r| Layer::new(Some(r.as_bytes().into()), None, kind, buffer))
                .collect()
        };
        let nack = codec
            .rtcp_fb
            .iter()
            .any(|f| f.trim().eq_ignore_ascii_case("nack"));
        Self {
            kind,
            fir_only: fir_only(&codec),
            codec_kind: CodecKind::from(&codec),
            codec,
            mid: mid.into(),
            layers,
            bound: Vec::new(),
            rtx_pt: None,
            nack,
        }
    }

    /// RTX negotiated for this track: its payload type, and the RTX SSRC of a single
    /// stream when the SDP named it.
    pub fn set_rtx(&mut self, payload_type: Option<u8>, ssrc: Option<u32>) {
        self.rtx_pt = payload_type;
        let simulcast = self.is_simulcast();
        if let (Some(layer), false) = (self.layers.first_mut(), simulcast) {
            layer.rtx_ssrc = ssrc.filter(|_| payload_type.is_some());
        }
    }

    pub fn is_simulcast(&self) -> bool {
        self.layers.first().is_some_and(|l| l.rid.is_some())
    }

    pub fn layer_by_ssrc(&self, ssrc: u32) -> Option<usize> {
        self.layers.iter().position(|l| l.ssrc == Some(ssrc))
    }

    pub fn layer_by_rid(&self, rid: &[u8]) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.rid.as_deref() == Some(rid))
    }

    /// Layer states for [`super::layers::choose_layer`], in layer order.
    pub fn layer_infos(&self, now: Instant, out: &mut [LayerInfo; MAX_LAYERS]) -> usize {
        for (i, l) in self.layers.iter().enumerate().take(MAX_LAYERS) {
            out[i] = l.info(now);
        }
        self.layers.len().min(MAX_LAYERS)
    }
}

/// Which (track, layer) a publisher's packet belongs to, learning unsignaled SSRCs from
/// the RID (simulcast) or the payload type (a single stream). `None`: dropped, counted.
pub(super) fn locate(
    tracks: &mut [Track],
    ssrc: u32,
    pt: u8,
    ext: &Extensions<'_>,
    stats: &mut ForwardStats,
) -> Option<(usize, usize)> {
    if let Some(found) = tracks
        .iter()
        .enumerate()
        .find_map(|(i, t)| t.layer_by_ssrc(ssrc).map(|l| (i, l)))
    {
        return Some(found);
    }
    let mid_matches = |t: &Track| ext.mid.is_none_or(|m| t.mid.as_bytes() == m);
    if let Some(rid) = ext.rid {
        let found = tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_simulcast() && mid_matches(t))
            .find_map(|(i, t)| t.layer_by_rid(rid).map(|l| (i, l)));
        let Some((i, l)) = found else {
            stats.rtp_unknown_rid += 1;
            return None;
        };
        tracks[i].layers[l].ssrc = Some(ssrc);
        return Some((i, l));
    }
    let learnable =
        |t: &Track| !t.is_simulcast() && t.layers[0].ssrc.is_none() && t.codec.payload_type == pt;
    let index = tracks
        .iter()
        .position(|t| learnable(t) && mid_matches(t))
        .or_else(|| tracks.iter().position(learnable));
    match index {
        Some(i) => {
            tracks[i].layers[0].ssrc = Some(ssrc);
            Some((i, 0))
        }
        None => {
            stats.rtp_unknown_ssrc += 1;
            None
        }
    }
}

/// Which (track, layer) a publisher's RTX packet repairs, learning RTX SSRCs from the
/// `repaired-rtp-stream-id` extension (simulcast) or, for a single stream whose SDP did
/// not name one, from the RTX payload type. `None`: not a retransmission.
pub(super) fn locate_rtx(
    tracks: &mut [Track],
    ssrc: u32,
    pt: u8,
    ext: &Extensions<'_>,
) -> Option<(usize, usize)> {
    if let Some(found) = tracks.iter().enumerate().find_map(|(i, t)| {
        t.layers
            .iter()
            .position(|l| l.rtx_ssrc == Some(ssrc))
            .map(|l| (i, l))
    }) {
        return Some(found);
    }
    let is_rtx = |t: &Track| t.rtx_pt == Some(pt);
    let mid_matches = |t: &Track| ext.mid.is_none_or(|m| t.mid.as_bytes() == m);
    let (i, l) = match ext.repaired_rid {
        Some(rid) => tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| is_rtx(t) && mid_matches(t))
            .find_map(|(i, t)| t.layer_by_rid(rid).map(|l| (i, l)))?,
        None => {
            let i = tracks
                .iter()
                .position(|t| is_rtx(t) && !t.is_simulcast() && t.layers[0].rtx_ssrc.is_none())?;
            (i, 0)
        }
    };
    tracks[i].layers[l].rtx_ssrc = Some(ssrc);
    Some((i, l))
}

fn fir_only(codec: &Codec) -> bool {
    let has = |fb: &str| {
        codec
            .rtcp_fb
            .iter()
            .any(|f| f.trim().eq_ignore_ascii_case(fb))
    };
    has("ccm fir") && !has("nack pli")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8() -> Codec {
        Codec {
            payload_type: 96,
            name: "VP8".into(),
            clock_rate: 90_000,
            channels: None,
            fmtp: None,
            rtcp_fb: vec![],
        }
    }

    #[test]
    fn fir_only_detection() {
        let mut c = vp8();
        c.rtcp_fb = vec!["ccm fir".into(), "nack".into()];
        assert!(fir_only(&c));
        c.rtcp_fb.push("nack pli".into());
        assert!(!fir_only(&c));
    }

    #[test]
    fn layers_from_rids_and_bitrate_window() {
        let rids = ["q".to_string(), "h".into(), "f".into(), "x".into()];
        let buffer = (Duration::from_secs(1), 8);
        let mut t = Track::new(MediaKind::Video, vp8(), "0", None, &rids, buffer);
        assert!(t.is_simulcast());
        assert_eq!(t.layers.len(), MAX_LAYERS, "a fourth layer is not taken");
        assert_eq!(t.layer_by_rid(b"h"), Some(1));
        assert_eq!(t.layer_by_rid(b"x"), None);
        let t0 = Instant::now();
        // 1,250 bytes every 10 ms = 1 Mbit/s.
        for i in 0..=60u64 {
            t.layers[2].on_packet(1250, t0 + Duration::from_millis(10 * i));
        }
        let info = t.layers[2].info(t0 + Duration::from_millis(600));
        assert!(info.active);
        assert!(
            (950_000..=1_050_000).contains(&info.bitrate_bps),
            "{info:?}"
        );
        assert!(!t.layers[2].info(t0 + Duration::from_secs(5)).active);
        assert!(!t.layers[0].info(t0).active, "never sent");
        let plain = Track::new(MediaKind::Video, vp8(), "0", Some(7), &[], buffer);
        assert!(!plain.is_simulcast());
        assert_eq!(plain.layer_by_ssrc(7), Some(0));
    }
}
