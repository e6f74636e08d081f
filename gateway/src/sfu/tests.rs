//! Behaviour tests for `RoomCore`: plain bytes in, plain bytes out, virtual clock.

use std::time::{Duration, Instant};

use super::alloc_count;
use super::rtcp::{self, FirEntry, Pli, RtcpPacket, SenderInfo};
use super::rtp::RtpHeader;
use super::*;
use crate::sdp::{Codec, MediaKind};

const A: MemberId = 1;
const B: MemberId = 2;
const S: MemberId = 10;
const S2: MemberId = 11;
const A_VIDEO: u32 = 0xa1;
const A_AUDIO: u32 = 0xa2;
const B_VIDEO: u32 = 0xb1;
const OUT: u32 = 0x1000;
const OUT2: u32 = 0x2000;
const OUT_AUDIO: u32 = 0x1001;
const SENDER: u32 = 0x5e5e_5e5e;
const MS: Duration = Duration::from_millis(1);

fn cfg() -> ForwardConfig {
    ForwardConfig {
        sender_ssrc: SENDER,
        ..ForwardConfig::default()
    }
}

fn vp8(pt: u8) -> Codec {
    Codec {
        payload_type: pt,
        name: "VP8".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: None,
        rtcp_fb: vec!["nack".into(), "nack pli".into(), "ccm fir".into()],
    }
}

fn opus(pt: u8) -> Codec {
    Codec {
        payload_type: pt,
        name: "opus".into(),
        clock_rate: 48_000,
        channels: Some(2),
        fmtp: Some("minptime=10;useinbandfec=1".into()),
        rtcp_fb: vec![],
    }
}

fn video(ssrc: Option<u32>) -> PublishedTrack {
    PublishedTrack {
        kind: MediaKind::Video,
        ssrc,
        codec: vp8(96),
        mid: "1".into(),
        rids: Vec::new(),
        rtx_payload_type: None,
        rtx_ssrc: None,
    }
}

fn audio(ssrc: Option<u32>) -> PublishedTrack {
    PublishedTrack {
        kind: MediaKind::Audio,
        ssrc,
        codec: opus(111),
        mid: "0".into(),
        rids: Vec::new(),
        rtx_payload_type: None,
        rtx_ssrc: None,
    }
}

fn video_slot(out_ssrc: u32, pt: u8) -> SubscribedSlot {
    SubscribedSlot {
        kind: MediaKind::Video,
        out_ssrc,
        codec: vp8(pt),
        mid: "1".into(),
        rtx: None,
    }
}

fn audio_slot(out_ssrc: u32, pt: u8) -> SubscribedSlot {
    SubscribedSlot {
        kind: MediaKind::Audio,
        out_ssrc,
        codec: opus(pt),
        mid: "0".into(),
        rtx: None,
    }
}

/// An RTP packet whose payload encodes its seq, so tests can tell packets apart after
/// their headers were rewritten.
fn rtp(ssrc: u32, pt: u8, seq: u16, ts: u32) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xab, (seq >> 8) as u8, seq as u8]);
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

fn drain(core: &mut RoomCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn rtp_to(outs: &[Output], member: MemberId) -> Vec<Seen> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtp { to, packet } if *to == member => {
                let h = RtpHeader::parse(packet).expect("we emit valid RTP");
                Some(Seen {
                    ssrc: h.ssrc(),
                    pt: h.payload_type(),
                    seq: h.sequence_number(),
                    ts: h.timestamp(),
                    marker: h.marker(),
                    payload: h.payload().to_vec(),
                })
            }
            _ => None,
        })
        .collect()
}

fn rtcp_to(outs: &[Output], member: MemberId) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtcp { to, packet } if *to == member => Some(packet.clone()),
            _ => None,
        })
        .collect()
}

fn plis_to(outs: &[Output], member: MemberId) -> Vec<Pli> {
    let mut plis = Vec::new();
    for packet in rtcp_to(outs, member) {
        for p in rtcp::parse_compound(&packet) {
            if let RtcpPacket::Pli(pli) = p.expect("we emit valid RTCP") {
                plis.push(pli);
            }
        }
    }
    plis
}

fn nack(media: u32, lost: &[u16]) -> Vec<u8> {
    rtcp::write_nack(0x77, media, lost).expect("non-empty")
}

/// A then B publish one VP8 track each (both ready); S subscribes with late binding.
fn two_publishers(t0: Instant) -> RoomCore {
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.set_ready(A, t0);
    core.add_publisher(B, vec![video(Some(B_VIDEO))], t0);
    core.set_ready(B, t0);
    core.add_subscriber(S, vec![video_slot(OUT, 100)], None, t0);
    core.set_ready(S, t0);
    core
}

/// `two_publishers`, then A sends seqs 100..=102 (ts 9000 + 3000 i, 33 ms apart), then A
/// leaves 100 ms after its last packet and S rebinds to B. Returns the time A left.
fn switch_to_b(core: &mut RoomCore, t0: Instant) -> Instant {
    for i in 0..3u16 {
        let p = rtp(A_VIDEO, 96, 100 + i, 9000 + 3000 * u32::from(i));
        core.handle_rtp(A, &p, t0 + MS * 33 * u32::from(i))
            .expect("valid");
    }
    let left = t0 + MS * 166;
    core.remove_member(A, left);
    left
}

#[test]
fn fan_out_rewrites_ssrc_and_payload_type() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.set_ready(A, t0);
    let subs = [(20, 96u8), (21, 100), (22, 120)];
    for (id, pt) in subs {
        core.add_subscriber(id, vec![video_slot(0x100 + id, pt)], None, t0);
        core.set_ready(id, t0);
    }
    drain(&mut core);
    let mut p = rtp(A_VIDEO, 96, 5, 1000);
    p[1] |= 0x80; // marker
    core.handle_rtp(A, &p, t0).expect("valid");
    let outs = drain(&mut core);
    assert_eq!(outs.len(), subs.len());
    for (id, pt) in subs {
        let seen = rtp_to(&outs, id);
        assert_eq!(
            seen,
            vec![Seen {
                ssrc: 0x100 + id,
                pt,
                seq: 5,
                ts: 1000,
                marker: true,
                payload: vec![0xab, 0, 5],
            }],
            "subscriber {id}"
        );
    }
    let stats = core.take_stats();
    assert_eq!((stats.rtp_in, stats.rtp_forwarded), (1, 3));
    // Only the first subscriber's keyframe request went out; the others were within
    // the PLI interval.
    assert_eq!((stats.plis_sent, stats.plis_rate_limited), (1, 2));
    assert_eq!(core.take_stats(), ForwardStats::default(), "take resets");
}

#[test]
fn unready_subscriber_gets_nothing() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], None, t0);
    core.add_subscriber(S2, vec![video_slot(OUT2, 96)], None, t0);
    core.set_ready(S, t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    let outs = drain(&mut core);
    assert_eq!(rtp_to(&outs, S).len(), 1);
    assert!(rtp_to(&outs, S2).is_empty());
    // NACKs and SRs do not reach it either.
    core.handle_rtcp(S2, &nack(OUT2, &[1]), t0).expect("valid");
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.take_stats().nack_misses, 1);

    core.set_ready(S2, t0 + MS * 600);
    let outs = drain(&mut core);
    assert_eq!(
        plis_to(&outs, A).len(),
        1,
        "ready subscriber asks for a keyframe"
    );
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 2, 3000), t0 + MS * 600)
        .expect("valid");
    let outs = drain(&mut core);
    // First binding: pure pass-through of seq and timestamp.
    assert_eq!(rtp_to(&outs, S2)[0].seq, 2);
    assert_eq!(rtp_to(&outs, S2)[0].ts, 3000);
}

#[test]
fn subscriber_ready_requests_keyframe_once() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO)), audio(Some(A_AUDIO))], t0);
    core.set_ready(A, t0);
    core.add_subscriber(
        S,
        vec![video_slot(OUT, 96), audio_slot(OUT_AUDIO, 111)],
        None,
        t0,
    );
    assert!(
        drain(&mut core).is_empty(),
        "no PLI before the subscriber can receive"
    );
    core.set_ready(S, t0);
    let outs = drain(&mut core);
    // Video only: audio has no keyframes.
    assert_eq!(
        plis_to(&outs, A),
        vec![Pli {
            sender_ssrc: SENDER,
            media_ssrc: A_VIDEO
        }]
    );
    assert_eq!(outs.len(), 1);
    core.set_ready(S, t0 + Duration::from_secs(5));
    assert!(drain(&mut core).is_empty(), "repeated set_ready is a no-op");
}

#[test]
fn rebind_continues_seq_and_timestamp() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    assert_eq!(core.slot_source(S, OUT), Some((A, Some(A_VIDEO))));
    let outs = drain(&mut core);
    assert_eq!(
        plis_to(&outs, A).len(),
        1,
        "earliest publisher asked for a keyframe"
    );

    let left = switch_to_b(&mut core, t0);
    let outs = drain(&mut core);
    let seen = rtp_to(&outs, S);
    assert_eq!(
        seen.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![100, 101, 102]
    );
    assert_eq!(seen[2].ts, 15000);
    assert_eq!(core.slot_source(S, OUT), Some((B, Some(B_VIDEO))));
    assert_eq!(
        plis_to(&outs, B),
        vec![Pli {
            sender_ssrc: SENDER,
            media_ssrc: B_VIDEO
        }],
        "rebinding asks the new source for a keyframe"
    );

    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5000, 777), left)
        .expect("valid");
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5001, 3777), left + MS * 33)
        .expect("valid");
    let seen = rtp_to(&drain(&mut core), S);
    // 100 ms since the last packet (seq 102 at t0+66ms) = 9000 ticks at 90 kHz.
    assert_eq!(
        seen.iter()
            .map(|s| (s.ssrc, s.pt, s.seq, s.ts))
            .collect::<Vec<_>>(),
        vec![(OUT, 100, 103, 24000), (OUT, 100, 104, 27000)]
    );
    assert_eq!(seen[0].payload, vec![0xab, 0x13, 0x88], "B's packet 5000");
}

#[test]
fn rebind_step_is_at_least_one_frame() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 7, 50_000), t0)
        .expect("valid");
    core.remove_member(A, t0);
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 65535, 1), t0)
        .expect("valid");
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 0, 3001), t0)
        .expect("valid");
    let seen = rtp_to(&drain(&mut core), S);
    assert_eq!(
        seen.iter().map(|s| (s.seq, s.ts)).collect::<Vec<_>>(),
        vec![(7, 50_000), (8, 53_000), (9, 56_000)]
    );
}

#[test]
fn late_packet_from_before_rebind_is_dropped() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    let left = switch_to_b(&mut core, t0);
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5000, 777), left)
        .expect("valid");
    // 4999 would map to 102, which S already got from A.
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 4999, 777), left)
        .expect("valid");
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5001, 777), left)
        .expect("valid");
    let seen = rtp_to(&drain(&mut core), S);
    assert_eq!(
        seen.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![100, 101, 102, 103, 104]
    );
    assert_eq!(core.take_stats().rtp_dropped_before_bind, 1);
}

#[test]
fn rebound_slot_keeps_forwarding_across_seq_laps() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    let left = switch_to_b(&mut core, t0);
    drain(&mut core);
    // More than a full 16-bit lap through a slot with a non-zero seq offset.
    let mut expected = 103u16;
    for i in 0..70_000u32 {
        let seq = 5000u16.wrapping_add(i as u16);
        core.handle_rtp(B, &rtp(B_VIDEO, 96, seq, i * 3000), left)
            .expect("valid");
        let Some(Output::Rtp { to: S, packet }) = core.poll_output() else {
            panic!("packet {i} not forwarded");
        };
        let h = RtpHeader::parse(&packet).expect("valid");
        assert_eq!(h.sequence_number(), expected, "packet {i}");
        expected = expected.wrapping_add(1);
    }
    assert_eq!(core.take_stats().rtp_dropped_before_bind, 0);
}

#[test]
fn nack_answered_in_each_subscribers_seq_space() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    core.add_subscriber(S2, vec![video_slot(OUT2, 120)], Some(B), t0);
    core.set_ready(S2, t0);
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5000, 777), t0)
        .expect("valid");
    let left = switch_to_b(&mut core, t0);
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5001, 3777), left)
        .expect("valid");
    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5002, 6777), left)
        .expect("valid");
    let outs = drain(&mut core);
    let s1: Vec<_> = rtp_to(&outs, S).iter().map(|s| (s.seq, s.ts)).collect();
    assert_eq!(&s1[3..], &[(103, 24000), (104, 27000)]);
    assert_eq!(
        rtp_to(&outs, S2).iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![5000, 5001, 5002]
    );
    core.take_stats();

    // S lost its 104 (B's 5002).
    core.handle_rtcp(S, &nack(OUT, &[104]), left)
        .expect("valid");
    let outs = drain(&mut core);
    assert!(rtp_to(&outs, S2).is_empty());
    let resent = rtp_to(&outs, S);
    assert_eq!(resent.len(), 1);
    assert_eq!(
        (resent[0].ssrc, resent[0].pt, resent[0].seq, resent[0].ts),
        (OUT, 100, 104, 27000)
    );
    assert_eq!(resent[0].payload, vec![0xab, 0x13, 0x8a], "B's packet 5002");

    // S2 lost 5001: same source packet, S2's own rewriting.
    core.handle_rtcp(S2, &nack(OUT2, &[5001]), left)
        .expect("valid");
    let resent = rtp_to(&drain(&mut core), S2);
    assert_eq!(
        (resent[0].ssrc, resent[0].pt, resent[0].seq, resent[0].ts),
        (OUT2, 120, 5001, 3777)
    );

    // S's 102 came from A, which left; mapped into B's space it lands on 5000, which
    // S's binding never forwarded. 103 (B's 5001) is fine.
    core.handle_rtcp(S, &nack(OUT, &[102, 103]), left)
        .expect("valid");
    let resent = rtp_to(&drain(&mut core), S);
    assert_eq!(resent.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![103]);

    let stats = core.take_stats();
    assert_eq!(stats.nacks_received, 3);
    assert_eq!(stats.retransmissions, 3);
    assert_eq!(stats.nack_misses, 1);
}

#[test]
fn nack_for_evicted_or_unknown_seq_is_a_miss() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(ForwardConfig {
        rtx_max_packets: 8,
        ..cfg()
    });
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], None, t0);
    core.set_ready(S, t0);
    for seq in 0..20u16 {
        core.handle_rtp(A, &rtp(A_VIDEO, 96, seq, 0), t0)
            .expect("valid");
    }
    drain(&mut core);
    core.take_stats();
    core.handle_rtcp(S, &nack(OUT, &[0, 12, 19, 30]), t0)
        .expect("valid");
    let resent = rtp_to(&drain(&mut core), S);
    assert_eq!(
        resent.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![12, 19]
    );
    let stats = core.take_stats();
    assert_eq!((stats.retransmissions, stats.nack_misses), (2, 2));
    // A NACK for an SSRC that is not one of S's slots.
    core.handle_rtcp(S, &nack(0xdead, &[1]), t0).expect("valid");
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.take_stats().rtcp_unknown_ssrc, 1);
}

#[test]
fn pli_is_forwarded_with_publisher_ssrc_and_rate_limited() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 100)], None, t0);
    core.set_ready(S, t0);
    // A has not sent anything yet, so it cannot receive: nothing to send.
    assert!(drain(&mut core).is_empty());
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    drain(&mut core);
    core.take_stats();

    let pli = rtcp::write_pli(0x77, OUT);
    let t1 = t0 + Duration::from_secs(1);
    for i in 0..5u32 {
        core.handle_rtcp(S, &pli, t1 + MS * (10 * i))
            .expect("valid");
    }
    let outs = drain(&mut core);
    assert_eq!(
        plis_to(&outs, A),
        vec![Pli {
            sender_ssrc: SENDER,
            media_ssrc: A_VIDEO
        }]
    );
    assert!(
        rtcp_to(&outs, S).is_empty(),
        "nothing echoed to the subscriber"
    );
    let stats = core.take_stats();
    assert_eq!(
        (
            stats.plis_received,
            stats.plis_sent,
            stats.plis_rate_limited
        ),
        (5, 1, 4)
    );

    // After the interval, the next request goes through.
    core.handle_rtcp(S, &pli, t1 + MS * 500).expect("valid");
    assert_eq!(plis_to(&drain(&mut core), A).len(), 1);
    // A PLI for a stream S does not receive.
    core.handle_rtcp(S, &rtcp::write_pli(0x77, 0xdead), t1 + MS * 2000)
        .expect("valid");
    assert!(drain(&mut core).is_empty());
    let stats = core.take_stats();
    assert_eq!((stats.plis_sent, stats.rtcp_unknown_ssrc), (1, 1));
}

#[test]
fn fir_becomes_pli_or_fir_for_fir_only_publishers() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    let mut fir_codec = vp8(96);
    fir_codec.rtcp_fb = vec!["ccm fir".into()];
    core.add_publisher(
        B,
        vec![PublishedTrack {
            kind: MediaKind::Video,
            ssrc: Some(B_VIDEO),
            codec: fir_codec,
            mid: "1".into(),
            rids: Vec::new(),
            rtx_payload_type: None,
            rtx_ssrc: None,
        }],
        t0,
    );
    core.set_ready(A, t0);
    core.set_ready(B, t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], Some(A), t0);
    core.add_subscriber(S2, vec![video_slot(OUT2, 96)], Some(B), t0);
    let t1 = t0 + Duration::from_secs(1);
    let fir = |ssrc| rtcp::write_fir(0x77, &[FirEntry { ssrc, seq_nr: 9 }]);
    core.handle_rtcp(S, &fir(OUT), t1).expect("valid");
    core.handle_rtcp(S2, &fir(OUT2), t1).expect("valid");
    core.handle_rtcp(S2, &fir(OUT2), t1 + Duration::from_secs(1))
        .expect("valid");
    let outs = drain(&mut core);
    assert_eq!(
        plis_to(&outs, A),
        vec![Pli {
            sender_ssrc: SENDER,
            media_ssrc: A_VIDEO
        }]
    );
    let mut firs = Vec::new();
    for packet in rtcp_to(&outs, B) {
        for p in rtcp::parse_compound(&packet) {
            match p.expect("valid") {
                RtcpPacket::Fir(f) => {
                    assert_eq!(f.sender_ssrc(), SENDER);
                    firs.extend(f.entries());
                }
                other => panic!("expected FIR, got {other:?}"),
            }
        }
    }
    // Fresh command sequence numbers, so the publisher does not take the second as a repeat.
    assert_eq!(
        firs,
        vec![
            FirEntry {
                ssrc: B_VIDEO,
                seq_nr: 1
            },
            FirEntry {
                ssrc: B_VIDEO,
                seq_nr: 2
            }
        ]
    );
    let stats = core.take_stats();
    assert_eq!((stats.firs_received, stats.plis_sent), (3, 3));
}

#[test]
fn publisher_leaving_stops_everything_it_fed() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO)), audio(Some(A_AUDIO))], t0);
    core.add_subscriber(
        S,
        vec![video_slot(OUT, 96), audio_slot(OUT_AUDIO, 111)],
        None,
        t0,
    );
    core.set_ready(S, t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    core.handle_rtp(A, &rtp(A_AUDIO, 111, 1, 0), t0)
        .expect("valid");
    assert_eq!(rtp_to(&drain(&mut core), S).len(), 2);
    assert!(core.poll_timeout().is_some());

    core.remove_member(A, t0 + MS);
    assert_eq!(core.publisher_count(), 0);
    assert_eq!(core.poll_timeout(), None, "no publishers, no RR timer");
    assert_eq!(core.slot_source(S, OUT), None);
    core.take_stats();

    // A straggler from A, a NACK and a PLI for what A sent: nothing reaches anyone.
    let err = core
        .handle_rtp(A, &rtp(A_VIDEO, 96, 2, 0), t0 + MS)
        .unwrap_err();
    assert!(matches!(err, ForwardError::NotAPublisher { member: A }));
    core.handle_rtcp(S, &nack(OUT, &[1]), t0 + MS)
        .expect("valid");
    core.handle_rtcp(S, &rtcp::write_pli(0x77, OUT), t0 + MS)
        .expect("valid");
    core.handle_timeout(t0 + Duration::from_secs(5));
    assert!(drain(&mut core).is_empty());
    let stats = core.take_stats();
    assert_eq!(stats.unknown_member, 1);
    assert_eq!(stats.rtp_forwarded, 0);
    assert_eq!(stats.nack_misses, 1);
    assert_eq!(stats.plis_sent, 0);

    assert!(!core.is_empty());
    core.remove_member(S, t0 + MS);
    assert!(core.is_empty());
}

#[test]
fn subscriber_leaving_drops_its_state() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], None, t0);
    core.set_ready(S, t0);
    core.remove_member(S, t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    assert!(drain(&mut core).is_empty());
    assert!(matches!(
        core.handle_rtcp(S, &nack(OUT, &[1]), t0),
        Err(ForwardError::UnknownMember { member: S })
    ));
    assert_eq!(core.take_stats().rtp_forwarded, 0);
}

#[test]
fn late_binding_when_publisher_joins_after_subscriber() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_subscriber(
        S,
        vec![video_slot(OUT, 100), audio_slot(OUT_AUDIO, 109)],
        None,
        t0,
    );
    core.set_ready(S, t0);
    assert_eq!(core.poll_timeout(), None);
    assert!(drain(&mut core).is_empty());

    let t1 = t0 + Duration::from_secs(3);
    core.add_publisher(A, vec![audio(None), video(None)], t1);
    assert_eq!(core.poll_timeout(), Some(t1 + Duration::from_secs(1)));
    core.handle_rtp(A, &rtp(0x77, 96, 40, 0), t1)
        .expect("valid");
    core.handle_rtp(A, &rtp(0x78, 111, 41, 0), t1)
        .expect("valid");
    let seen = rtp_to(&drain(&mut core), S);
    assert_eq!(
        seen.iter()
            .map(|s| (s.ssrc, s.pt, s.seq))
            .collect::<Vec<_>>(),
        vec![(OUT, 100, 40), (OUT_AUDIO, 109, 41)]
    );
    assert_eq!(core.slot_source(S, OUT), Some((A, Some(0x77))));
}

#[test]
fn specific_publisher_subscription_waits_for_that_publisher() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], Some(B), t0);
    core.set_ready(S, t0);
    assert_eq!(core.slot_source(S, OUT), None);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    assert!(rtp_to(&drain(&mut core), S).is_empty());
    core.add_publisher(B, vec![video(Some(B_VIDEO))], t0);
    assert_eq!(core.slot_source(S, OUT), Some((B, Some(B_VIDEO))));
    core.remove_member(B, t0);
    assert_eq!(core.slot_source(S, OUT), None, "does not fall back to A");
}

#[test]
fn slots_of_one_subscriber_take_distinct_tracks() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    core.add_subscriber(
        S2,
        vec![video_slot(OUT, 96), video_slot(OUT2, 96)],
        None,
        t0,
    );
    assert_eq!(core.slot_source(S2, OUT), Some((A, Some(A_VIDEO))));
    assert_eq!(core.slot_source(S2, OUT2), Some((B, Some(B_VIDEO))));
    // S (one slot) is unaffected by S2's choices.
    assert_eq!(core.slot_source(S, OUT), Some((A, Some(A_VIDEO))));
}

#[test]
fn codec_mismatch_never_binds() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    let h264 = SubscribedSlot {
        kind: MediaKind::Video,
        out_ssrc: OUT,
        mid: "1".into(),
        rtx: None,
        codec: Codec {
            payload_type: 102,
            name: "H264".into(),
            clock_rate: 90_000,
            channels: None,
            fmtp: Some("packetization-mode=1".into()),
            rtcp_fb: vec![],
        },
    };
    core.add_subscriber(S, vec![h264], None, t0);
    core.set_ready(S, t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    assert!(rtp_to(&drain(&mut core), S).is_empty());
    assert_eq!(core.slot_source(S, OUT), None);
    let stats = core.take_stats();
    assert_eq!(stats.codec_mismatch, 1);
    assert_eq!(stats.rtp_forwarded, 0);
}

#[test]
fn ssrc_learned_from_payload_type() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(None), audio(None)], t0);
    core.add_subscriber(
        S,
        vec![video_slot(OUT, 96), audio_slot(OUT_AUDIO, 111)],
        None,
        t0,
    );
    core.set_ready(S, t0);
    let send = |core: &mut RoomCore, ssrc, pt, seq| {
        core.handle_rtp(A, &rtp(ssrc, pt, seq, 0), t0)
            .expect("valid");
    };
    send(&mut core, 0x55, 100, 1); // no track has PT 100
    send(&mut core, 0x55, 96, 2); // learns video = 0x55
    send(&mut core, 0x66, 96, 3); // video already learned: unknown
    send(&mut core, 0x55, 111, 4); // video SSRC with audio PT: mismatch
    send(&mut core, 0x66, 111, 5); // learns audio = 0x66
    let seen = rtp_to(&drain(&mut core), S);
    assert_eq!(
        seen.iter().map(|s| (s.ssrc, s.seq)).collect::<Vec<_>>(),
        vec![(OUT, 2), (OUT_AUDIO, 5)]
    );
    let stats = core.take_stats();
    assert_eq!(stats.rtp_unknown_ssrc, 2);
    assert_eq!(stats.rtp_payload_type_mismatch, 1);
    assert_eq!(stats.rtp_forwarded, 2);
}

#[test]
fn receiver_report_loss_wrap_and_lsr() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO)), audio(Some(A_AUDIO))], t0);
    assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    // Seqs across the wrap with 2 missing; timestamps advance exactly with arrival,
    // so jitter stays 0.
    for (i, seq) in [65533u16, 65534, 65535, 0, 1, 3, 4].into_iter().enumerate() {
        let n = i as u32 + u32::from(seq == 3 || seq == 4);
        core.handle_rtp(A, &rtp(A_VIDEO, 96, seq, n * 2970), t0 + MS * (33 * n))
            .expect("valid");
    }
    let sr = rtcp::write_sr(
        A_VIDEO,
        &SenderInfo {
            ntp_seconds: 0xeeee_1234,
            ntp_fraction: 0x5678_ffff,
            rtp_timestamp: 1,
            packet_count: 7,
            octet_count: 100,
        },
        &[],
    );
    core.handle_rtcp(A, &sr, t0 + MS * 500).expect("valid");
    core.handle_timeout(t0 + MS * 999);
    // Only the NACKs for the missing seq 2 (repeated, then given up), no report yet.
    let early = drain(&mut core);
    assert!(
        rtcp_to(&early, A).iter().all(|p| rtcp::parse_compound(p)
            .flatten()
            .all(|r| matches!(r, RtcpPacket::Nack(_)))),
        "not due yet"
    );

    core.handle_timeout(t0 + MS * 1000);
    let outs = drain(&mut core);
    let rrs = rtcp_to(&outs, A);
    assert_eq!(rrs.len(), 1);
    let RtcpPacket::ReceiverReport(rr) = rtcp::parse_compound(&rrs[0])
        .next()
        .expect("one packet")
        .expect("valid")
    else {
        panic!("expected RR");
    };
    assert_eq!(rr.sender_ssrc(), SENDER);
    let blocks: Vec<_> = rr.report_blocks().collect();
    // Audio received nothing, so only video is reported.
    assert_eq!(
        blocks,
        vec![rtcp::ReportBlock {
            ssrc: A_VIDEO,
            fraction_lost: 32, // 1 of 8 expected = 32/256
            cumulative_lost: 1,
            extended_highest_seq: 0x0001_0004,
            jitter: 0,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 32768, // 500 ms
        }]
    );
    assert_eq!(core.take_stats().rr_sent, 1);
    // The NACK for seq 2 is repeated once more and then given up; after that only the
    // RR timer is left.
    core.handle_timeout(t0 + MS * 1300);
    drain(&mut core);
    assert_eq!(core.take_stats().nack_gave_up, 1);
    assert_eq!(core.poll_timeout(), Some(t0 + MS * 2000));

    // Nothing new since: no report.
    core.handle_timeout(t0 + MS * 2000);
    assert!(drain(&mut core).is_empty());
    // New packets: a clean interval with cumulative loss unchanged.
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 5, 0), t0 + MS * 2500)
        .expect("valid");
    core.handle_timeout(t0 + MS * 3000);
    let rrs = rtcp_to(&drain(&mut core), A);
    let Some(Ok(RtcpPacket::ReceiverReport(rr))) = rtcp::parse_compound(&rrs[0]).next() else {
        panic!("expected RR");
    };
    let block = rr.report_blocks().next().expect("block");
    assert_eq!(
        (
            block.fraction_lost,
            block.cumulative_lost,
            block.extended_highest_seq
        ),
        (0, 1, 0x0001_0005)
    );
}

#[test]
fn sender_report_forwarded_rewritten() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    let left = switch_to_b(&mut core, t0);
    let sr = |ts| {
        rtcp::write_sr(
            B_VIDEO,
            &SenderInfo {
                ntp_seconds: 10,
                ntp_fraction: 20,
                rtp_timestamp: ts,
                packet_count: 30,
                octet_count: 40,
            },
            &[rtcp::ReportBlock {
                ssrc: 0x99,
                ..Default::default()
            }],
        )
    };
    // Before S got any packet from B, the timestamp mapping is unknown: not forwarded.
    core.handle_rtcp(B, &sr(1777), left).expect("valid");
    assert!(rtcp_to(&drain(&mut core), S).is_empty());

    core.handle_rtp(B, &rtp(B_VIDEO, 96, 5000, 777), left)
        .expect("valid");
    drain(&mut core);
    core.take_stats();
    core.handle_rtcp(B, &sr(1777), left).expect("valid");
    let packets = rtcp_to(&drain(&mut core), S);
    assert_eq!(packets.len(), 1);
    let RtcpPacket::SenderReport(fwd) = rtcp::parse_compound(&packets[0])
        .next()
        .expect("one")
        .expect("valid")
    else {
        panic!("expected SR");
    };
    assert_eq!(fwd.sender_ssrc(), OUT);
    // S saw B's ts 777 as 24000, so 1777 maps to 25000.
    let info = fwd.sender_info();
    assert_eq!(
        (info.ntp_seconds, info.ntp_fraction, info.rtp_timestamp),
        (10, 20, 25000)
    );
    assert_eq!(
        fwd.report_blocks().count(),
        0,
        "publisher's report blocks dropped"
    );
    assert_eq!(core.take_stats().sr_forwarded, 1);

    // An SR for an SSRC B does not own.
    let stray = rtcp::write_sr(0xdead, &SenderInfo::default(), &[]);
    core.handle_rtcp(B, &stray, left).expect("valid");
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.take_stats().rtcp_unknown_ssrc, 1);
}

#[test]
fn subscriber_reports_are_consumed() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    drain(&mut core);
    let mut compound = rtcp::write_rr(
        0x77,
        &[rtcp::ReportBlock {
            ssrc: OUT,
            ..Default::default()
        }],
    );
    compound.extend_from_slice(&[0x81, 202, 0, 3, 0, 0, 0, 0x77, 1, 2, b'a', b'b', 0, 0, 0, 0]);
    compound.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 0x77]);
    core.handle_rtcp(S, &compound, t0).expect("valid");
    assert!(drain(&mut core).is_empty());
    let stats = core.take_stats();
    assert_eq!((stats.rtcp_in, stats.rtcp_malformed), (1, 0));
}

#[test]
fn bad_input_is_counted_and_harmless() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], None, t0);
    core.set_ready(S, t0);
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 1, 0), t0)
        .expect("valid");
    drain(&mut core);
    core.take_stats();

    let mut bad_version = rtp(A_VIDEO, 96, 2, 0);
    bad_version[0] = 0x40;
    assert!(matches!(
        core.handle_rtp(A, &bad_version, t0),
        Err(ForwardError::MalformedRtp {
            member: A,
            source: rtp::RtpError::BadVersion { version: 1 }
        })
    ));
    assert!(core.handle_rtp(A, &[0x80, 96, 0], t0).is_err());
    core.handle_rtp(A, &rtp(0x999, 96, 2, 0), t0)
        .expect("policy drop is Ok");
    let err = core
        .handle_rtcp(S, &[0x81, 201, 0, 1, 0, 0, 0, 0], t0)
        .unwrap_err();
    assert!(err.to_string().contains("RR"), "{err}");
    assert!(matches!(
        core.handle_rtcp(99, &rtcp::write_pli(1, 2), t0),
        Err(ForwardError::UnknownMember { member: 99 })
    ));
    assert!(drain(&mut core).is_empty());

    // The stream continues untouched.
    core.handle_rtp(A, &rtp(A_VIDEO, 96, 2, 3000), t0)
        .expect("valid");
    let seen = rtp_to(&drain(&mut core), S);
    assert_eq!((seen[0].seq, seen[0].ts), (2, 3000));

    let stats = core.take_stats();
    assert_eq!(stats.rtp_in, 4);
    assert_eq!(stats.rtp_malformed, 2);
    assert_eq!(stats.rtp_unknown_ssrc, 1);
    assert_eq!(stats.rtcp_in, 2);
    assert_eq!(stats.rtcp_malformed, 1);
    assert_eq!(stats.unknown_member, 1);
    assert_eq!(stats.rtp_forwarded, 1);
}

#[test]
fn published_codecs_and_counts() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    assert!(core.is_empty());
    core.add_publisher(A, vec![video(Some(A_VIDEO)), audio(Some(A_AUDIO))], t0);
    core.add_publisher(B, vec![video(Some(B_VIDEO))], t0);
    assert_eq!(core.published_codecs(), vec![vp8(96), opus(111)]);
    assert_eq!(core.publisher_count(), 2);
    core.remove_member(A, t0);
    assert_eq!(core.published_codecs(), vec![vp8(96)]);
    assert_eq!(core.publisher_count(), 1);
}

/// xorshift64*: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

#[test]
fn random_and_truncated_input_never_panics() {
    let t0 = Instant::now();
    let mut core = two_publishers(t0);
    core.add_subscriber(S2, vec![video_slot(OUT2, 96)], Some(B), t0);
    core.set_ready(S2, t0);
    let mut seeds: Vec<Vec<u8>> = vec![
        rtp(A_VIDEO, 96, 1, 0),
        rtp(B_VIDEO, 96, 1, 0),
        rtcp::write_pli(1, OUT),
        rtcp::write_fir(
            1,
            &[FirEntry {
                ssrc: OUT2,
                seq_nr: 1,
            }],
        ),
        nack(OUT, &[0, 1, 2, 3, 40, 41]),
        rtcp::write_sr(
            B_VIDEO,
            &SenderInfo::default(),
            &[rtcp::ReportBlock::default()],
        ),
        rtcp::write_rr(1, &[rtcp::ReportBlock::default()]),
    ];
    // Padding + extension + 1 CSRC, all valid.
    let mut ext = rtp(A_VIDEO, 96, 2, 0);
    ext.truncate(12);
    ext[0] = 0xb1;
    ext.extend_from_slice(&[0, 0, 0, 7, 0xbe, 0xde, 0, 1, 0x10, 1, 0, 0, 9, 0, 2]);
    assert!(RtpHeader::parse(&ext).is_ok());
    seeds.push(ext);

    let members = [A, B, S, S2, 99];
    let mut noise = Noise(0x1234_5678_9abc_def1);
    let mut now = t0;
    let mut calls = (0u64, 0u64);
    for round in 0..20_000u32 {
        now += MS;
        let from = members[(noise.next() % members.len() as u64) as usize];
        let packet = match round % 3 {
            // Pure noise, sometimes with a plausible first byte.
            0 => {
                let len = (noise.next() % 64) as usize;
                let mut p: Vec<u8> = (0..len).map(|_| noise.byte()).collect();
                if let Some(first) = p.first_mut() {
                    *first = (*first & 0x3f) | 0x80;
                }
                p
            }
            // A valid packet truncated.
            1 => {
                let seed = &seeds[(noise.next() % seeds.len() as u64) as usize];
                seed[..(noise.next() as usize % (seed.len() + 1))].to_vec()
            }
            // A valid packet with a few bytes flipped.
            _ => {
                let mut p = seeds[(noise.next() % seeds.len() as u64) as usize].clone();
                for _ in 0..3 {
                    let i = noise.next() as usize % p.len();
                    p[i] = noise.byte();
                }
                p
            }
        };
        if noise.next() & 1 == 0 {
            calls.0 += 1;
            let _ = core.handle_rtp(from, &packet, now);
        } else {
            calls.1 += 1;
            let _ = core.handle_rtcp(from, &packet, now);
        }
        if round % 500 == 0 {
            core.handle_timeout(now);
        }
        drain(&mut core);
    }
    let stats = core.take_stats();
    assert_eq!((stats.rtp_in, stats.rtcp_in), calls);
    assert!(stats.rtp_malformed > 0 && stats.rtcp_malformed > 0);

    // The room still works: a new pair joins and media flows between them.
    core.add_publisher(3, vec![video(Some(0xc1))], now);
    core.add_subscriber(12, vec![video_slot(0x3000, 96)], Some(3), now);
    core.set_ready(12, now);
    core.handle_rtp(3, &rtp(0xc1, 96, 9, 0), now)
        .expect("valid");
    assert_eq!(rtp_to(&drain(&mut core), 12).len(), 1);
}

#[test]
fn nack_answers_are_capped_per_window() {
    let t0 = Instant::now();
    let mut core = RoomCore::new(cfg());
    core.add_publisher(A, vec![video(Some(A_VIDEO))], t0);
    core.set_ready(A, t0);
    core.add_subscriber(S, vec![video_slot(OUT, 96)], None, t0);
    core.set_ready(S, t0);
    for seq in 0..300u16 {
        core.handle_rtp(A, &rtp(A_VIDEO, 96, seq, u32::from(seq) * 3000), t0)
            .expect("valid");
    }
    drain(&mut core);
    core.take_stats();
    // One NACK naming all 300 packets, twice: the cap holds across NACKs in a window.
    let all: Vec<u16> = (0..300).collect();
    for _ in 0..2 {
        core.handle_rtcp(S, &nack(OUT, &all), t0 + MS)
            .expect("valid");
    }
    let resent = rtp_to(&drain(&mut core), S).len();
    assert_eq!(resent, 128, "retransmissions per 100 ms window");
    let stats = core.take_stats();
    assert_eq!(stats.retransmissions, 128);
    assert_eq!(stats.nack_misses, 600 - 128);
    // The next window gets a fresh budget.
    core.handle_rtcp(S, &nack(OUT, &[5, 6]), t0 + MS * 150)
        .expect("valid");
    assert_eq!(rtp_to(&drain(&mut core), S).len(), 2);
}

/// What one phase of [`warm_room_scenario`] allocated, by the path that did it (each
/// including the draining and recycling of the outputs it produced).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PathAllocations {
    rtp: u64,
    nack: u64,
    keyframe_requests: u64,
    sender_reports: u64,
    receiver_reports: u64,
}

/// Hands every queued output's buffer back, as the logic thread does after sending.
fn drain_recycling(core: &mut RoomCore, recycle: bool) {
    while let Some(o) = core.poll_output() {
        let (Output::Rtp { packet, .. } | Output::Rtcp { packet, .. }) = o;
        if recycle {
            core.recycle(packet);
        }
    }
}

/// Runs `f` and then drains the room, returning the allocations both made on this thread.
fn counted(core: &mut RoomCore, recycle: bool, f: impl FnOnce(&mut RoomCore)) -> u64 {
    let before = alloc_count::allocations();
    f(core);
    drain_recycling(core, recycle);
    alloc_count::allocations() - before
}

/// An RTP packet of `len` bytes written into `buf`, so building it allocates nothing.
fn rtp_in(buf: &mut [u8; 1500], ssrc: u32, pt: u8, seq: u16, ts: u32, len: usize) -> &[u8] {
    buf[..12].copy_from_slice(&[0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    &buf[..len]
}

fn rtcp_word(buf: &mut [u8; 64], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// One publisher (video + audio), 25 subscribers taking both; 1 ms per step on a virtual
/// clock. Per step: a video packet (200..1199 bytes, varying); every 4th step an audio
/// packet (60..199 bytes); every 50th a NACK for 9 recent packets from one subscriber;
/// every 100th a PLI, offset by 50 a FIR; every 200th an SR per track; every step a
/// timer check with RRs due every 50 ms. Returns the allocations of the last
/// `measured` steps, after `warmup` steps.
fn warm_room_scenario(
    warmup: u32,
    measured: u32,
    recycle: bool,
) -> (PathAllocations, ForwardStats) {
    const SUBS: u32 = 25;
    let t0 = Instant::now();
    let mut core = RoomCore::new(ForwardConfig {
        rr_interval: MS * 50,
        ..cfg()
    });
    core.add_publisher(A, vec![video(Some(A_VIDEO)), audio(Some(A_AUDIO))], t0);
    core.set_ready(A, t0);
    let subscribers = || (0..SUBS).map(|i| 100 + i);
    for id in subscribers() {
        core.add_subscriber(
            id,
            vec![
                video_slot(0x1_0000 + id, 100),
                audio_slot(0x2_0000 + id, 111),
            ],
            None,
            t0,
        );
        core.set_ready(id, t0);
    }
    drain_recycling(&mut core, recycle);

    let mut rtp_buf = [0u8; 1500];
    let mut rtcp_buf = [0u8; 64];
    let mut allocs = PathAllocations::default();
    for step in 0..warmup + measured {
        if step == warmup {
            allocs = PathAllocations::default();
            core.take_stats();
        }
        let now = t0 + MS * step;
        let seq = step as u16;
        let len = 200 + (step as usize * 389) % 1000;
        let p = rtp_in(&mut rtp_buf, A_VIDEO, 96, seq, 3000 * (step / 33), len);
        allocs.rtp += counted(&mut core, recycle, |c| {
            c.handle_rtp(A, p, now).expect("valid RTP");
        });
        if step % 4 == 0 {
            let len = 60 + (step as usize * 53) % 140;
            let p = rtp_in(
                &mut rtp_buf,
                A_AUDIO,
                111,
                (step / 4) as u16,
                960 * (step / 4),
                len,
            );
            allocs.rtp += counted(&mut core, recycle, |c| {
                c.handle_rtp(A, p, now).expect("valid RTP");
            });
        }
        let sub = 100 + (step / 50) % SUBS;
        if step % 50 == 49 {
            // Generic NACK: PID 20 packets back and every other one after it. Slots bound
            // before the first packet, so the subscriber's seqs equal the publisher's.
            rtcp_buf[..4].copy_from_slice(&[0x81, rtcp::PT_RTPFB, 0, 3]);
            rtcp_word(&mut rtcp_buf, 4, 0x77);
            rtcp_word(&mut rtcp_buf, 8, 0x1_0000 + sub);
            rtcp_word(
                &mut rtcp_buf,
                12,
                u32::from(seq.wrapping_sub(20)) << 16 | 0x5555,
            );
            let p = &rtcp_buf[..16];
            allocs.nack += counted(&mut core, recycle, |c| {
                c.handle_rtcp(sub, p, now).expect("valid NACK");
            });
        }
        if step % 100 == 10 {
            rtcp_buf[..4].copy_from_slice(&[0x81, rtcp::PT_PSFB, 0, 2]);
            rtcp_word(&mut rtcp_buf, 4, 0x77);
            rtcp_word(&mut rtcp_buf, 8, 0x1_0000 + sub);
            let p = &rtcp_buf[..12];
            allocs.keyframe_requests += counted(&mut core, recycle, |c| {
                c.handle_rtcp(sub, p, now).expect("valid PLI");
            });
        }
        if step % 100 == 60 {
            rtcp_buf[..4].copy_from_slice(&[0x84, rtcp::PT_PSFB, 0, 4]);
            rtcp_word(&mut rtcp_buf, 4, 0x77);
            rtcp_word(&mut rtcp_buf, 8, 0);
            rtcp_word(&mut rtcp_buf, 12, 0x1_0000 + sub);
            rtcp_word(&mut rtcp_buf, 16, step << 24);
            let p = &rtcp_buf[..20];
            allocs.keyframe_requests += counted(&mut core, recycle, |c| {
                c.handle_rtcp(sub, p, now).expect("valid FIR");
            });
        }
        if step % 200 == 100 {
            for ssrc in [A_VIDEO, A_AUDIO] {
                rtcp_buf[..4].copy_from_slice(&[0x80, rtcp::PT_SR, 0, 6]);
                for (i, v) in [ssrc, step, step << 16, 90 * step, step, 1000 * step]
                    .into_iter()
                    .enumerate()
                {
                    rtcp_word(&mut rtcp_buf, 4 + 4 * i, v);
                }
                let p = &rtcp_buf[..28];
                allocs.sender_reports += counted(&mut core, recycle, |c| {
                    c.handle_rtcp(A, p, now).expect("valid SR");
                });
            }
        }
        allocs.receiver_reports += counted(&mut core, recycle, |c| c.handle_timeout(now));
    }
    (allocs, core.take_stats())
}

#[test]
fn warm_room_forwards_answers_and_reports_without_allocating() {
    // Warm-up covers one lap of every retransmission ring: the audio track's 512 entries
    // fill at one packet per 4 steps, so first uses end after 2,048 steps.
    let (allocs, stats) = warm_room_scenario(2_400, 10_000, true);
    // Every path really ran in the measured phase.
    assert_eq!(stats.rtp_forwarded, 12_500 * 25);
    assert_eq!(stats.nacks_received, 200);
    assert_eq!(stats.retransmissions, 200 * 9);
    assert!(stats.plis_sent >= 20, "{stats:?}");
    assert_eq!(stats.sr_forwarded, 2 * 50 * 25);
    assert_eq!(stats.rr_sent, 200);
    assert_eq!(allocs, PathAllocations::default());
}

/// The counter sees the allocations the pool removes: without recycling, every copy
/// allocates again.
#[test]
fn without_recycling_every_copy_allocates() {
    let (allocs, stats) = warm_room_scenario(200, 1_000, false);
    assert!(allocs.rtp >= stats.rtp_forwarded, "{allocs:?} {stats:?}");
    assert!(allocs.nack >= stats.retransmissions, "{allocs:?} {stats:?}");
    assert!(allocs.sender_reports >= stats.sr_forwarded, "{allocs:?}");
    assert!(allocs.receiver_reports >= stats.rr_sent, "{allocs:?}");
}
