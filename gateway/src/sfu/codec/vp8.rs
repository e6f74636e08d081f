//! VP8 RTP payload descriptor (RFC 7741 §4.2): a zero-copy view, keyframe detection and
//! in-place rewriting of PictureID and TL0PICIDX.
//!
//! An SFU that switches a subscriber between simulcast layers must rewrite these two
//! fields: each layer counts them on its own, and a decoder that sees PictureID jump
//! assumes frames were lost and asks for a keyframe (or freezes until one arrives).
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! M:   | PictureID     | (if M = 1)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! ```

const X_BIT: u8 = 0x80;
const N_BIT: u8 = 0x20;
const S_BIT: u8 = 0x10;
const PID_MASK: u8 = 0x07;
const I_BIT: u8 = 0x80;
const L_BIT: u8 = 0x40;
const T_BIT: u8 = 0x20;
const K_BIT: u8 = 0x10;
const M_BIT: u8 = 0x80;
const Y_BIT: u8 = 0x20;
/// Inverse key frame flag in the first byte of the VP8 payload header (RFC 7741 §4.3):
/// 0 means key frame.
const P_BIT: u8 = 0x01;

/// Why a payload does not hold a whole VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Vp8Error {
    #[error("VP8 payload descriptor needs {needed} bytes but the payload is {len} bytes")]
    Truncated { needed: usize, len: usize },
}

/// A VP8 PictureID in the width the sender chose (M bit): the receiver unwraps it modulo
/// that width, so the SFU must keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PictureId {
    /// M = 0: one byte, counts modulo 128.
    Short(u8),
    /// M = 1: two bytes, counts modulo 32768. What Chrome and Firefox send.
    Long(u16),
}

impl PictureId {
    /// The number, below [`PictureId::modulus`].
    pub fn value(self) -> u16 {
        match self {
            PictureId::Short(v) => u16::from(v & 0x7f),
            PictureId::Long(v) => v & 0x7fff,
        }
    }

    /// 128 or 32768.
    pub fn modulus(self) -> u16 {
        match self {
            PictureId::Short(_) => 1 << 7,
            PictureId::Long(_) => 1 << 15,
        }
    }

    /// `value` reduced to this width.
    pub fn with_value(self, value: u16) -> PictureId {
        match self {
            // Truncation is the point: the value is taken modulo 128.
            PictureId::Short(_) => PictureId::Short((value & 0x7f) as u8),
            PictureId::Long(_) => PictureId::Long(value & 0x7fff),
        }
    }
}

/// The two frame counters an SFU rewrites per subscriber. Either may be absent: a
/// packet carries each one only if its descriptor has the I (resp. L) bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Ids {
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
}

/// A parsed payload descriptor. Offsets are from the start of the RTP payload; every
/// offset returned is inside the payload that was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    first: u8,
    picture_id: Option<PictureId>,
    picture_id_at: Option<usize>,
    tl0_pic_idx_at: Option<usize>,
    tl0_pic_idx: Option<u8>,
    /// TID and Y, present with the T bit.
    temporal: Option<(u8, bool)>,
    key_idx: Option<u8>,
    payload_offset: usize,
}

impl Vp8Descriptor {
    /// Walks the descriptor at the start of an RTP payload. Only the descriptor must be
    /// complete; the VP8 payload after it may be empty.
    pub fn parse(payload: &[u8]) -> Result<Self, Vp8Error> {
        let len = payload.len();
        let byte = |at: usize| {
            payload.get(at).copied().ok_or(Vp8Error::Truncated {
                needed: at + 1,
                len,
            })
        };
        let first = byte(0)?;
        let mut desc = Vp8Descriptor {
            first,
            picture_id: None,
            picture_id_at: None,
            tl0_pic_idx_at: None,
            tl0_pic_idx: None,
            temporal: None,
            key_idx: None,
            payload_offset: 1,
        };
        if first & X_BIT == 0 {
            return Ok(desc);
        }
        let ext = byte(1)?;
        let mut at = 2;
        if ext & I_BIT != 0 {
            let hi = byte(at)?;
            desc.picture_id_at = Some(at);
            if hi & M_BIT != 0 {
                let lo = byte(at + 1)?;
                desc.picture_id = Some(PictureId::Long(u16::from_be_bytes([hi, lo]) & 0x7fff));
                at += 2;
            } else {
                desc.picture_id = Some(PictureId::Short(hi));
                at += 1;
            }
        }
        if ext & L_BIT != 0 {
            desc.tl0_pic_idx = Some(byte(at)?);
            desc.tl0_pic_idx_at = Some(at);
            at += 1;
        }
        // One byte carries both TID/Y (meaningful if T) and KEYIDX (meaningful if K);
        // it is present if either bit is set.
        if ext & (T_BIT | K_BIT) != 0 {
            let tk = byte(at)?;
            if ext & T_BIT != 0 {
                desc.temporal = Some((tk >> 6, tk & Y_BIT != 0));
            }
            if ext & K_BIT != 0 {
                desc.key_idx = Some(tk & 0x1f);
            }
            at += 1;
        }
        desc.payload_offset = at;
        Ok(desc)
    }

    /// N: the frame is not used as a reference, so dropping it hurts no other frame.
    pub fn non_reference(&self) -> bool {
        self.first & N_BIT != 0
    }

    /// S: this packet starts a VP8 partition.
    pub fn start_of_partition(&self) -> bool {
        self.first & S_BIT != 0
    }

    /// PID: the partition index (0..=7).
    pub fn partition_id(&self) -> u8 {
        self.first & PID_MASK
    }

    /// S = 1 and PID = 0: the first packet of a frame.
    pub fn starts_frame(&self) -> bool {
        self.start_of_partition() && self.partition_id() == 0
    }

    pub fn picture_id(&self) -> Option<PictureId> {
        self.picture_id
    }

    /// Where PictureID starts (one or two bytes, see [`PictureId`]).
    pub fn picture_id_offset(&self) -> Option<usize> {
        self.picture_id_at
    }

    pub fn tl0_pic_idx(&self) -> Option<u8> {
        self.tl0_pic_idx
    }

    pub fn tl0_pic_idx_offset(&self) -> Option<usize> {
        self.tl0_pic_idx_at
    }

    /// Temporal layer index (0..=3), if the T bit is set.
    pub fn tid(&self) -> Option<u8> {
        self.temporal.map(|(tid, _)| tid)
    }

    /// Y: the frame depends only on base-layer frames (a temporal layer switch point).
    /// Meaningful only with the T bit, so `false` without it.
    pub fn layer_sync(&self) -> bool {
        self.temporal.is_some_and(|(_, y)| y)
    }

    /// KEYIDX (0..=31), if the K bit is set.
    pub fn key_idx(&self) -> Option<u8> {
        self.key_idx
    }

    /// Both counters, as the continuity helper takes them.
    pub fn ids(&self) -> Vp8Ids {
        Vp8Ids {
            picture_id: self.picture_id,
            tl0_pic_idx: self.tl0_pic_idx,
        }
    }

    /// Length of the descriptor: where the VP8 payload starts.
    pub fn payload_offset(&self) -> usize {
        self.payload_offset
    }
}

/// Whether the packet starts a frame (S = 1, PID = 0). `false` for anything that is not
/// a complete descriptor.
pub fn starts_frame(payload: &[u8]) -> bool {
    Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_frame())
}

/// Whether this is the first packet of a key frame: it starts the frame and the VP8
/// payload header's P bit is 0. Later packets of the same key frame return `false`,
/// because only the first one carries the payload header.
pub fn is_keyframe(payload: &[u8]) -> bool {
    let Ok(desc) = Vp8Descriptor::parse(payload) else {
        return false;
    };
    if !desc.starts_frame() {
        return false;
    }
    payload
        .get(desc.payload_offset())
        .is_some_and(|header| header & P_BIT == 0)
}

/// Writes new counters into the descriptor in place, each in the width the packet
/// already uses (a 7-bit PictureID takes `value mod 128`). A counter the packet does
/// not carry cannot be added without moving the payload, so it is left out; a `None`
/// leaves the packet's field as it is. Returns the descriptor as it was before.
pub fn rewrite(payload: &mut [u8], ids: Vp8Ids) -> Result<Vp8Descriptor, Vp8Error> {
    let desc = Vp8Descriptor::parse(payload)?;
    if let (Some(old), Some(at), Some(new)) = (desc.picture_id, desc.picture_id_at, ids.picture_id)
    {
        match old.with_value(new.value()) {
            PictureId::Short(v) => {
                if let Some(b) = payload.get_mut(at) {
                    *b = v & 0x7f;
                }
            }
            PictureId::Long(v) => {
                if let Some(b) = payload.get_mut(at..at + 2) {
                    b.copy_from_slice(&(v | 0x8000).to_be_bytes());
                }
            }
        }
    }
    if let (Some(at), Some(new)) = (desc.tl0_pic_idx_at, ids.tl0_pic_idx) {
        if let Some(b) = payload.get_mut(at) {
            *b = new;
        }
    }
    Ok(desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First packet of a Chrome simulcast key frame: X, S, PID 0; I, L, T; 15-bit
    /// PictureID 2620; TL0PICIDX 23; TID 0 with Y; then the VP8 payload header with P = 0,
    /// the key frame start code 9d 01 2a and 320x180.
    const KEY_FIRST: [u8; 20] = [
        0x90, 0xe0, 0x8a, 0x3c, 0x17, 0x20, // descriptor
        0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00, // key frame header
        0x00, 0x47, 0x08, 0x85,
    ];
    /// A later packet of the same key frame: S = 0, same counters.
    const KEY_CONT: [u8; 12] = [
        0x80, 0xe0, 0x8a, 0x3c, 0x17, 0x20, 0x1f, 0x3a, 0x9c, 0x02, 0x44, 0x71,
    ];
    /// First packet of the next frame, a delta frame on temporal layer 2: P = 1.
    const DELTA_FIRST: [u8; 12] = [
        0x90, 0xe0, 0x8a, 0x3d, 0x17, 0x80, 0x31, 0x0b, 0x00, 0x11, 0x7c, 0x4e,
    ];
    /// I, L, T and K together: PictureID 5, TL0PICIDX 200, TID 1, Y = 0, KEYIDX 5.
    const WITH_KEYIDX: [u8; 9] = [0x90, 0xf0, 0x80, 0x05, 0xc8, 0x45, 0x50, 0x00, 0x00];
    /// 7-bit PictureID 127, no TL0PICIDX, no T/K byte.
    const SHORT_ID: [u8; 6] = [0x90, 0x80, 0x7f, 0x50, 0x00, 0x00];
    /// No extension byte at all: the minimal descriptor.
    const MINIMAL: [u8; 4] = [0x10, 0x50, 0x00, 0x00];

    fn parse(p: &[u8]) -> Vp8Descriptor {
        Vp8Descriptor::parse(p).expect("test vector parses")
    }

    #[test]
    fn chrome_key_frame_first_packet() {
        let d = parse(&KEY_FIRST);
        assert!(d.starts_frame());
        assert!(!d.non_reference());
        assert_eq!(d.picture_id(), Some(PictureId::Long(2620)));
        assert_eq!(d.picture_id_offset(), Some(2));
        assert_eq!(d.tl0_pic_idx(), Some(23));
        assert_eq!(d.tl0_pic_idx_offset(), Some(4));
        assert_eq!(d.tid(), Some(0));
        assert!(d.layer_sync());
        assert_eq!(d.key_idx(), None);
        assert_eq!(d.payload_offset(), 6);
        assert!(is_keyframe(&KEY_FIRST));
        assert!(starts_frame(&KEY_FIRST));
    }

    #[test]
    fn later_packets_of_a_key_frame_are_not_key_frames() {
        let d = parse(&KEY_CONT);
        assert!(!d.start_of_partition());
        assert_eq!(d.ids(), parse(&KEY_FIRST).ids());
        // Byte 6 has P = 1 by chance here and 0 in other packets; S = 0 decides either way.
        assert!(!is_keyframe(&KEY_CONT));
        let mut p = KEY_CONT;
        p[6] = 0x00;
        assert!(!is_keyframe(&p));
        assert!(!starts_frame(&KEY_CONT));
    }

    #[test]
    fn delta_frame_is_not_a_key_frame() {
        let d = parse(&DELTA_FIRST);
        assert!(d.starts_frame());
        assert_eq!(d.picture_id(), Some(PictureId::Long(2621)));
        assert_eq!(d.tid(), Some(2));
        assert!(!d.layer_sync());
        assert!(!is_keyframe(&DELTA_FIRST));
    }

    #[test]
    fn start_of_a_later_partition_is_not_a_frame_start() {
        let mut p = KEY_FIRST;
        p[0] = 0x91; // S = 1, PID = 1
        let d = parse(&p);
        assert!(d.start_of_partition());
        assert_eq!(d.partition_id(), 1);
        assert!(!d.starts_frame());
        assert!(!is_keyframe(&p));
    }

    #[test]
    fn t_and_k_share_one_byte() {
        let d = parse(&WITH_KEYIDX);
        assert_eq!(d.picture_id(), Some(PictureId::Long(5)));
        assert_eq!(d.tl0_pic_idx(), Some(200));
        assert_eq!(d.tid(), Some(1));
        assert!(!d.layer_sync());
        assert_eq!(d.key_idx(), Some(5));
        assert_eq!(d.payload_offset(), 6);
        assert!(is_keyframe(&WITH_KEYIDX));

        // K alone still takes the byte, and TID/Y mean nothing without T.
        let only_k = [0x90, 0x10, 0xe3, 0x50];
        let d = parse(&only_k);
        assert_eq!(d.tid(), None);
        assert!(!d.layer_sync());
        assert_eq!(d.key_idx(), Some(3));
        assert_eq!(d.payload_offset(), 3);
    }

    #[test]
    fn short_and_minimal_descriptors() {
        let d = parse(&SHORT_ID);
        assert_eq!(d.picture_id(), Some(PictureId::Short(127)));
        assert_eq!(d.tl0_pic_idx(), None);
        assert_eq!(d.payload_offset(), 3);
        assert!(is_keyframe(&SHORT_ID));

        let d = parse(&MINIMAL);
        assert_eq!(d.ids(), Vp8Ids::default());
        assert_eq!(d.payload_offset(), 1);
        assert!(is_keyframe(&MINIMAL));

        // N marks a droppable frame.
        assert!(parse(&[0x30, 0x31]).non_reference());
    }

    #[test]
    fn descriptor_without_payload_parses_but_is_no_key_frame() {
        let d = parse(&KEY_FIRST[..6]);
        assert_eq!(d.payload_offset(), 6);
        assert!(!is_keyframe(&KEY_FIRST[..6]));
        assert!(starts_frame(&KEY_FIRST[..6]));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_view_never_a_panic() {
        for v in [
            &KEY_FIRST[..],
            &KEY_CONT,
            &DELTA_FIRST,
            &WITH_KEYIDX,
            &SHORT_ID,
            &MINIMAL,
        ] {
            let whole = parse(v);
            for len in 0..=v.len() {
                let p = &v[..len];
                let mut m = p.to_vec();
                let rewritten = rewrite(&mut m, whole.ids());
                match Vp8Descriptor::parse(p) {
                    Ok(d) => {
                        assert!(len >= whole.payload_offset(), "{v:02x?} at {len}");
                        assert_eq!(d, whole);
                        assert_eq!(rewritten, Ok(d));
                    }
                    Err(Vp8Error::Truncated { needed, len: got }) => {
                        assert!(len < whole.payload_offset());
                        assert_eq!(got, len);
                        assert!(needed > len && needed <= whole.payload_offset());
                        assert_eq!(m, p, "a failed rewrite leaves the bytes alone");
                        assert!(rewritten.is_err());
                    }
                }
                assert_eq!(
                    is_keyframe(p),
                    is_keyframe(v) && len > whole.payload_offset(),
                    "{v:02x?} at {len}"
                );
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut p = [a, b];
                let _ = (Vp8Descriptor::parse(&p), is_keyframe(&p), starts_frame(&p));
                let _ = rewrite(&mut p, parse(&KEY_FIRST).ids());
            }
        }
        // xorshift: deterministic, so a failure reproduces.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut buf = [0u8; 8];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.copy_from_slice(&x.to_le_bytes());
            let len = usize::from(buf[7] & 7);
            // Bias the first bytes towards X and I/L/T/K so the deep paths run.
            buf[0] |= 0x80;
            let p = &mut buf[..len];
            let _ = (Vp8Descriptor::parse(p), is_keyframe(p), starts_frame(p));
            let _ = rewrite(p, parse(&WITH_KEYIDX).ids());
        }
    }

    #[test]
    fn rewrite_keeps_the_15_bit_width_and_every_other_byte() {
        let mut p = KEY_FIRST;
        let old = rewrite(
            &mut p,
            Vp8Ids {
                picture_id: Some(PictureId::Long(32767)),
                tl0_pic_idx: Some(255),
            },
        );
        assert_eq!(old, Ok(parse(&KEY_FIRST)));
        assert_eq!(p[..6], [0x90, 0xe0, 0xff, 0xff, 0xff, 0x20]);
        assert_eq!(p[6..], KEY_FIRST[6..]);
        assert!(is_keyframe(&p));

        // A 7-bit value written into a 15-bit field stays 15-bit.
        let _ = rewrite(
            &mut p,
            Vp8Ids {
                picture_id: Some(PictureId::Short(3)),
                tl0_pic_idx: None,
            },
        );
        assert_eq!(parse(&p).picture_id(), Some(PictureId::Long(3)));
        assert_eq!(parse(&p).tl0_pic_idx(), Some(255), "None leaves TL0PICIDX");
        assert_eq!(p[..6], [0x90, 0xe0, 0x80, 0x03, 0xff, 0x20]);
    }

    #[test]
    fn rewrite_wraps_a_7_bit_field_at_128() {
        let mut p = SHORT_ID;
        let _ = rewrite(
            &mut p,
            Vp8Ids {
                picture_id: Some(PictureId::Long(128)),
                tl0_pic_idx: Some(9),
            },
        );
        assert_eq!(
            p,
            [0x90, 0x80, 0x00, 0x50, 0x00, 0x00],
            "no TL0PICIDX to set"
        );
        let _ = rewrite(
            &mut p,
            Vp8Ids {
                picture_id: Some(PictureId::Long(32767)),
                tl0_pic_idx: None,
            },
        );
        assert_eq!(parse(&p).picture_id(), Some(PictureId::Short(127)));
        assert_eq!(p[2], 0x7f, "M stays 0");
    }

    #[test]
    fn rewrite_leaves_a_packet_without_counters_alone() {
        let mut p = MINIMAL;
        let _ = rewrite(&mut p, parse(&KEY_FIRST).ids());
        assert_eq!(p, MINIMAL);
    }

    #[test]
    fn picture_id_widths() {
        assert_eq!(PictureId::Short(0xff).value(), 127);
        assert_eq!(PictureId::Long(0xffff).value(), 32767);
        assert_eq!(PictureId::Short(0).modulus(), 128);
        assert_eq!(PictureId::Long(0).modulus(), 32768);
        assert_eq!(PictureId::Short(0).with_value(300), PictureId::Short(44));
        assert_eq!(PictureId::Long(0).with_value(32768), PictureId::Long(0));
    }

    #[test]
    fn parsing_and_rewriting_do_not_allocate() {
        let mut p = KEY_FIRST;
        let ids = parse(&DELTA_FIRST).ids();
        let before = crate::sfu::alloc_count::allocations();
        let hits = std::hint::black_box(is_keyframe(&p)) as u32
            + std::hint::black_box(starts_frame(&p)) as u32;
        let _ = std::hint::black_box(rewrite(&mut p, ids));
        assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
        assert_eq!(hits, 2);
    }
}
