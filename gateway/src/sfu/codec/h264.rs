//! H.264 RTP payload (RFC 6184 §5): which NAL units a packet carries, enough to tell
//! whether a subscriber can start decoding here.
//!
//! A packet counts as a keyframe if it carries an IDR slice (NAL type 5) or a sequence
//! parameter set (type 7). Chrome sends SPS and PPS (usually aggregated in one STAP-A)
//! immediately before every IDR, in the same frame; starting at the SPS rather than at the
//! IDR keeps the parameter sets a decoder needs.
//!
//! Modes other than single NAL unit, STAP-A and FU-A (STAP-B, MTAP, FU-B) belong to
//! interleaved packetization, which WebRTC does not negotiate; they never count.

/// NAL unit types (H.264 Table 7-1, RFC 6184 Table 1) this module looks at.
pub mod nal_type {
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const STAP_A: u8 = 24;
    pub const FU_A: u8 = 28;
}

const TYPE_MASK: u8 = 0x1f;
const FU_START: u8 = 0x80;
const FU_END: u8 = 0x40;
/// STAP-A NAL units are each preceded by a 16-bit size.
const STAP_SIZE_LEN: usize = 2;

/// How one RTP payload is packetized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// One whole NAL unit (types 1..=23) of this type.
    Single { nal_type: u8 },
    /// An aggregate of whole NAL units; walk them with [`stap_a_nal_types`].
    StapA,
    /// One fragment of a NAL unit of type `nal_type`.
    FuA {
        nal_type: u8,
        start: bool,
        end: bool,
    },
    /// Any other packet type, or type 0 (undefined), carried through untouched.
    Other { packet_type: u8 },
}

/// Classifies a payload; `None` if it is empty or an FU-A without its FU header.
pub fn classify(payload: &[u8]) -> Option<Packet> {
    let packet_type = payload.first()? & TYPE_MASK;
    Some(match packet_type {
        1..=23 => Packet::Single {
            nal_type: packet_type,
        },
        nal_type::STAP_A => Packet::StapA,
        nal_type::FU_A => {
            let fu = *payload.get(1)?;
            Packet::FuA {
                nal_type: fu & TYPE_MASK,
                start: fu & FU_START != 0,
                end: fu & FU_END != 0,
            }
        }
        _ => Packet::Other { packet_type },
    })
}

/// The NAL unit types inside a STAP-A payload (header byte included), in order. Stops
/// at the first unit whose size is zero or runs past the end, so a truncated aggregate
/// yields the units that are whole.
pub fn stap_a_nal_types(payload: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut rest = payload.get(1..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        let size = rest.get(..STAP_SIZE_LEN)?;
        let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
        let unit = rest.get(STAP_SIZE_LEN..STAP_SIZE_LEN + size)?;
        let header = *unit.first()?;
        rest = rest.get(STAP_SIZE_LEN + size..).unwrap_or(&[]);
        Some(header & TYPE_MASK)
    })
}

fn starts_decoding(nal_type: u8) -> bool {
    nal_type == nal_type::IDR || nal_type == nal_type::SPS
}

/// Whether a decoder can start at this packet: a single IDR or SPS NAL unit, a STAP-A
/// holding one, or the first fragment of an FU-A IDR or SPS. `false` for anything
/// malformed or truncated.
pub fn is_keyframe(payload: &[u8]) -> bool {
    match classify(payload) {
        Some(Packet::Single { nal_type }) => starts_decoding(nal_type),
        Some(Packet::StapA) => stap_a_nal_types(payload).any(starts_decoding),
        Some(Packet::FuA {
            nal_type,
            start: true,
            ..
        }) => starts_decoding(nal_type),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Constrained Baseline level 3.1 SPS, as Chrome sends it.
    const SPS: [u8; 14] = [
        0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0x50, 0x1e, 0xd0, 0x0f, 0x08, 0x84, 0x6a,
    ];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
    /// Start of an IDR slice (nal_ref_idc 3).
    const IDR: [u8; 6] = [0x65, 0x88, 0x84, 0x00, 0x33, 0xff];
    /// Start of a non-IDR slice (nal_ref_idc 2).
    const NON_IDR: [u8; 5] = [0x41, 0x9a, 0x24, 0x6c, 0x41];
    const SEI: [u8; 4] = [0x06, 0x05, 0x01, 0x80];

    /// A STAP-A (F 0, NRI 3) of the given NAL units.
    fn stap_a(units: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x78];
        for u in units {
            p.extend_from_slice(&u16::try_from(u.len()).expect("short unit").to_be_bytes());
            p.extend_from_slice(u);
        }
        p
    }

    /// An FU-A fragment (indicator NRI from the unit) of `unit`'s payload.
    fn fu_a(unit: &[u8], start: bool, end: bool) -> Vec<u8> {
        let nal = unit[0];
        let mut fu_header = nal & TYPE_MASK;
        if start {
            fu_header |= FU_START;
        }
        if end {
            fu_header |= FU_END;
        }
        let mut p = vec![(nal & 0xe0) | nal_type::FU_A, fu_header];
        p.extend_from_slice(&unit[1..]);
        p
    }

    #[test]
    fn single_nal_units() {
        assert!(is_keyframe(&IDR));
        assert!(is_keyframe(&SPS));
        assert!(!is_keyframe(&PPS));
        assert!(!is_keyframe(&NON_IDR));
        assert!(!is_keyframe(&SEI));
        assert_eq!(classify(&IDR), Some(Packet::Single { nal_type: 5 }));
    }

    #[test]
    fn chrome_stap_a_with_parameter_sets_and_idr() {
        let p = stap_a(&[&SPS, &PPS, &IDR]);
        assert_eq!(p[..3], [0x78, 0x00, 0x0e]);
        assert_eq!(classify(&p), Some(Packet::StapA));
        assert_eq!(stap_a_nal_types(&p).collect::<Vec<_>>(), [7, 8, 5]);
        assert!(is_keyframe(&p));
        // The usual Chrome split: SPS + PPS aggregated, the IDR in FU-A fragments.
        assert!(is_keyframe(&stap_a(&[&SPS, &PPS])));
        assert!(is_keyframe(&stap_a(&[&PPS, &SEI, &IDR])));
        assert!(!is_keyframe(&stap_a(&[&PPS, &SEI, &NON_IDR])));
        assert!(!is_keyframe(&stap_a(&[])));
    }

    #[test]
    fn stap_a_stops_at_a_unit_that_overruns_or_is_empty() {
        // PPS, then a size that claims more than is there: the IDR after it is not read.
        let mut p = stap_a(&[&PPS, &IDR]);
        let idr_size_at = 1 + 2 + PPS.len();
        p[idr_size_at + 1] = 0x07;
        assert_eq!(stap_a_nal_types(&p).collect::<Vec<_>>(), [8]);
        assert!(!is_keyframe(&p));
        // A zero size ends the walk even if a keyframe follows.
        let mut p = vec![0x78, 0x00, 0x00];
        p.extend_from_slice(&stap_a(&[&IDR])[1..]);
        assert!(!is_keyframe(&p));
        // Units before the broken one still count.
        let mut p = stap_a(&[&SPS, &PPS]);
        p.extend_from_slice(&[0xff, 0xff, 0x65]);
        assert_eq!(stap_a_nal_types(&p).collect::<Vec<_>>(), [7, 8]);
        assert!(is_keyframe(&p));
    }

    #[test]
    fn fu_a_start_middle_end() {
        let start = fu_a(&IDR, true, false);
        assert_eq!(start[..2], [0x7c, 0x85]);
        assert!(is_keyframe(&start));
        let middle = fu_a(&IDR, false, false);
        assert_eq!(middle[..2], [0x7c, 0x05]);
        assert!(!is_keyframe(&middle));
        let end = fu_a(&IDR, false, true);
        assert_eq!(end[..2], [0x7c, 0x45]);
        assert_eq!(
            classify(&end),
            Some(Packet::FuA {
                nal_type: 5,
                start: false,
                end: true
            })
        );
        assert!(!is_keyframe(&end));
        // A non-IDR slice's first fragment is not a keyframe.
        let delta = fu_a(&NON_IDR, true, false);
        assert_eq!(delta[..2], [0x5c, 0x81]);
        assert!(!is_keyframe(&delta));
        assert!(is_keyframe(&fu_a(&SPS, true, false)));
        // An FU-A indicator with no FU header.
        assert_eq!(classify(&[0x7c]), None);
        assert!(!is_keyframe(&[0x7c]));
    }

    #[test]
    fn interleaved_modes_are_ignored() {
        // STAP-B (25), MTAP16 (26), MTAP24 (27) and FU-B (29) around an IDR, and the
        // undefined types 0, 30, 31.
        for t in [25u8, 26, 27, 29, 0, 30, 31] {
            let p = [0x60 | t, 0x85, 0x00, 0x06, 0x65, 0x88, 0x84];
            assert_eq!(classify(&p), Some(Packet::Other { packet_type: t }));
            assert!(!is_keyframe(&p), "type {t}");
        }
        assert_eq!(classify(&[]), None);
        assert!(!is_keyframe(&[]));
    }

    #[test]
    fn every_truncation_is_safe() {
        let stap = stap_a(&[&SPS, &PPS, &IDR]);
        let fu = fu_a(&IDR, true, false);
        for len in 0..=stap.len() {
            // Only once the SPS is whole does the aggregate count.
            assert_eq!(
                is_keyframe(&stap[..len]),
                len >= 1 + 2 + SPS.len(),
                "at {len}"
            );
        }
        for len in 0..=fu.len() {
            assert_eq!(is_keyframe(&fu[..len]), len >= 2, "at {len}");
        }
        for len in 0..=IDR.len() {
            assert_eq!(is_keyframe(&IDR[..len]), len >= 1, "at {len}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = is_keyframe(&[a, b]);
                let _ = is_keyframe(&[0x78, a, b]);
                let _ = is_keyframe(&[0x78, 0x00, 0x01, a, b]);
            }
        }
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf = x.to_le_bytes();
            buf[0] = 0x78;
            // Small sizes, so that units fit often enough to walk several.
            buf[1] = 0;
            buf[2] &= 3;
            let len = usize::from(buf[7] & 7) + 1;
            let _ = is_keyframe(&buf[..len]);
            let _ = stap_a_nal_types(&buf[..len]).count();
        }
    }

    #[test]
    fn detection_does_not_allocate() {
        let stap = stap_a(&[&PPS, &SEI, &IDR]);
        let fu = fu_a(&IDR, true, false);
        let before = crate::sfu::alloc_count::allocations();
        let n = [&stap[..], &fu, &IDR, &NON_IDR]
            .iter()
            .filter(|p| is_keyframe(std::hint::black_box(p)))
            .count();
        assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
        assert_eq!(n, 3);
    }
}
