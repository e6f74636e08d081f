//! A subscriber's receiving m-line: which track (and which of its layers) feeds it, and
//! the offsets that make every source it ever had look like one continuous stream.

use std::time::{Duration, Instant};

use crate::sdp::{Codec, MediaKind};

use super::codec::{CodecKind, Vp8Continuity};
use super::rtp::seq_newer;
use super::track::TrackKey;

/// How long after a (re)bind, in packets arrived on the track, and how far behind the
/// binding's first seq a packet counts as a straggler from before the bind. Bounded both
/// ways so that a long-running stream, whose seqs lap the 16-bit space, is never taken
/// for a straggler.
pub(super) const REORDER_WINDOW: u16 = 512;

#[derive(Debug, Clone, Copy)]
pub(super) struct Offsets {
    pub seq: u16,
    pub ts: u32,
    /// Source seq of the first packet forwarded in this binding.
    pub first_in_seq: u16,
    /// Retransmission-buffer index of that packet; NACKs never reach further back.
    pub first_index: u64,
    /// First output seq under the current `seq` offset, after probe padding moved it:
    /// older output seqs were sent under another offset, so a NACK for one of them
    /// cannot be mapped back to its source packet.
    pub seq_valid_from: Option<u16>,
}

impl Offsets {
    /// A reordered packet from just before the bind point: its rewritten seq would
    /// collide with one the slot already sent from its previous source.
    pub fn predates(&self, seq: u16, index: u64) -> bool {
        let behind = self.first_in_seq.wrapping_sub(seq);
        let soon = index.saturating_sub(self.first_index) < u64::from(REORDER_WINDOW);
        soon && behind != 0 && behind <= REORDER_WINDOW
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Binding {
    pub track: TrackKey,
    /// The layer being forwarded; `None` while a simulcast slot waits for the first
    /// keyframe of its target layer.
    pub layer: Option<usize>,
    /// Fixed by the first packet forwarded after binding (or switching layer), since
    /// only then are the source's seq and timestamp known.
    pub offsets: Option<Offsets>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct LastOut {
    pub seq: u16,
    pub ts: u32,
    pub at: Instant,
}

pub(super) struct Slot {
    pub kind: MediaKind,
    pub out_ssrc: u32,
    pub codec: Codec,
    pub mid: Box<str>,
    pub binding: Option<Binding>,
    /// The layer the selector wants; a switch happens at its next keyframe.
    pub target: Option<usize>,
    /// Since when the estimate has supported a higher layer than the current one.
    pub upgrade_since: Option<Instant>,
    /// Since when the estimate has been under the current layer's rate.
    pub downgrade_since: Option<Instant>,
    /// Newest packet sent on this slot, across bindings: the continuity anchor.
    pub last_out: Option<LastOut>,
    /// VP8 picture-ID continuity across layer switches and rebinds.
    pub picture_ids: Vp8Continuity,
    /// The next VP8 packet starts a new source for the picture-ID map.
    pub vp8_switched: bool,
    pub codec_kind: CodecKind,
    /// The newest packet sent ended a frame: padding may go out without splitting one.
    pub frame_done: bool,
    /// `(payload type, SSRC)` of the subscriber's RTX stream, when negotiated.
    pub rtx: Option<(u8, u32)>,
    /// Sequence number of the next packet on the RTX stream (its own space).
    pub rtx_seq: u16,
}

impl Slot {
    pub fn new(kind: MediaKind, out_ssrc: u32, codec: Codec, mid: &str) -> Self {
        Self {
            kind,
            out_ssrc,
            mid: mid.into(),
            binding: None,
            target: None,
            upgrade_since: None,
            downgrade_since: None,
            last_out: None,
            picture_ids: Vp8Continuity::default(),
            vp8_switched: true,
            codec_kind: CodecKind::from(&codec),
            frame_done: false,
            rtx: None,
            rtx_seq: 0,
            codec,
        }
    }

    /// Offsets for a packet about to go out, fixing them on the binding's first packet.
    /// `None`: the packet predates the binding and must not be sent.
    pub fn offsets_for(&mut self, seq: u16, ts: u32, index: u64, now: Instant) -> Option<Offsets> {
        let last_out = self.last_out;
        let clock_rate = self.codec.clock_rate;
        let kind = self.kind;
        let binding = self.binding.as_mut()?;
        if let Some(off) = binding.offsets {
            return (!off.predates(seq, index)).then_some(off);
        }
        let (seq_off, ts_off) = match last_out {
            None => (0, 0),
            Some(last) => {
                let step = timestamp_step(kind, clock_rate, now.saturating_duration_since(last.at));
                (
                    last.seq.wrapping_add(1).wrapping_sub(seq),
                    last.ts.wrapping_add(step).wrapping_sub(ts),
                )
            }
        };
        let off = Offsets {
            seq: seq_off,
            ts: ts_off,
            first_in_seq: seq,
            first_index: index,
            seq_valid_from: None,
        };
        binding.offsets = Some(off);
        Some(off)
    }

    pub fn note_sent(&mut self, seq: u16, ts: u32, now: Instant) {
        let newer = match self.last_out {
            Some(last) => seq_newer(seq, last.seq),
            None => true,
        };
        if newer {
            self.last_out = Some(LastOut { seq, ts, at: now });
        }
    }

    /// Start forwarding `layer` of the bound track at this packet: the next packet fixes
    /// new offsets against what this slot already sent.
    pub fn switch_to(&mut self, layer: usize) {
        if let Some(b) = self.binding.as_mut() {
            b.layer = Some(layer);
            b.offsets = None;
        }
        self.vp8_switched = true;
    }

    /// A padding packet went out with `seq`: media after it moves up one seq, so the
    /// subscriber sees no gap. NACKs for packets sent before the padding can no longer
    /// be mapped and count as misses; probes are short and rare, so that costs little.
    pub fn padded(&mut self, seq: u16, now: Instant) {
        if let Some(off) = self.binding.as_mut().and_then(|b| b.offsets.as_mut()) {
            off.seq = off.seq.wrapping_add(1);
            off.seq_valid_from = Some(seq.wrapping_add(1));
        }
        let ts = self.last_out.map_or(0, |l| l.ts);
        self.last_out = Some(LastOut { seq, ts, at: now });
    }
}

/// Timestamp advance across a source switch: the real elapsed time, but at least one
/// frame (video) or one 20 ms packet (audio) so the new source never appears to go back.
pub(super) fn timestamp_step(kind: MediaKind, clock_rate: u32, elapsed: Duration) -> u32 {
    let min = match kind {
        MediaKind::Video => clock_rate / 30,
        MediaKind::Audio => clock_rate / 50,
    };
    let elapsed = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    u32::try_from(elapsed).unwrap_or(u32::MAX).max(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_step_is_at_least_one_frame() {
        assert_eq!(
            timestamp_step(MediaKind::Video, 90_000, Duration::ZERO),
            3000
        );
        assert_eq!(
            timestamp_step(MediaKind::Audio, 48_000, Duration::ZERO),
            960
        );
        assert_eq!(
            timestamp_step(MediaKind::Video, 90_000, Duration::from_secs(2)),
            180_000
        );
    }
}
