//! RTX (RFC 4588) in the room core, on a virtual clock: roomgate asks a publisher for
//! what it missed and takes the repair from the publisher's RTX stream, and answers a
//! subscriber's NACK on the subscriber's RTX stream with the original sequence number
//! in front of the payload.

use std::time::{Duration, Instant};

use super::rtcp::{self, RtcpPacket};
use super::rtp::RtpHeader;
use super::*;
use crate::sdp::{Codec, MediaKind};

const P: MemberId = 1;
const S: MemberId = 2;
const MEDIA: u32 = 0x1111;
const PUB_RTX: u32 = 0x2222;
const OUT: u32 = 0x3333;
const OUT_RTX: u32 = 0x4444;
const SENDER: u32 = 0x5e5e_5e5e;
const MS: Duration = Duration::from_millis(1);

fn vp8(pt: u8) -> Codec {
    Codec {
        payload_type: pt,
        name: "VP8".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: None,
        rtcp_fb: vec!["nack".into(), "nack pli".into()],
    }
}

fn room(t0: Instant, subscriber_rtx: bool) -> RoomCore {
    room_with(t0, subscriber_rtx, Some(PUB_RTX))
}

/// `publisher_rtx_ssrc`: the RTX SSRC the publisher's SDP names, if any (simulcast
/// layers name none and are bound by their first repair).
fn room_with(t0: Instant, subscriber_rtx: bool, publisher_rtx_ssrc: Option<u32>) -> RoomCore {
    let mut core = RoomCore::new(ForwardConfig {
        sender_ssrc: SENDER,
        ..ForwardConfig::default()
    });
    core.add_publisher(
        P,
        vec![PublishedTrack {
            kind: MediaKind::Video,
            ssrc: Some(MEDIA),
            codec: vp8(96),
            mid: "0".into(),
            rids: Vec::new(),
            rtx_payload_type: Some(97),
            rtx_ssrc: publisher_rtx_ssrc,
        }],
        t0,
    );
    core.add_subscriber(
        S,
        vec![SubscribedSlot {
            kind: MediaKind::Video,
            out_ssrc: OUT,
            codec: vp8(100),
            mid: "0".into(),
            rtx: subscriber_rtx.then_some((101, OUT_RTX)),
        }],
        None,
        t0,
    );
    core.set_ready(P, t0);
    core.set_ready(S, t0);
    drain(&mut core);
    core
}

/// A packet whose payload names its seq, so repairs can be checked byte for byte.
fn media(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&MEDIA.to_be_bytes());
    // VP8 descriptor without picture ID (S=1), then a payload that names the seq.
    p.extend_from_slice(&[0x10, 0x01, (seq >> 8) as u8, seq as u8, 0xaa]);
    p
}

/// The publisher's RTX packet for `seq`: its own SSRC, PT and seq; the payload is the
/// original seq followed by the original payload.
fn publisher_rtx(rtx_seq: u16, seq: u16) -> Vec<u8> {
    let original = media(seq);
    let mut p = vec![0x80, 97];
    p.extend_from_slice(&rtx_seq.to_be_bytes());
    p.extend_from_slice(&original[4..8]);
    p.extend_from_slice(&PUB_RTX.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&original[12..]);
    p
}

fn drain(core: &mut RoomCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn nacked_seqs(outs: &[Output], to: MemberId) -> Vec<u16> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtcp { to: t, packet } if *t == to => Some(packet),
            _ => None,
        })
        .flat_map(|p| {
            rtcp::parse_compound(p)
                .flatten()
                .filter_map(|r| match r {
                    RtcpPacket::Nack(n) => {
                        assert_eq!(n.media_ssrc(), MEDIA);
                        Some(n.lost_seqs().collect::<Vec<_>>())
                    }
                    _ => None,
                })
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn rtp_to_s(outs: &[Output]) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtp { to: S, packet } => Some(packet.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_gap_is_nacked_to_the_publisher_and_its_rtx_repairs_the_stream() {
    let t0 = Instant::now();
    let mut core = room(t0, false);
    for seq in [10, 11, 14] {
        core.handle_rtp(P, &media(seq), t0).expect("media");
    }
    let out = drain(&mut core);
    assert_eq!(nacked_seqs(&out, P), [12, 13], "asked at once");
    assert_eq!(rtp_to_s(&out).len(), 3);
    // Nothing came: asked again on the fast tick, not before the retry interval.
    core.handle_timeout(t0 + 50 * MS);
    assert!(nacked_seqs(&drain(&mut core), P).is_empty());
    core.handle_timeout(t0 + 120 * MS);
    assert_eq!(nacked_seqs(&drain(&mut core), P), [12, 13]);
    // The repair of 12 arrives on the RTX stream and goes out as the media packet 12,
    // in the subscriber's sequence space (same offset as 10, 11, 14).
    core.handle_rtp(P, &publisher_rtx(500, 12), t0 + 130 * MS)
        .expect("rtx");
    let out = rtp_to_s(&drain(&mut core));
    assert_eq!(out.len(), 1);
    let h = RtpHeader::parse(&out[0]).expect("rtp");
    assert_eq!(
        (h.ssrc(), h.payload_type(), h.sequence_number()),
        (OUT, 100, 12)
    );
    assert_eq!(h.payload(), &media(12)[12..]);
    // The same repair again is a duplicate; a padding-only RTX packet is a probe.
    core.handle_rtp(P, &publisher_rtx(501, 12), t0 + 131 * MS)
        .expect("dup");
    let mut padding = publisher_rtx(502, 12);
    padding.truncate(12);
    core.handle_rtp(P, &padding, t0 + 132 * MS)
        .expect("padding");
    assert!(rtp_to_s(&drain(&mut core)).is_empty());
    let stats = core.take_stats();
    assert_eq!(stats.nacks_sent, 2);
    assert_eq!(stats.rtx_repairs_received, 1);
    assert_eq!(stats.rtx_duplicates_received, 1);
    assert_eq!(stats.rtx_padding_received, 1);
    assert_eq!(stats.nack_rtt.count, 1);
    assert_eq!(stats.nack_rtt.sum_ms, 130);
    // 13 never comes: after the third request it is given up and counted.
    core.handle_timeout(t0 + 240 * MS);
    assert_eq!(nacked_seqs(&drain(&mut core), P), [13]);
    core.handle_timeout(t0 + 400 * MS);
    assert!(nacked_seqs(&drain(&mut core), P).is_empty());
    assert_eq!(core.take_stats().nack_gave_up, 1);
    assert_eq!(
        core.poll_timeout(),
        Some(t0 + Duration::from_secs(1)),
        "only the RR timer is left"
    );
}

#[test]
fn reordering_is_recognised_before_the_rtx_stream_is_bound() {
    // RTX negotiated, its SSRC not named: a late original is still no repair.
    let t0 = Instant::now();
    let mut core = room_with(t0, false, None);
    core.handle_rtp(P, &media(10), t0).expect("media");
    core.handle_rtp(P, &media(12), t0).expect("media");
    assert_eq!(nacked_seqs(&drain(&mut core), P), [11]);
    core.handle_rtp(P, &media(11), t0 + 6 * MS).expect("media");
    drain(&mut core);
    let stats = core.take_stats();
    assert_eq!((stats.rtp_reordered, stats.nacks_spurious), (1, 1));
    assert_eq!(stats.nack_rtt.count, 0);
}

/// The shell's loop on a virtual clock: every timer due up to `until`, in order.
fn run_until(core: &mut RoomCore, until: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(at) = core.poll_timeout().filter(|&at| at <= until) {
        core.handle_timeout(at);
        out.extend(drain(core));
    }
    out
}

#[test]
fn reordering_on_the_media_stream_holds_back_the_next_first_nacks() {
    let t0 = Instant::now();
    let mut core = room(t0, false);
    core.handle_rtp(P, &media(10), t0).expect("media");
    core.handle_rtp(P, &media(12), t0).expect("media");
    assert_eq!(nacked_seqs(&drain(&mut core), P), [11], "asked at once");
    // 11 comes 6 ms late on the media stream, before any repair: reordered, and
    // forwarded like any other packet.
    core.handle_rtp(P, &media(11), t0 + 6 * MS).expect("media");
    assert_eq!(rtp_to_s(&drain(&mut core)).len(), 1);
    let stats = core.take_stats();
    assert_eq!((stats.rtp_reordered, stats.nacks_spurious), (1, 1));
    assert_eq!(
        stats.nack_rtt.count, 0,
        "a reordered packet is no round trip"
    );
    run_until(&mut core, t0 + 99 * MS);
    // The next gap waits out those 6 ms, and the room's timer comes when they are over.
    let t1 = t0 + 100 * MS;
    core.handle_rtp(P, &media(13), t1).expect("media");
    core.handle_rtp(P, &media(15), t1).expect("media");
    assert!(nacked_seqs(&drain(&mut core), P).is_empty());
    assert_eq!(core.poll_timeout(), Some(t1 + 6 * MS));
    // 14 arrives inside the window: no NACK ever goes out for it.
    core.handle_rtp(P, &media(14), t1 + 4 * MS).expect("media");
    assert!(nacked_seqs(&run_until(&mut core, t1 + 99 * MS), P).is_empty());
    let stats = core.take_stats();
    assert_eq!((stats.rtp_reordered, stats.nacks_spurious), (1, 0));
    assert_eq!(stats.nacks_sent, 0);
    // A loss is asked for when the window ends, and the RTX repair counts as one.
    let t2 = t0 + 200 * MS;
    core.handle_rtp(P, &media(16), t2).expect("media");
    core.handle_rtp(P, &media(18), t2).expect("media");
    drain(&mut core);
    assert!(nacked_seqs(&run_until(&mut core, t2 + 5 * MS), P).is_empty());
    assert_eq!(nacked_seqs(&run_until(&mut core, t2 + 6 * MS), P), [17]);
    core.handle_rtp(P, &publisher_rtx(600, 17), t2 + 46 * MS)
        .expect("rtx");
    drain(&mut core);
    let stats = core.take_stats();
    assert_eq!((stats.rtx_repairs_received, stats.rtp_reordered), (1, 0));
    assert_eq!((stats.nack_rtt.count, stats.nack_rtt.sum_ms), (1, 40));
}

#[test]
fn subscriber_nacks_are_answered_on_its_rtx_stream() {
    let t0 = Instant::now();
    let mut core = room(t0, true);
    for seq in 20..30 {
        core.handle_rtp(P, &media(seq), t0).expect("media");
    }
    let sent = rtp_to_s(&drain(&mut core));
    let out_seq = |i: usize| RtpHeader::parse(&sent[i]).expect("rtp").sequence_number();
    let nack = rtcp::write_nack(0x9, OUT, &[out_seq(3), out_seq(5)]).expect("nack");
    core.handle_rtcp(S, &nack, t0 + 10 * MS).expect("nack");
    let repairs = rtp_to_s(&drain(&mut core));
    assert_eq!(repairs.len(), 2);
    for (k, (r, i)) in repairs.iter().zip([3usize, 5]).enumerate() {
        let h = RtpHeader::parse(r).expect("rtx");
        assert_eq!((h.ssrc(), h.payload_type()), (OUT_RTX, 101));
        assert_eq!(
            h.sequence_number(),
            k as u16,
            "the RTX stream has its own seqs"
        );
        let original = RtpHeader::parse(&sent[i]).expect("rtp");
        assert_eq!(h.timestamp(), original.timestamp());
        assert_eq!(&h.payload()[..2], &out_seq(i).to_be_bytes(), "OSN first");
        assert_eq!(&h.payload()[2..], original.payload());
    }
    let stats = core.take_stats();
    assert_eq!((stats.retransmissions, stats.rtx_sent), (2, 2));
}

#[test]
fn simulcast_rtx_is_bound_by_its_repaired_rid() {
    use super::rtp_ext::ExtensionIds;
    use crate::sdp::ExtensionKind;
    let t0 = Instant::now();
    let mut core = RoomCore::new(ForwardConfig {
        sender_ssrc: SENDER,
        ..ForwardConfig::default()
    });
    core.add_publisher(
        P,
        vec![PublishedTrack {
            kind: MediaKind::Video,
            ssrc: None,
            codec: vp8(96),
            mid: "0".into(),
            rids: vec!["q".into(), "h".into()],
            rtx_payload_type: Some(97),
            rtx_ssrc: None,
        }],
        t0,
    );
    let ids = ExtensionIds::new(&[
        (10, ExtensionKind::RtpStreamId),
        (11, ExtensionKind::RepairedRtpStreamId),
    ])
    .expect("ids");
    core.set_extensions(P, ids, t0);
    core.set_ready(P, t0);
    // One-byte extension block with a single 1-byte element.
    let with_ext = |mut p: Vec<u8>, id: u8, value: u8| {
        p[0] |= 0x10;
        let payload = p.split_off(12);
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, id << 4, value, 0, 0]);
        p.extend_from_slice(&payload);
        p
    };
    // Layer h's media binds its SSRC by RID; a gap makes roomgate NACK it.
    for seq in [10u16, 12] {
        let mut m = media(seq);
        m[8..12].copy_from_slice(&0x0ab0u32.to_be_bytes());
        core.handle_rtp(P, &with_ext(m, 10, b'h'), t0)
            .expect("media");
    }
    let out = drain(&mut core);
    assert!(!out.is_empty(), "a NACK for 11");
    // The repair comes on an RTX SSRC never signalled, named by repaired-rtp-stream-id.
    let mut rtx = publisher_rtx(1, 11);
    rtx[8..12].copy_from_slice(&0xbeefu32.to_be_bytes());
    core.handle_rtp(P, &with_ext(rtx, 11, b'h'), t0 + 40 * MS)
        .expect("rtx");
    let stats = core.take_stats();
    assert_eq!(stats.rtx_repairs_received, 1);
    assert_eq!(stats.nack_rtt.count, 1);
    // Later RTX packets on that SSRC need no extension: a repeat of 12 is known as
    // layer h's, and dropped as a duplicate.
    let mut again = publisher_rtx(2, 12);
    again[8..12].copy_from_slice(&0xbeefu32.to_be_bytes());
    core.handle_rtp(P, &again, t0 + 50 * MS).expect("rtx");
    let stats = core.take_stats();
    assert_eq!(
        (stats.rtx_duplicates_received, stats.rtp_unknown_ssrc),
        (1, 0)
    );
}
