//! Keeps VP8 PictureID and TL0PICIDX continuous for one subscriber slot while the slot
//! switches between simulcast layers.
//!
//! Each layer numbers its frames on its own. The output counts on from where the previous
//! layer stopped: the first frame after a switch gets `last + 1`, and each later source
//! value maps by the same offset, so every packet of a frame gets the same number and
//! reordered packets keep theirs. Values are unwrapped internally, which makes wrap at
//! 32767 (or 127, or 255 for TL0PICIDX) an ordinary step.

use super::vp8::Vp8Ids;

const PICTURE_ID_MODULUS: i64 = 1 << 15;
const TL0_PIC_IDX_MODULUS: i64 = 1 << 8;
/// How far before a switch point a late packet may be and still count as reordered
/// (then dropped). A quarter of the smallest wrap, 128, and about a second of frames.
const REORDER_WINDOW: i64 = 32;

/// How the current source's values map onto the output, in unwrapped numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    /// The source's wrap (128 or 32768 for PictureID, 256 for TL0PICIDX): a change of
    /// width is a different numbering, so it starts a new mapping.
    modulus: i64,
    /// Newest source value seen, the reference for unwrapping the next one.
    newest: i64,
    /// Source value of the first packet since the switch; older ones precede it.
    first: i64,
    offset: i64,
}

/// One counter: the current mapping, and the newest value sent out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counter {
    /// `None` before the first value and after a switch, until the new source's first
    /// value arrives.
    mapping: Option<Mapping>,
    newest_out: Option<i64>,
}

impl Counter {
    /// The unwrapped output for `value`, or `None` if it is a little older than the first
    /// value of the current source (a late packet from before the switch point) and
    /// `may_drop`; without `may_drop` such a value starts over like a jump.
    fn map(&mut self, value: u16, modulus: i64, may_drop: bool) -> Option<i64> {
        let value = i64::from(value);
        let continued = match &mut self.mapping {
            Some(m) if m.modulus == modulus => {
                let src = unwrap(m.newest, value, modulus);
                if src >= m.first {
                    m.newest = m.newest.max(src);
                    Some(src + m.offset)
                } else if may_drop && m.first - src <= REORDER_WINDOW {
                    return None;
                } else {
                    // Far older than anything since the switch: not reordering but a
                    // jump (an encoder restart, or more loss than half a wrap). Dropping
                    // would go on until the source climbed back, so start over instead.
                    None
                }
            }
            _ => None,
        };
        let out = match continued {
            Some(out) => out,
            None => self.rebase(value, modulus),
        };
        self.newest_out = Some(self.newest_out.map_or(out, |n| n.max(out)));
        Some(out)
    }

    /// Maps `value` to one past the newest output (or to itself if there is none yet).
    fn rebase(&mut self, value: i64, modulus: i64) -> i64 {
        let offset = self.newest_out.map_or(0, |newest| newest + 1 - value);
        self.mapping = Some(Mapping {
            modulus,
            newest: value,
            first: value,
            offset,
        });
        value + offset
    }
}

/// `value` (below `modulus`) placed within half a wrap of `reference`.
fn unwrap(reference: i64, value: i64, modulus: i64) -> i64 {
    let mut diff = (value - reference).rem_euclid(modulus);
    if diff >= modulus / 2 {
        diff -= modulus;
    }
    reference + diff
}

/// PictureID and TL0PICIDX continuity for one subscriber slot.
///
/// Feed it every packet forwarded to the slot, in forwarding order, with `switched` set
/// on the first packet forwarded from a new source layer (and only that one). That
/// packet must start a base-layer frame, as every keyframe does: it takes
/// TL0PICIDX `last + 1`. Packets of the previous layer that arrive after the switch
/// must not be fed.
///
/// The first source the slot ever sees keeps its own numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Continuity {
    picture_id: Counter,
    tl0_pic_idx: Counter,
}

impl Vp8Continuity {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters to write into this packet (with [`super::vp8::rewrite`]), each in
    /// the source's width. `None` means the packet belongs to a frame older than the
    /// first one forwarded since the switch (by at most 32 frames): drop it, since its
    /// numbers would collide with ones already sent. A source that jumps back further
    /// than that is taken as restarted and counts on from the last output, as after a
    /// switch. A counter the source packet lacks stays `None`.
    pub fn map(&mut self, source: Vp8Ids, switched: bool) -> Option<Vp8Ids> {
        let mut next = *self;
        if switched {
            next.picture_id.mapping = None;
            next.tl0_pic_idx.mapping = None;
        }
        let picture_id = match source.picture_id {
            Some(pid) => {
                let out = next
                    .picture_id
                    .map(pid.value(), i64::from(pid.modulus()), true)?;
                // The output counts modulo 2^15 whatever the source's width, so a later
                // switch to a 15-bit layer continues from the same number.
                let out = out.rem_euclid(PICTURE_ID_MODULUS);
                Some(pid.with_value(u16::try_from(out).unwrap_or_default()))
            }
            None => None,
        };
        // PictureID names the frame, so it alone decides what is late. TL0PICIDX moves
        // with it; if they disagree the source is broken, and dropping on TL0PICIDX could
        // last many frames.
        let may_drop = source.picture_id.is_none();
        let tl0_pic_idx = match source.tl0_pic_idx {
            Some(idx) => {
                let out = next
                    .tl0_pic_idx
                    .map(u16::from(idx), TL0_PIC_IDX_MODULUS, may_drop)?;
                Some(u8::try_from(out.rem_euclid(TL0_PIC_IDX_MODULUS)).unwrap_or_default())
            }
            None => None,
        };
        // Only a packet that is forwarded moves the state; a dropped one leaves no trace.
        *self = next;
        Some(Vp8Ids {
            picture_id,
            tl0_pic_idx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::codec::vp8::{self, PictureId};

    fn long(pid: u16, tl0: u8) -> Vp8Ids {
        Vp8Ids {
            picture_id: Some(PictureId::Long(pid)),
            tl0_pic_idx: Some(tl0),
        }
    }

    fn short(pid: u8) -> Vp8Ids {
        Vp8Ids {
            picture_id: Some(PictureId::Short(pid)),
            tl0_pic_idx: None,
        }
    }

    #[test]
    fn the_first_source_keeps_its_numbers_through_the_wrap() {
        let mut c = Vp8Continuity::new();
        for (pid, tl0) in [(32766, 254), (32766, 254), (32767, 255), (0, 0), (1, 0)] {
            assert_eq!(c.map(long(pid, tl0), false), Some(long(pid, tl0)));
        }
        let mut c = Vp8Continuity::new();
        for pid in [125, 126, 127, 0, 1] {
            assert_eq!(c.map(short(pid), false), Some(short(pid)));
        }
    }

    #[test]
    fn continuity_across_two_switches() {
        let mut c = Vp8Continuity::new();
        // Layer q: frames 100..=102, TL0PICIDX 10, 10, 11 (frame 101 is a TL1 frame).
        for (pid, tl0) in [(100, 10), (100, 10), (101, 10), (102, 11)] {
            assert_eq!(c.map(long(pid, tl0), false), Some(long(pid, tl0)));
        }
        // Switch to layer h at its key frame 7000 / 50: continues at 103 / 12.
        assert_eq!(c.map(long(7000, 50), true), Some(long(103, 12)));
        assert_eq!(
            c.map(long(7000, 50), false),
            Some(long(103, 12)),
            "same frame"
        );
        assert_eq!(c.map(long(7001, 50), false), Some(long(104, 12)));
        // A reordered packet of frame 7000 keeps its mapping.
        assert_eq!(c.map(long(7000, 50), false), Some(long(103, 12)));
        // One from before the switch point would collide with 102: dropped, no effect.
        assert_eq!(c.map(long(6999, 49), false), None);
        assert_eq!(c.map(long(7002, 51), false), Some(long(105, 13)));
        // Switch to layer f, whose counters are about to wrap.
        assert_eq!(c.map(long(32767, 255), true), Some(long(106, 14)));
        assert_eq!(c.map(long(0, 0), false), Some(long(107, 15)));
        assert_eq!(c.map(long(1, 0), false), Some(long(108, 15)));
    }

    #[test]
    fn output_wraps_at_32767_and_255() {
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(long(32767, 255), false), Some(long(32767, 255)));
        // The switch lands exactly on the wrap of both output counters.
        assert_eq!(c.map(long(40, 7), true), Some(long(0, 0)));
        assert_eq!(c.map(long(41, 8), false), Some(long(1, 1)));
    }

    #[test]
    fn seven_bit_source_wraps_at_127() {
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(short(10), false), Some(short(10)));
        // Switch to another 7-bit layer: 11, then on across the 7-bit wrap.
        assert_eq!(c.map(short(120), true), Some(short(11)));
        let mut out = Vec::new();
        for pid in (121..=127).chain(0..=130 % 128) {
            out.push(c.map(short(pid), false));
        }
        let expected: Vec<_> = (12..=21).map(|v| Some(short(v))).collect();
        assert_eq!(out, expected);
        // A 7-bit output written into packets counts modulo 128.
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(short(127), false), Some(short(127)));
        assert_eq!(c.map(short(60), true), Some(short(0)));
        // Switching to a 15-bit layer continues from the 15-bit counter underneath.
        assert_eq!(c.map(long(9000, 3), true), Some(long(129, 3)));
    }

    #[test]
    fn a_switch_without_counters_rebases_at_the_next_packet_that_has_them() {
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(long(500, 5), false), Some(long(500, 5)));
        assert_eq!(c.map(Vp8Ids::default(), true), Some(Vp8Ids::default()));
        assert_eq!(c.map(long(20, 90), false), Some(long(501, 6)));
    }

    #[test]
    fn a_source_that_jumps_far_back_is_not_dropped_forever() {
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(long(900, 9), false), Some(long(900, 9)));
        assert_eq!(c.map(long(7000, 50), true), Some(long(901, 10)));
        assert_eq!(c.map(long(7001, 50), false), Some(long(902, 10)));
        // 32 frames before the switch point is still a late packet...
        assert_eq!(c.map(long(6968, 49), false), None);
        // ...but 2000 back is a restarted encoder: it counts on, and so do its successors.
        assert_eq!(c.map(long(5000, 50), false), Some(long(903, 10)));
        assert_eq!(c.map(long(5001, 51), false), Some(long(904, 11)));
        // A TL0PICIDX that goes back while PictureID goes on starts its own count over
        // rather than dropping frames.
        assert_eq!(c.map(long(5002, 40), false), Some(long(905, 12)));
        assert_eq!(c.map(long(5003, 41), false), Some(long(906, 13)));
        // Without a PictureID, TL0PICIDX decides what is late.
        let no_pid = |tl0| Vp8Ids {
            picture_id: None,
            tl0_pic_idx: Some(tl0),
        };
        assert_eq!(c.map(no_pid(60), true), Some(no_pid(14)));
        assert_eq!(c.map(no_pid(59), false), None);
        // The same for a 7-bit source that lost more than half its wrap.
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(short(10), false), Some(short(10)));
        assert_eq!(c.map(short(100), true), Some(short(11)));
        assert_eq!(c.map(short(100 + 70 - 128), false), Some(short(12)));
        assert_eq!(c.map(short(43), false), Some(short(13)));
    }

    #[test]
    fn a_width_change_within_a_source_rebases() {
        let mut c = Vp8Continuity::new();
        assert_eq!(c.map(long(500, 5), false), Some(long(500, 5)));
        assert_eq!(c.map(short(3), false), Some(short(117)), "501 mod 128");
        // Back to 15 bits: a new numbering again, continuing on.
        assert_eq!(c.map(long(77, 6), false), Some(long(502, 6)));
    }

    /// Chrome packets from two simulcast layers, through parse, map and rewrite, as the
    /// forwarder will use them: the bytes a subscriber receives count on without a gap.
    #[test]
    fn rewritten_packets_stay_continuous() {
        fn packet(start: bool, pid: u16, tl0: u8, tid: u8, key: bool) -> [u8; 8] {
            let [hi, lo] = (pid | 0x8000).to_be_bytes();
            let s = if start { 0x90 } else { 0x80 };
            let p = if key { 0x50 } else { 0x51 };
            [s, 0xe0, hi, lo, tl0, (tid << 6) | 0x20, p, 0x00]
        }
        // (layer, start, pid, tl0, tid, key): low layer, then a switch to the high layer's
        // key frame, then back down to a low key frame.
        let stream = [
            (0, true, 32765, 200, 0, false),
            (0, false, 32765, 200, 0, false),
            (0, true, 32766, 200, 1, false),
            (0, true, 32767, 201, 0, false),
            (1, true, 4000, 17, 0, true),
            (1, false, 4000, 17, 0, true),
            (1, true, 4001, 17, 1, false),
            (1, true, 4002, 18, 0, false),
            (0, true, 2, 203, 0, true),
            (0, true, 3, 203, 1, false),
        ];
        let mut c = Vp8Continuity::new();
        let mut layer = 0;
        let mut seen = Vec::new();
        for (l, start, pid, tl0, tid, key) in stream {
            let mut p = packet(start, pid, tl0, tid, key);
            assert_eq!(vp8::is_keyframe(&p), key && start);
            let switched = l != layer;
            layer = l;
            let src = vp8::Vp8Descriptor::parse(&p).expect("valid").ids();
            let out = c.map(src, switched).expect("in order");
            vp8::rewrite(&mut p, out).expect("valid");
            let d = vp8::Vp8Descriptor::parse(&p).expect("valid");
            seen.push((d.picture_id().map(PictureId::value), d.tl0_pic_idx()));
        }
        let want = [
            (32765, 200),
            (32765, 200),
            (32766, 200),
            (32767, 201),
            (0, 202),
            (0, 202),
            (1, 202),
            (2, 203),
            (3, 204),
            (4, 204),
        ];
        let want: Vec<_> = want.iter().map(|&(p, t)| (Some(p), Some(t))).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn mapping_does_not_allocate() {
        let mut c = Vp8Continuity::new();
        let before = crate::sfu::alloc_count::allocations();
        for pid in 0..1000u16 {
            let out = c.map(std::hint::black_box(long(pid, 3)), pid % 100 == 0);
            std::hint::black_box(out);
        }
        assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
    }
}
