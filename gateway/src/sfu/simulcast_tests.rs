//! Simulcast, header extensions and congestion control in the room core, on a virtual
//! clock: layers bound by RID, switches only at keyframes with continuous seq, timestamp
//! and picture ID, transport-wide feedback both ways, and bad input counted.

use std::time::{Duration, Instant};

use super::codec::vp8::Vp8Descriptor;
use super::rtcp::{self, RtcpPacket};
use super::rtp::RtpHeader;
use super::rtp_ext::{parse_extensions, ExtensionIds};
use super::twcc::{PacketStatus, TwccRecorder};
use super::*;
use crate::sdp::{Codec, ExtensionKind, MediaKind};

const P: MemberId = 1;
const S: MemberId = 2;
const OUT: u32 = 0xabc0;
const SENDER: u32 = 0x5e5e_5e5e;
const RIDS: [&str; 3] = ["q", "h", "f"];
const LAYER_SSRC: [u32; 3] = [0x100, 0x200, 0x300];
/// Payload sizes that rank the layers low, mid, high by bitrate.
const LAYER_BYTES: [usize; 3] = [200, 600, 1100];

const ID_ABS: u8 = 2;
const ID_TWCC: u8 = 3;
const ID_MID: u8 = 4;
const ID_RID: u8 = 10;

fn ids() -> ExtensionIds {
    ExtensionIds::new(&[
        (ID_ABS, ExtensionKind::AbsSendTime),
        (ID_TWCC, ExtensionKind::TransportWideCc),
        (ID_MID, ExtensionKind::Mid),
        (ID_RID, ExtensionKind::RtpStreamId),
    ])
    .expect("distinct ids")
}

fn vp8() -> Codec {
    Codec {
        payload_type: 96,
        name: "VP8".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: None,
        rtcp_fb: vec!["nack".into(), "nack pli".into(), "transport-cc".into()],
    }
}

/// Layer rates here are about 55, 150 and 270 kbit/s; a subscriber with feedback starts
/// with enough for the mid layer only.
const INITIAL_ESTIMATE: u64 = 250_000;

fn room(now: Instant) -> RoomCore {
    let mut core = RoomCore::new(ForwardConfig {
        sender_ssrc: SENDER,
        initial_estimate_bps: INITIAL_ESTIMATE,
        ..ForwardConfig::default()
    });
    core.add_publisher(
        P,
        vec![PublishedTrack {
            kind: MediaKind::Video,
            ssrc: None,
            codec: vp8(),
            mid: "0".into(),
            rids: RIDS.iter().map(|r| r.to_string()).collect(),
            rtx_payload_type: None,
            rtx_ssrc: None,
        }],
        now,
    );
    core.set_extensions(P, ids(), now);
    core.set_ready(P, now);
    core
}

fn subscribe(core: &mut RoomCore, with_twcc: bool, now: Instant) {
    core.add_subscriber(
        S,
        vec![SubscribedSlot {
            kind: MediaKind::Video,
            out_ssrc: OUT,
            codec: Codec {
                payload_type: 100,
                ..vp8()
            },
            mid: "0".into(),
            rtx: None,
        }],
        None,
        now,
    );
    if with_twcc {
        let sub_ids = ExtensionIds::new(&[(5, ExtensionKind::TransportWideCc)]).expect("one id");
        core.set_extensions(S, sub_ids, now);
    }
    core.set_ready(S, now);
}

/// One VP8 packet of `layer` with a 15-bit picture ID and TL0PICIDX; the first packet
/// of each frame carries the VP8 payload header (keyframe or not). RID and MID ride in
/// a one-byte extension block, with a transport-wide seq.
struct Sender {
    seq: [u16; 3],
    twcc: u16,
}

impl Sender {
    fn new() -> Self {
        Self {
            seq: [1000, 2000, 3000],
            twcc: 0,
        }
    }

    fn packet(&mut self, layer: usize, frame: u32, key: bool, with_rid: bool) -> Vec<u8> {
        let seq = self.seq[layer];
        self.seq[layer] = seq.wrapping_add(1);
        self.twcc = self.twcc.wrapping_add(1);
        // One packet per frame, so each carries the marker bit.
        let mut p = vec![0x90, 0x80 | 96];
        p.extend_from_slice(&seq.to_be_bytes());
        // Each layer has its own timestamp base, as Chrome's do.
        let ts = (layer as u32 * 1_000_000).wrapping_add(frame * 3000);
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&LAYER_SSRC[layer].to_be_bytes());
        let mut ext = vec![(ID_TWCC << 4) | 1];
        ext.extend_from_slice(&self.twcc.to_be_bytes());
        if with_rid {
            ext.push(ID_MID << 4);
            ext.push(b'0');
            ext.push(ID_RID << 4);
            ext.push(RIDS[layer].as_bytes()[0]);
        }
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&ext);
        // Picture IDs per layer start far apart, so continuity must come from rewriting.
        let pic = (layer as u32 * 10_000 + frame) as u16 & 0x7fff;
        let tl0 = (layer as u32 * 50 + frame) as u8;
        p.extend_from_slice(&[0x90, 0xc0, 0x80 | (pic >> 8) as u8, pic as u8, tl0]);
        p.push(if key { 0x00 } else { 0x01 });
        p.resize(p.len() + LAYER_BYTES[layer], 0xee);
        p
    }
}

/// All three layers send `frames` one-packet frames from `start`, one every 33 ms;
/// `key` says which (layer, frame) are keyframes. Returns the time after the last.
fn send_frames(
    core: &mut RoomCore,
    tx: &mut Sender,
    start: (u32, Instant),
    frames: u32,
    key: impl Fn(usize, u32) -> bool,
    out: &mut Vec<Output>,
) -> Instant {
    let (first, mut now) = start;
    for f in first..first + frames {
        for layer in 0..3 {
            let with_rid = f < 3;
            let pkt = tx.packet(layer, f, key(layer, f), with_rid);
            core.handle_rtp(P, &pkt, now).expect("valid packet");
        }
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        out.extend(std::iter::from_fn(|| core.poll_output()));
        now += Duration::from_millis(33);
    }
    now
}

#[derive(Debug)]
struct Forwarded {
    seq: u16,
    ts: u32,
    picture_id: u16,
    tl0: u8,
    layer: usize,
}

fn forwarded_to_s(outs: &[Output]) -> Vec<Forwarded> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtp { to, packet } if *to == S => Some(packet),
            _ => None,
        })
        .filter_map(|packet| {
            let h = RtpHeader::parse(packet).expect("valid RTP out");
            assert_eq!(h.ssrc(), OUT);
            assert_eq!(h.payload_type(), 100);
            let payload = h.payload();
            if payload.is_empty() {
                return None; // probe padding
            }
            let d = Vp8Descriptor::parse(payload).expect("descriptor kept");
            let size = payload.len() - d.payload_offset() - 1;
            let layer = LAYER_BYTES
                .iter()
                .position(|&b| b == size)
                .expect("known size");
            Some(Forwarded {
                seq: h.sequence_number(),
                ts: h.timestamp(),
                picture_id: d.picture_id().expect("picture id").value(),
                tl0: d.tl0_pic_idx().expect("tl0"),
                layer,
            })
        })
        .collect()
}

/// Headers of every RTP packet sent to S, media and padding, in send order.
fn rtp_headers_to_s(outs: &[Output]) -> Vec<RtpHeader<'_>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtp { to: S, packet } => Some(RtpHeader::parse(packet).expect("rtp")),
            _ => None,
        })
        .collect()
}

fn plis_for(outs: &[Output]) -> Vec<u32> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtcp { to, packet } if *to == P => Some(packet),
            _ => None,
        })
        .flat_map(|p| {
            rtcp::parse_compound(p)
                .flatten()
                .filter_map(|r| match r {
                    RtcpPacket::Pli(pli) => Some(pli.media_ssrc),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_continuous(seen: &[Forwarded]) {
    for w in seen.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "seq gap: {w:?}");
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) < 1 << 31,
            "ts went back: {w:?}"
        );
        assert!(w[1].ts != w[0].ts, "one packet per frame here: {w:?}");
        assert_eq!(
            w[1].picture_id,
            (w[0].picture_id + 1) & 0x7fff,
            "picture id gap: {w:?}"
        );
        assert_eq!(w[1].tl0, w[0].tl0.wrapping_add(1), "tl0 gap: {w:?}");
    }
}

#[test]
fn layers_switch_only_at_keyframes_and_the_stream_stays_continuous() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, false, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    // First frames are keyframes on every layer; later keyframes only when asked.
    let now = send_frames(&mut core, &mut tx, (0, t0), 30, |_, f| f == 0, &mut out);
    // Without feedback the viewer gets the top layer. It was chosen once all layers
    // had a measured rate; its keyframe was requested and nothing flowed before it.
    let plis = plis_for(&out);
    assert!(plis.contains(&LAYER_SSRC[2]), "{plis:x?}");
    assert!(
        forwarded_to_s(&out).is_empty(),
        "no keyframe of the target yet"
    );

    out.clear();
    let now = send_frames(
        &mut core,
        &mut tx,
        (30, now),
        20,
        |l, f| l == 2 && f == 35,
        &mut out,
    );
    let seen = forwarded_to_s(&out);
    assert_eq!(seen.len(), 15, "frames 35..50 of the high layer");
    assert!(seen.iter().all(|f| f.layer == 2));
    assert_continuous(&seen);

    // Pinned to low: the high layer keeps flowing until the low layer's keyframe.
    out.clear();
    assert!(core.set_layer_request(S, LayerRequest::Low, now));
    out.extend(std::iter::from_fn(|| core.poll_output()));
    assert_eq!(plis_for(&out), vec![LAYER_SSRC[0]]);
    let before = seen.last().map(|f| (f.seq, f.picture_id)).expect("frames");
    let now = send_frames(
        &mut core,
        &mut tx,
        (50, now),
        10,
        |l, f| l == 0 && f == 55,
        &mut out,
    );
    let seen = forwarded_to_s(&out);
    let layers: Vec<usize> = seen.iter().map(|f| f.layer).collect();
    assert_eq!(layers, [2, 2, 2, 2, 2, 0, 0, 0, 0, 0]);
    assert_eq!(seen[0].seq, before.0.wrapping_add(1));
    assert_eq!(seen[0].picture_id, before.1 + 1);
    assert_continuous(&seen);
    let stats = core.take_stats();
    assert_eq!(stats.layer_switches, 1, "the first start is not a switch");
    assert!(stats.switch_keyframe_requests >= 2);

    // Back to auto: no feedback means the top layer again, at its next keyframe.
    out.clear();
    assert!(core.set_layer_request(S, LayerRequest::Auto, now));
    send_frames(
        &mut core,
        &mut tx,
        (60, now),
        10,
        |l, f| l == 2 && f == 63,
        &mut out,
    );
    let seen = forwarded_to_s(&out);
    let layers: Vec<usize> = seen.iter().map(|f| f.layer).collect();
    // Frame 63 of the low layer arrives just before the high layer's keyframe of frame 63.
    assert_eq!(layers, [0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2]);
    assert_continuous(&seen);
    let views = core.slot_views(S, now + Duration::from_millis(400));
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].layer, Some("high"));
    assert_eq!(views[0].requested, LayerRequest::Auto);
    assert!(views[0].simulcast);
}

#[test]
fn a_viewer_with_an_estimate_starts_on_the_low_layer_even_before_a_layer_tick() {
    // The layers' rates are known (48, 144 and 264 kbit/s at 30 frames/s) before the viewer
    // joins; its session is set up at one instant, as the logic thread does it: slots
    // bound, extensions set, SRTP ready, with no layer tick in between.
    for (with_twcc, first) in [(true, 0), (false, 2)] {
        let t0 = Instant::now();
        let mut core = room(t0);
        let mut tx = Sender::new();
        let mut out = Vec::new();
        let now = send_frames(&mut core, &mut tx, (0, t0), 30, |_, f| f == 0, &mut out);
        subscribe(&mut core, with_twcc, now);
        out.clear();
        out.extend(std::iter::from_fn(|| core.poll_output()));
        // With transport-cc the viewer starts on the low layer, though its 250 kbit/s
        // initial estimate would carry the mid one (180 kbit/s with headroom); without
        // it, the viewer gets the top layer, as without simulcast.
        assert_eq!(
            plis_for(&out),
            vec![LAYER_SSRC[first]],
            "with transport-cc: {with_twcc}"
        );
        send_frames(
            &mut core,
            &mut tx,
            (30, now),
            5,
            |l, f| f == 31 && l == first,
            &mut out,
        );
        let seen = forwarded_to_s(&out);
        assert!(
            !seen.is_empty() && seen.iter().all(|f| f.layer == first),
            "{seen:?}"
        );
    }
}

#[test]
fn a_stopped_layer_hands_over_to_the_next_one_down() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, false, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    let now = send_frames(
        &mut core,
        &mut tx,
        (0, t0),
        30,
        |l, f| f == 0 || (l == 2 && f == 20),
        &mut out,
    );
    assert!(forwarded_to_s(&out).iter().all(|f| f.layer == 2));
    // The publisher's uplink shrinks: it stops its top layer. After the idle time the
    // mid layer is the best one left, and it takes over at its keyframe.
    out.clear();
    let mut now = now;
    for f in 30..120u32 {
        for layer in 0..2 {
            let key = layer == 1 && f == 100;
            let pkt = tx.packet(layer, f, key, false);
            core.handle_rtp(P, &pkt, now).expect("valid");
        }
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        out.extend(std::iter::from_fn(|| core.poll_output()));
        now += Duration::from_millis(33);
    }
    assert!(plis_for(&out).contains(&LAYER_SSRC[1]));
    let seen = forwarded_to_s(&out);
    assert_eq!(seen.len(), 20, "mid layer from frame 100");
    assert!(seen.iter().all(|f| f.layer == 1));
}

#[test]
fn transport_feedback_goes_to_the_publisher() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, false, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    send_frames(&mut core, &mut tx, (0, t0), 30, |_, f| f == 0, &mut out);
    let mut reported = 0;
    for o in &out {
        let Output::Rtcp { to: P, packet } = o else {
            continue;
        };
        for r in rtcp::parse_compound(packet).flatten() {
            if let RtcpPacket::TransportFeedback(fb) = r {
                assert_eq!(fb.sender_ssrc(), SENDER);
                for (_, status) in fb.packets() {
                    assert!(matches!(status, PacketStatus::Received { .. }));
                    reported += 1;
                }
            }
        }
    }
    // Every packet up to the last feedback is reported received, none twice.
    assert!((80..=90).contains(&reported), "{reported} of 90 packets");
    assert!(core.take_stats().twcc_feedback_sent >= 10);
}

#[test]
fn subscriber_feedback_drives_its_layer_down() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, true, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    let mut now = send_frames(
        &mut core,
        &mut tx,
        (0, t0),
        120,
        |_, f| f == 0 || f % 30 == 29,
        &mut out,
    );
    // A subscriber with feedback starts on the low layer, and moves up to what the
    // initial estimate carries, the mid layer but not the high one, once that has
    // lasted the upgrade hold: at the mid layer's keyframe of frame 119.
    let seen = forwarded_to_s(&out);
    let (low, up): (Vec<&Forwarded>, Vec<&Forwarded>) = seen.iter().partition(|f| f.layer == 0);
    assert!(!low.is_empty(), "{seen:?}");
    assert!(up.len() == 1 && up[0].layer == 1, "{seen:?}");
    // Its link then loses almost everything: the loss-based estimate falls, and the
    // slot moves to the low layer at the low layer's keyframe.
    let mut rx = TwccRecorder::new();
    let mut frame = 120;
    for _ in 0..8 {
        out.clear();
        now = send_frames(
            &mut core,
            &mut tx,
            (frame, now),
            30,
            |_, f| f % 30 == 29,
            &mut out,
        );
        frame += 30;
        let to_s = out
            .iter()
            .filter(|o| matches!(o, Output::Rtp { to: S, .. }))
            .count();
        let batch_start = now - Duration::from_millis(33 * 30);
        for (i, o) in out
            .iter()
            .filter(|o| matches!(o, Output::Rtp { to: S, .. }))
            .enumerate()
        {
            let Output::Rtp { packet, .. } = o else {
                continue;
            };
            let h = RtpHeader::parse(packet).expect("rtp");
            let sub_ids = ExtensionIds::new(&[(5, ExtensionKind::TransportWideCc)]).expect("id");
            let ext = parse_extensions(&h, &sub_ids).expect("ext");
            let seq = ext.transport_seq.expect("every packet to S is stamped");
            // One packet in five arrives.
            if seq.is_multiple_of(5) {
                let arrival = batch_start + Duration::from_millis(990) * i as u32 / to_s as u32;
                rx.on_packet(OUT, seq, arrival);
            }
        }
        let mut fb = Vec::with_capacity(1500);
        while rx.poll_feedback(now + Duration::from_millis(100), 0x5, &mut fb) {
            core.handle_rtcp(S, &fb, now).expect("valid feedback");
            fb.clear();
        }
    }
    let stats = core.take_stats();
    assert!(stats.twcc_feedback_received > 0);
    assert!(stats.estimates.count > 0);
    let seen = forwarded_to_s(&out);
    assert!(seen.iter().all(|f| f.layer == 0), "{seen:?}");
    let view = &core.slot_views(S, now)[0];
    assert_eq!(view.layer, Some("low"));
    assert!(view.estimate_bps.is_some_and(|e| e < 150_000), "{view:?}");
}

#[test]
fn unknown_rids_and_bad_extension_blocks_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, false, t0);
    let mut tx = Sender::new();
    // A RID the offer never announced.
    let mut pkt = tx.packet(0, 0, true, true);
    let rid_at = pkt
        .iter()
        .position(|&b| b == ID_RID << 4)
        .expect("rid element")
        + 1;
    pkt[rid_at] = b'z';
    pkt[8..12].copy_from_slice(&0x999u32.to_be_bytes());
    core.handle_rtp(P, &pkt, t0).expect("dropped by policy");
    // A truncated element: its length runs past the block.
    let mut bad = tx.packet(1, 0, true, true);
    bad[16] = (ID_MID << 4) | 0x0f;
    assert!(matches!(
        core.handle_rtp(P, &bad, t0),
        Err(ForwardError::BadExtension { .. })
    ));
    // An element ID out of the negotiated range still parses as unknown and is
    // stripped; a duplicate RID is refused.
    let mut dup = tx.packet(2, 0, true, true);
    let mid_at = dup
        .iter()
        .position(|&b| b == ID_MID << 4)
        .expect("mid element");
    dup[mid_at] = ID_RID << 4;
    assert!(matches!(
        core.handle_rtp(P, &dup, t0),
        Err(ForwardError::BadExtension { .. })
    ));
    let stats = core.take_stats();
    assert_eq!(stats.rtp_unknown_rid, 1);
    assert_eq!(stats.rtp_bad_extension, 2);
    assert_eq!(stats.rtp_forwarded, 0);
    // The session is unharmed: valid packets of every layer still bind and flow.
    let mut out = Vec::new();
    send_frames(
        &mut core,
        &mut tx,
        (1, t0),
        40,
        |l, f| l == 2 && f == 30,
        &mut out,
    );
    assert!(!forwarded_to_s(&out).is_empty());
}

#[test]
fn probe_padding_rides_the_viewers_sequence_space() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, true, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    // No feedback: the estimate stays at its start, enough for mid, not for high, so the
    // viewer is probed for the high layer once the first wait (3 s) is over.
    send_frames(
        &mut core,
        &mut tx,
        (0, t0),
        150,
        |_, f| f == 0 || f == 20,
        &mut out,
    );
    let to_s = rtp_headers_to_s(&out);
    let padding: Vec<&RtpHeader<'_>> = to_s.iter().filter(|h| h.payload().is_empty()).collect();
    assert!(padding.len() >= 5, "{} padding packets", padding.len());
    assert!(padding.iter().all(|h| h.has_padding() && h.ssrc() == OUT));
    let sub_ids = ExtensionIds::new(&[(5, ExtensionKind::TransportWideCc)]).expect("id");
    let mut transport = Vec::new();
    for w in to_s.windows(2) {
        assert_eq!(
            w[1].sequence_number(),
            w[0].sequence_number().wrapping_add(1),
            "media and padding share one gap-free sequence"
        );
    }
    for h in &to_s {
        let ext = parse_extensions(h, &sub_ids).expect("ext");
        transport.push(ext.transport_seq.expect("stamped"));
    }
    for w in transport.windows(2) {
        assert_eq!(
            w[1],
            w[0].wrapping_add(1),
            "transport-wide seqs are consecutive"
        );
    }
    assert_eq!(core.take_stats().probe_packets, padding.len() as u64);
    // A NACK for media sent before the padding cannot be mapped any more: a miss, never
    // the wrong packet under that seq.
    let first_pad = to_s
        .iter()
        .position(|h| h.payload().is_empty())
        .expect("padding");
    let before = to_s[first_pad - 1].sequence_number();
    let now = t0 + Duration::from_secs(6);
    let nack = rtcp::write_nack(0x5, OUT, &[before]).expect("one seq");
    core.handle_rtcp(S, &nack, now).expect("valid nack");
    assert!(std::iter::from_fn(|| core.poll_output()).all(|o| !matches!(o, Output::Rtp { .. })));
    let stats = core.take_stats();
    assert_eq!((stats.nack_misses, stats.retransmissions), (1, 0));
}

#[test]
fn a_warm_simulcast_room_with_feedback_forwards_without_allocating() {
    let t0 = Instant::now();
    let mut core = room(t0);
    subscribe(&mut core, true, t0);
    let mut tx = Sender::new();
    let mut rx = TwccRecorder::new();
    let sub_ids = ExtensionIds::new(&[(5, ExtensionKind::TransportWideCc)]).expect("id");
    let mut fb = Vec::with_capacity(1500);
    // Packets are built before the counted part; outputs are recycled as the logic
    // thread does once they are sent.
    let mut run = |core: &mut RoomCore, from: u32, frames: u32, start: Instant, count: bool| {
        let packets: Vec<Vec<u8>> = (from..from + frames)
            .flat_map(|f| (0..3).map(move |l| (l, f)))
            .map(|(l, f)| tx.packet(l, f, f % 60 == 0, f < 3))
            .collect();
        let before = super::alloc_count::allocations();
        let mut now = start;
        for (i, p) in packets.iter().enumerate() {
            core.handle_rtp(P, p, now).expect("valid");
            if i % 3 == 2 {
                now += Duration::from_millis(33);
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some(o) = core.poll_output() {
                if let Output::Rtp { to: S, packet } = &o {
                    if let Ok(h) = RtpHeader::parse(packet) {
                        if let Some(seq) = parse_extensions(&h, &sub_ids)
                            .ok()
                            .and_then(|e| e.transport_seq)
                        {
                            rx.on_packet(OUT, seq, now);
                        }
                    }
                }
                let buf = match o {
                    Output::Rtp { packet, .. } | Output::Rtcp { packet, .. } => packet,
                };
                core.recycle(buf);
            }
            fb.clear();
            if rx.poll_feedback(now, 0x5, &mut fb) {
                core.handle_rtcp(S, &fb, now).expect("feedback");
            }
        }
        let allocated = super::alloc_count::allocations() - before;
        if count {
            allocated
        } else {
            0
        }
    };
    // Warm up for 20 s (pools, every retransmission-buffer entry of each layer, layer
    // switches, probes), then count 5 s.
    run(&mut core, 0, 600, t0, false);
    let allocated = run(&mut core, 600, 150, t0 + Duration::from_secs(20), true);
    assert_eq!(
        allocated, 0,
        "allocations while forwarding a warm simulcast room"
    );
    assert!(core.take_stats().twcc_feedback_received > 0);
}

#[test]
fn with_rtx_probe_padding_rides_the_rtx_stream_and_media_seqs_stay_put() {
    let t0 = Instant::now();
    let mut core = room(t0);
    core.add_subscriber(
        S,
        vec![SubscribedSlot {
            kind: MediaKind::Video,
            out_ssrc: OUT,
            codec: Codec {
                payload_type: 100,
                ..vp8()
            },
            mid: "0".into(),
            rtx: Some((101, OUT + 1)),
        }],
        None,
        t0,
    );
    let sub_ids = ExtensionIds::new(&[(5, ExtensionKind::TransportWideCc)]).expect("id");
    core.set_extensions(S, sub_ids, t0);
    core.set_ready(S, t0);
    let mut tx = Sender::new();
    let mut out = Vec::new();
    // Frame by frame, to stop half a second after the first padding went out: the
    // NACK below names media from just before it, which the 1 s buffer still holds.
    let (mut now, mut first_pad_at) = (t0, None);
    for f in 0..150 {
        if first_pad_at.is_some_and(|at| now >= at + Duration::from_millis(500)) {
            break;
        }
        now = send_frames(
            &mut core,
            &mut tx,
            (f, now),
            1,
            |_, f| f == 0 || f == 20,
            &mut out,
        );
        if first_pad_at.is_none() && rtp_headers_to_s(&out).iter().any(|h| h.ssrc() == OUT + 1) {
            first_pad_at = Some(now);
        }
    }
    first_pad_at.expect("a probe");
    let to_s = rtp_headers_to_s(&out);
    let (padding, media): (Vec<&RtpHeader<'_>>, Vec<&RtpHeader<'_>>) =
        to_s.iter().partition(|h| h.ssrc() == OUT + 1);
    assert!(padding.len() >= 5, "{} padding packets", padding.len());
    for (i, h) in padding.iter().enumerate() {
        assert!(h.payload().is_empty() && h.has_padding());
        assert_eq!((h.payload_type(), h.sequence_number()), (101, i as u16));
    }
    for w in media.windows(2) {
        assert_eq!(
            w[1].sequence_number(),
            w[0].sequence_number().wrapping_add(1)
        );
    }
    // The media mapping never moved, so a NACK for media sent just before the padding
    // is still answered, on the RTX stream after the padding's seqs.
    let first_pad = to_s
        .iter()
        .position(|h| h.ssrc() == OUT + 1)
        .expect("padding");
    let early = to_s[first_pad - 1].sequence_number();
    let nack = rtcp::write_nack(0x5, OUT, &[early]).expect("nack");
    core.handle_rtcp(S, &nack, now).expect("nack");
    let repairs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    let repair = repairs
        .iter()
        .find_map(|o| match o {
            Output::Rtp { to: S, packet } => Some(RtpHeader::parse(packet).expect("rtp")),
            _ => None,
        })
        .expect("a repair");
    assert_eq!(repair.ssrc(), OUT + 1);
    assert_eq!(repair.sequence_number(), padding.len() as u16);
    assert_eq!(&repair.payload()[..2], &early.to_be_bytes());
}
