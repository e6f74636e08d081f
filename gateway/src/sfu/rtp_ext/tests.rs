//! Parser and writer together: wire vectors built by hand from RFC 8285's layouts,
//! round trips through the writer, and the forwarding path's allocation budget.

use super::*;
use crate::sdp::ExtensionKind::{self, *};
use crate::sfu::rtp::RtpHeader;

/// An RTP packet: fixed header (seq 0x1234, ts 0xdeadbeef, SSRC 0x01020304, PT 96,
/// marker), `csrcs`, an optional extension block, payload and `padding` bytes of RTP
/// padding (count byte included).
fn packet(csrcs: &[u32], ext: Option<(u16, &[u8])>, payload: &[u8], padding: u8) -> Vec<u8> {
    let mut first = 0x80 | csrcs.len() as u8;
    if ext.is_some() {
        first |= 0x10;
    }
    if padding > 0 {
        first |= 0x20;
    }
    let mut p = vec![
        first,
        0x80 | 96,
        0x12,
        0x34,
        0xde,
        0xad,
        0xbe,
        0xef,
        1,
        2,
        3,
        4,
    ];
    for c in csrcs {
        p.extend_from_slice(&c.to_be_bytes());
    }
    if let Some((profile, data)) = ext {
        assert_eq!(data.len() % 4, 0, "test block must be whole words");
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(data);
    }
    p.extend_from_slice(payload);
    if padding > 0 {
        p.extend(std::iter::repeat_n(0, usize::from(padding - 1)));
        p.push(padding);
    }
    p
}

fn ids(pairs: &[(u8, ExtensionKind)]) -> ExtensionIds {
    ExtensionIds::new(pairs).expect("valid test map")
}

/// Chrome's default video IDs for the kinds roomgate negotiates.
fn chrome_ids() -> ExtensionIds {
    ids(&[
        (2, AbsSendTime),
        (3, TransportWideCc),
        (4, Mid),
        (10, RtpStreamId),
        (11, RepairedRtpStreamId),
        (13, VideoOrientation),
    ])
}

fn parse<'a>(p: &'a [u8], ids: &ExtensionIds) -> Result<Extensions<'a>, ExtensionError> {
    let h = RtpHeader::parse(p).expect("test packet is valid RTP");
    parse_extensions(&h, ids)
}

/// Everything `ext` carries, with `seq` and `abs` as roomgate's own stamps.
fn outgoing<'a>(
    ext: &Extensions<'a>,
    seq: &'a [u8; 2],
    abs: &'a [u8; 3],
) -> OutgoingExtensions<'a> {
    let mut out = OutgoingExtensions::default();
    for kind in ExtensionKind::ALL {
        if let Some(data) = ext.passthrough(kind) {
            out.set(kind, data);
        }
    }
    out.set(TransportWideCc, seq);
    out.set(AbsSendTime, abs);
    out
}

#[test]
fn no_block_means_no_values() {
    let p = packet(&[], None, &[1, 2, 3], 0);
    assert_eq!(parse(&p, &chrome_ids()), Ok(Extensions::default()));
}

#[test]
fn one_byte_form() {
    // abs-send-time, transport-cc, mid "a1", audio level, then one padding byte.
    let block = [
        0x22, 0x01, 0x02, 0x03, 0x31, 0xab, 0xcd, 0x41, b'a', b'1', 0x50, 0x85, 0x00, 0, 0, 0,
    ];
    let map = ids(&[
        (2, AbsSendTime),
        (3, TransportWideCc),
        (4, Mid),
        (5, AudioLevel),
    ]);
    let p = packet(&[], Some((0xbede, &block)), &[9], 0);
    let ext = parse(&p, &map).expect("valid block");
    assert_eq!(
        ext,
        Extensions {
            mid: Some(b"a1"),
            transport_seq: Some(0xabcd),
            abs_send_time: Some(0x010203),
            audio_level: Some(&[0x85]),
            ..Extensions::default()
        }
    );
}

#[test]
fn two_byte_form_ignores_appbits() {
    // ID 20 mid (two-byte only), a 17-byte RID (too long for one-byte), an empty
    // unknown element (legal only in two-byte form), transport-cc.
    let mut block = vec![20, 1, b'v', 10, 17];
    block.extend_from_slice(b"abcdefghijklmnopq");
    block.extend_from_slice(&[99, 0, 3, 2, 0x00, 0x07]);
    block.resize(block.len().next_multiple_of(4), 0);
    let map = ids(&[(20, Mid), (10, RtpStreamId), (3, TransportWideCc)]);
    for profile in [0x1000, 0x100f, 0x1005] {
        let p = packet(&[], Some((profile, &block)), &[9], 0);
        let ext = parse(&p, &map).expect("valid block");
        assert_eq!(ext.mid, Some(&b"v"[..]), "profile {profile:#x}");
        assert_eq!(ext.rid, Some(&b"abcdefghijklmnopq"[..]));
        assert_eq!(ext.transport_seq, Some(7));
        assert_eq!(ext.unknown, 1);
    }
}

#[test]
fn padding_between_elements() {
    let map = ids(&[(3, TransportWideCc), (4, Mid)]);
    let one = [0x00, 0x31, 0, 5, 0x00, 0x00, 0x40, b'x', 0, 0, 0, 0];
    let p = packet(&[], Some((0xbede, &one)), &[], 0);
    let ext = parse(&p, &map).expect("one-byte");
    assert_eq!((ext.transport_seq, ext.mid), (Some(5), Some(&b"x"[..])));
    let two = [0, 3, 2, 0, 5, 0, 0, 0, 4, 1, b'x', 0];
    let p = packet(&[], Some((0x1000, &two)), &[], 0);
    let ext = parse(&p, &map).expect("two-byte");
    assert_eq!((ext.transport_seq, ext.mid), (Some(5), Some(&b"x"[..])));
}

#[test]
fn id_15_stops_the_one_byte_walk() {
    let map = ids(&[(3, TransportWideCc), (4, Mid)]);
    // After ID 15 comes what would be a truncated MID; it must not be read.
    let block = [0x31, 0, 5, 0xf0, 0x4f, b'x', 0, 0];
    let p = packet(&[], Some((0xbede, &block)), &[], 0);
    let ext = parse(&p, &map).expect("stops");
    assert_eq!(ext.transport_seq, Some(5));
    assert_eq!(ext.mid, None);
    // In the two-byte form 15 is an ordinary ID.
    let block = [15, 1, 0xaa, 3, 2, 0, 5, 0];
    let p = packet(&[], Some((0x1000, &block)), &[], 0);
    let ext = parse(&p, &map).expect("two-byte");
    assert_eq!((ext.transport_seq, ext.unknown), (Some(5), 1));
}

#[test]
fn truncated_elements() {
    let map = chrome_ids();
    // One-byte: the MID claims 5 bytes, only 4 are left in the block.
    let block = [0x31, 0, 5, 0x44, 0, 0, 0, 0];
    let err = parse(&packet(&[], Some((0xbede, &block)), &[1, 2], 0), &map).unwrap_err();
    assert_eq!(
        err,
        ExtensionError::Truncated {
            id: 4,
            offset: 3,
            needed: 9,
            block_len: 8
        }
    );
    // Unknown IDs are bounds-checked too: the walk cannot skip what it cannot measure.
    let block = [0x7f, 0, 0, 0];
    assert!(matches!(
        parse(&packet(&[], Some((0xbede, &block)), &[], 0), &map),
        Err(ExtensionError::Truncated { id: 7, .. })
    ));
    // Two-byte: length byte missing, and data running past the block.
    let block = [3, 2, 0, 5, 0, 0, 0, 9];
    assert!(matches!(
        parse(&packet(&[], Some((0x1000, &block)), &[], 0), &map),
        Err(ExtensionError::Truncated {
            id: 9,
            offset: 7,
            needed: 9,
            ..
        })
    ));
    let block = [4, 9, b'x', 0];
    assert!(matches!(
        parse(&packet(&[], Some((0x1000, &block)), &[], 0), &map),
        Err(ExtensionError::Truncated {
            id: 4,
            needed: 11,
            ..
        })
    ));
}

#[test]
fn wrong_lengths_of_known_kinds() {
    let map = ids(&[
        (2, AbsSendTime),
        (3, TransportWideCc),
        (4, Mid),
        (5, AudioLevel),
    ]);
    let cases: [(&[u8], ExtensionKind, usize); 5] = [
        (&[0x32, 0, 0, 5], TransportWideCc, 3),
        (&[0x30, 5, 0, 0], TransportWideCc, 1),
        (&[0x21, 0, 5, 0], AbsSendTime, 2),
        (&[0x51, 0x85, 0, 0], AudioLevel, 2),
        (&[0x23, 0, 0, 0, 1, 0, 0, 0], AbsSendTime, 4),
    ];
    for (block, kind, len) in cases {
        let err = parse(&packet(&[], Some((0xbede, block)), &[], 0), &map).unwrap_err();
        assert!(
            matches!(err, ExtensionError::WrongLength { kind: k, len: l, .. } if k == kind && l == len),
            "{block:?}: {err}"
        );
    }
    // An empty MID is only expressible in the two-byte form, and still wrong.
    let err = parse(&packet(&[], Some((0x1000, &[4, 0, 0, 0])), &[], 0), &map).unwrap_err();
    assert!(matches!(
        err,
        ExtensionError::WrongLength {
            kind: Mid,
            len: 0,
            ..
        }
    ));
    assert!(err.to_string().contains("expected at least 1"), "{err}");
}

#[test]
fn duplicate_kind_in_one_packet() {
    let map = ids(&[(4, Mid)]);
    let block = [0x40, b'a', 0x40, b'b'];
    assert_eq!(
        parse(&packet(&[], Some((0xbede, &block)), &[], 0), &map),
        Err(ExtensionError::Duplicate { kind: Mid, id: 4 })
    );
}

#[test]
fn unknown_profile_is_its_own_error() {
    for profile in [0x0000, 0xbedf, 0x2000, 0x1010, 0xffff] {
        let err = parse(
            &packet(&[], Some((profile, &[0x31, 0, 5, 0])), &[], 0),
            &chrome_ids(),
        )
        .unwrap_err();
        assert_eq!(err, ExtensionError::UnknownProfile { profile });
        assert_eq!(err.reason(), "unknown_profile");
    }
}

#[test]
fn unknown_ids_are_counted_not_kept() {
    // Nothing negotiated: every element is unknown, padding is not an element.
    let block = [0x22, 1, 2, 3, 0x31, 0, 5, 0x00, 0xe0, 7, 0, 0];
    let p = packet(&[], Some((0xbede, &block)), &[], 0);
    let ext = parse(&p, &ExtensionIds::default()).expect("valid");
    assert_eq!(
        ext,
        Extensions {
            unknown: 3,
            ..Extensions::default()
        }
    );
}

/// Wire bytes in the shape Chrome sends on a simulcast layer once the answer
/// negotiated abs-send-time (2), transport-cc (3), mid (4) and rid (10): one-byte form,
/// elements in ID order, zero padding to the word.
#[test]
fn chrome_simulcast_packet() {
    #[rustfmt::skip]
    let p: [u8; 34] = [
        0x90, 0x60, 0x5c, 0x3a,  0x8a, 0x1b, 0x2c, 0x3d,  0x1a, 0x2b, 0x3c, 0x4d,
        0xbe, 0xde, 0x00, 0x03,
        0x22, 0x4a, 0x3d, 0x8c,  0x31, 0x00, 0x2a, 0x40,  0x30, 0xa0, 0x68, 0x00,
        // VP8 payload descriptor and the start of a frame.
        0x90, 0x80, 0x12, 0x34,  0x9d, 0x01,
    ];
    let h = RtpHeader::parse(&p).expect("valid RTP");
    let ext = parse_extensions(&h, &chrome_ids()).expect("valid block");
    assert_eq!(
        ext,
        Extensions {
            mid: Some(b"0"),
            rid: Some(b"h"),
            transport_seq: Some(42),
            abs_send_time: Some(0x4a3d8c),
            ..Extensions::default()
        }
    );
    // Forward to a subscriber whose IDs differ, with roomgate's own transport seq.
    let sub = ids(&[(1, Mid), (5, TransportWideCc)]);
    let seq = encode_transport_seq(7);
    let mut out = Vec::with_capacity(1500);
    write_rewritten(&mut out, &h, &[(1, ext.mid.expect("mid")), (5, &seq)]).expect("write");
    #[rustfmt::skip]
    let expected: [u8; 30] = [
        0x90, 0x60, 0x5c, 0x3a,  0x8a, 0x1b, 0x2c, 0x3d,  0x1a, 0x2b, 0x3c, 0x4d,
        0xbe, 0xde, 0x00, 0x02,
        0x10, 0x30, 0x51, 0x00,  0x07, 0x00, 0x00, 0x00,
        0x90, 0x80, 0x12, 0x34,  0x9d, 0x01,
    ];
    assert_eq!(out, expected);
    let back = parse(&out, &sub).expect("valid");
    assert_eq!((back.mid, back.transport_seq), (Some(&b"0"[..]), Some(7)));
}

#[test]
fn round_trip_one_and_two_byte() {
    let long_rid = [b'r'; 40];
    let source = Extensions {
        mid: Some(b"video0"),
        rid: Some(b"hi"),
        repaired_rid: Some(b"hi"),
        transport_seq: Some(0xfffe),
        abs_send_time: Some(0x00ab_cdef),
        audio_level: Some(&[0x7f]),
        video_orientation: Some(&[0x03]),
        unknown: 0,
    };
    let mut long = source;
    long.rid = Some(&long_rid);
    let all_kinds: Vec<(u8, ExtensionKind)> = ExtensionKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &k)| (i as u8 + 1, k))
        .collect();
    let high_ids: Vec<(u8, ExtensionKind)> = ExtensionKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &k)| (i as u8 + 100, k))
        .collect();
    // One-byte; two-byte forced by a 40-byte RID; two-byte forced by IDs above 14.
    for (want, map, profile) in [
        (source, ids(&all_kinds), 0xbede),
        (long, ids(&all_kinds), 0x1000),
        (source, ids(&high_ids), 0x1000),
    ] {
        let original = packet(&[0xaabb_ccdd, 7], None, &[5, 6, 7, 8, 9], 4);
        let h = RtpHeader::parse(&original).expect("valid");
        let seq = want.transport_seq.expect("seq").to_be_bytes();
        let [_, a, b, c] = want.abs_send_time.expect("abs").to_be_bytes();
        let abs = [a, b, c];
        let mut out = Vec::new();
        outgoing(&want, &seq, &abs)
            .write(&mut out, &h, &map)
            .expect("write");
        let back = RtpHeader::parse(&out).expect("writer output is valid RTP");
        assert_eq!(back.extension().map(|e| e.profile), Some(profile));
        assert_eq!(parse_extensions(&back, &map), Ok(want));
        assert_eq!(back.csrcs().collect::<Vec<_>>(), vec![0xaabb_ccdd, 7]);
        assert_eq!(back.payload(), &[5, 6, 7, 8, 9]);
        assert!(back.has_padding());
        assert_eq!(back.padding_len(), 4);
        assert_eq!(out[0], original[0] | 0x10, "only the X bit changes");
        assert_eq!(&out[1..12], &original[1..12]);
    }
}

#[test]
fn rewrite_strips_unknown_ids() {
    let publisher = chrome_ids();
    // mid, then IDs 5 and 6 (playout-delay, content-type in Chrome) not negotiated.
    let block = [0x40, b'm', 0x52, 0, 0, 0, 0x60, 0x01, 0, 0, 0, 0];
    let p = packet(&[], Some((0xbede, &block)), &[1], 0);
    let h = RtpHeader::parse(&p).expect("valid");
    let ext = parse_extensions(&h, &publisher).expect("valid");
    assert_eq!((ext.mid, ext.unknown), (Some(&b"m"[..]), 2));
    let seq = [0, 1];
    let abs = [0, 0, 1];
    let mut out = Vec::new();
    outgoing(&ext, &seq, &abs)
        .write(&mut out, &h, &publisher)
        .expect("write");
    // Parsed with a map that knows IDs 5 and 6 as well: they are gone.
    let wide = ids(&[
        (2, AbsSendTime),
        (3, TransportWideCc),
        (4, Mid),
        (5, AudioLevel),
        (6, VideoOrientation),
    ]);
    let back = parse(&out, &wide).expect("valid");
    assert_eq!(
        back,
        Extensions {
            mid: Some(b"m"),
            transport_seq: Some(1),
            abs_send_time: Some(1),
            ..Extensions::default()
        }
    );
}

#[test]
fn zero_elements_drop_the_block() {
    let block = [0x31, 0, 5, 0];
    let with = packet(&[9], Some((0xbede, &block)), &[1, 2, 3], 2);
    let without = packet(&[9], None, &[1, 2, 3], 2);
    let h = RtpHeader::parse(&with).expect("valid");
    let mut out = vec![0xee; 3]; // stale contents are replaced, not appended to
    write_rewritten(&mut out, &h, &[]).expect("write");
    assert_eq!(out, without);
    assert_eq!(out[0] & 0x10, 0, "X bit cleared");
    // And a packet without a block gains one, X bit set.
    let h = RtpHeader::parse(&without).expect("valid");
    write_rewritten(&mut out, &h, &[(3, &[0, 5])]).expect("write");
    assert_eq!(out, with);
}

#[test]
fn writer_rejects_unencodable_elements() {
    let p = packet(&[], None, &[], 0);
    let h = RtpHeader::parse(&p).expect("valid");
    let mut out = Vec::new();
    assert_eq!(
        write_rewritten(&mut out, &h, &[(3, &[0, 1]), (0, &[1])]),
        Err(WriteError::ZeroId { index: 1 })
    );
    let big = [0u8; 256];
    assert_eq!(
        write_rewritten(&mut out, &h, &[(3, &big)]),
        Err(WriteError::TooLong { id: 3, len: 256 })
    );
    // The one-byte/two-byte boundary: 16 bytes at ID 14 is one-byte, 17 bytes or ID 15
    // is two-byte.
    for (id, len, profile) in [(14, 16, 0xbede), (14, 17, 0x1000), (15, 1, 0x1000)] {
        write_rewritten(&mut out, &h, &[(id, &big[..len])]).expect("write");
        let back = RtpHeader::parse(&out).expect("valid");
        assert_eq!(
            back.extension().map(|e| e.profile),
            Some(profile),
            "id {id} len {len}"
        );
    }
}

#[test]
fn forwarding_path_does_not_allocate() {
    let p = packet(
        &[1],
        Some((
            0xbede,
            &[0x22, 1, 2, 3, 0x31, 0, 5, 0x40, b'0', 0xa1, b'h', b'i'],
        )),
        &[0x90; 1000],
        0,
    );
    let publisher = chrome_ids();
    let subscriber = ids(&[
        (1, Mid),
        (2, TransportWideCc),
        (3, AbsSendTime),
        (40, RtpStreamId),
    ]);
    let mut one_byte = Vec::with_capacity(1500);
    let mut two_byte = Vec::with_capacity(1500);
    let mut by_kind = Vec::with_capacity(1500);
    let before = crate::sfu::alloc_count::allocations();
    let h = RtpHeader::parse(&p).expect("valid");
    let ext = parse_extensions(&h, &publisher).expect("valid");
    let seq = encode_transport_seq(9);
    let abs = encode_abs_send_time(std::time::Duration::from_millis(1234));
    let mid = ext.passthrough(Mid).unwrap_or_default();
    let rid = ext.passthrough(RtpStreamId).unwrap_or_default();
    let short = [(1, mid), (2, &seq[..]), (3, &abs[..])];
    write_rewritten(&mut one_byte, &h, &short).expect("write");
    // Kind order (ExtensionKind::ALL), as OutgoingExtensions writes them.
    let with_rid = [(1, mid), (40, rid), (2, &seq[..]), (3, &abs[..])];
    write_rewritten(&mut two_byte, &h, &with_rid).expect("write");
    let mut ext_out = OutgoingExtensions::default();
    ext_out.set(Mid, mid);
    ext_out.set(RtpStreamId, rid);
    ext_out.set(TransportWideCc, &seq);
    ext_out.set(AbsSendTime, &abs);
    ext_out.write(&mut by_kind, &h, &subscriber).expect("write");
    let allocated = crate::sfu::alloc_count::allocations() - before;
    assert_eq!(allocated, 0);
    let back = parse(&two_byte, &subscriber).expect("valid");
    assert_eq!(back.rid, Some(&b"hi"[..]));
    assert_eq!(back.transport_seq, Some(9));
    assert_eq!(by_kind, two_byte, "same elements, same order");
    assert_eq!(
        parse(&one_byte, &subscriber).expect("valid").mid,
        Some(&b"0"[..])
    );
}

#[test]
fn never_panics_on_arbitrary_blocks() {
    // Deterministic xorshift: every run walks the same 20k blocks.
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let map = chrome_ids();
    let mut errors = 0;
    for _ in 0..20_000 {
        let words = (next() % 6) as usize;
        let block: Vec<u8> = (0..words * 4).map(|_| (next() % 48) as u8).collect();
        let profile = if next() % 2 == 0 { 0xbede } else { 0x1000 };
        let p = packet(&[], Some((profile, &block)), &[1], 0);
        if parse(&p, &map).is_err() {
            errors += 1;
        }
    }
    // Small byte values make both valid and broken walks common.
    assert!(errors > 0 && errors < 20_000, "{errors}");
}
