//! The media plane end to end with an independent WebRTC client (`support/webrtc.rs`):
//! WHIP/WHEP signalling, ICE, DTLS-SRTP and SFU forwarding against the real `roomgate`
//! binary over real UDP sockets, in both steering modes.
//!
//! Every wait is bounded; counter checks are exact deltas of `/api/status` (the media
//! counters are folded in about every 500 ms, hence `eventually`).
mod support;
#[path = "support/webrtc.rs"]
mod webrtc;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{eventually, sum_threads, Gateway};
use webrtc::{
    http_request, post_offer, publish, subscribe, Codec, Kind, Offer, Peer, PeerConfig, Role, Rtcp,
    RtpPacket, Stream,
};
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;

const THREADS: usize = 2;
/// Upper bound for packets to arrive / counters to fold in.
const WAIT: Duration = Duration::from_secs(5);
const CM: SrtpProtectionProfile = SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80;
const GCM: SrtpProtectionProfile = SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// eBPF steering when we may load the program, else the connected fallback. Tests that
/// are about one steering mode say so explicitly instead.
fn preferred_mode() -> &'static str {
    if is_root() {
        "ebpf"
    } else {
        "connected"
    }
}

fn start(steering: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut b = Gateway::builder(steering, THREADS).set("--public-ip", "127.0.0.1");
    for (k, v) in extra {
        b = b.set(k, *v);
    }
    let gw = b.start();
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    gw
}

fn base_url(gw: &Gateway) -> String {
    format!("http://{}", gw.http)
}

/// The last lines of the gateway's log, for assertion messages.
fn log_tail(gw: &Gateway) -> String {
    let s = gw.stderr();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Sum over threads of `media.<path>` (`a.b` for nested objects). Panics if the gateway
/// does not report the counter at all.
fn media(status: &Value, path: &str) -> u64 {
    let threads = status["threads"]
        .as_array()
        .expect("threads in /api/status");
    let mut total = 0;
    for t in threads {
        let mut v = &t["media"];
        for part in path.split('.') {
            v = &v[part];
        }
        total += v
            .as_u64()
            .unwrap_or_else(|| panic!("threads[].media.{path} missing in {status}"));
    }
    total
}

/// `media.<path>` reaches `before + delta` within WAIT and stays there for 700 ms (longer
/// than one fold interval), so overshoot is caught too.
fn assert_media_delta(gw: &Gateway, before: &Value, path: &str, delta: u64) {
    let want = media(before, path) + delta;
    let mut last = 0;
    let reached = eventually(WAIT, || {
        last = media(&gw.status(), path);
        last >= want
    });
    assert!(
        reached,
        "media.{path}: expected +{delta} (to {want}), got {last}\n{}",
        log_tail(gw)
    );
    std::thread::sleep(Duration::from_millis(700));
    let now = media(&gw.status(), path);
    assert_eq!(
        now,
        want,
        "media.{path}: expected exactly +{delta}, got +{}\n{}",
        now - media(before, path),
        log_tail(gw)
    );
}

/// `/api/rooms/{room}` participants, or None for 404.
fn participants(gw: &Gateway, room: &str) -> Option<Vec<Value>> {
    let (code, v) = gw.get(&format!("/api/rooms/{room}"));
    match code {
        404 => None,
        200 => Some(v["participants"].as_array().cloned().unwrap_or_default()),
        other => panic!("GET /api/rooms/{room}: {other} {v}"),
    }
}

fn listed(gw: &Gateway, room: &str, participant: &str) -> Option<Value> {
    participants(gw, room)?
        .into_iter()
        .find(|p| p["participant"].as_str() == Some(participant))
}

/// Wait until every peer shows `dtls_state: connected` in `/api/rooms/{room}`.
fn wait_connected(gw: &Gateway, room: &str, peers: &[&Peer]) {
    let mut last = Value::Null;
    let ok = eventually(WAIT, || {
        let (_, v) = gw.get(&format!("/api/rooms/{room}"));
        last = v.clone();
        peers.iter().all(|p| {
            v["participants"].as_array().is_some_and(|ps| {
                ps.iter().any(|x| {
                    x["participant"].as_str() == Some(p.participant.as_str())
                        && x["dtls_state"] == "connected"
                })
            })
        })
    });
    assert!(
        ok,
        "not all DTLS-connected in {room}: {last}\n{}",
        log_tail(gw)
    );
}

/// Send `n` video packets (3 per frame) and every 3rd an audio packet; returns what was
/// sent per kind.
fn send_media(
    publisher: &Peer,
    video: &mut Stream,
    audio: &mut Stream,
    n: usize,
) -> HashMap<Kind, Vec<RtpPacket>> {
    let mut sent: HashMap<Kind, Vec<RtpPacket>> = HashMap::new();
    for i in 0..n {
        let v = video.next(1000, 3);
        publisher.send_rtp(&v);
        sent.entry(Kind::Video).or_default().push(v);
        if i % 3 == 0 {
            let a = audio.next(160, 1);
            publisher.send_rtp(&a);
            sent.entry(Kind::Audio).or_default().push(a);
        }
    }
    sent
}

fn total(sent: &HashMap<Kind, Vec<RtpPacket>>) -> usize {
    sent.values().map(Vec::len).sum()
}

/// The subscriber receives exactly `sent` (per kind, in order): its own SSRC and PT from
/// the answer/offer, seq/ts/marker/payload of the publisher's packets.
fn assert_received(who: &str, sub: &Peer, sent: &HashMap<Kind, Vec<RtpPacket>>) {
    let want = total(sent);
    let got = sub.recv_rtp_n(want, WAIT);
    if got.len() != want {
        let seen: Vec<(u32, u16)> = got.iter().map(|r| (r.packet.ssrc, r.packet.seq)).collect();
        let sent: Vec<(Kind, u16)> = sent
            .iter()
            .flat_map(|(k, ps)| ps.iter().map(move |p| (*k, p.seq)))
            .collect();
        panic!(
            "{who}: received {} of {want} packets\n  sent {sent:?}\n  got (ssrc, seq) {seen:?}\n  client counters: srtp failures {}, before keys {}",
            got.len(),
            sub.counters().srtp_failures.load(Ordering::Relaxed),
            sub.counters().before_keys.load(Ordering::Relaxed),
        );
    }
    for (kind, packets) in sent {
        let ssrc = sub
            .answer
            .ssrc(*kind)
            .unwrap_or_else(|| panic!("{who}: the answer has no a=ssrc for {kind:?}"));
        let pt = sub.offered_pt(*kind);
        let mine: Vec<&RtpPacket> = got
            .iter()
            .map(|r| &r.packet)
            .filter(|p| p.ssrc == ssrc)
            .collect();
        assert_eq!(
            mine.len(),
            packets.len(),
            "{who}: {kind:?} packets on SSRC {ssrc}"
        );
        for (s, r) in packets.iter().zip(mine) {
            assert_eq!(r.pt, pt, "{who}: {kind:?} PT rewritten to the subscriber's");
            assert_eq!(
                (r.seq, r.ts, r.marker),
                (s.seq, s.ts, s.marker),
                "{who}: {kind:?} seq/ts/marker pass through"
            );
            assert_eq!(r.payload, s.payload, "{who}: {kind:?} payload intact");
        }
    }
}

fn assert_nothing(who: &str, sub: &Peer, window: Duration) {
    let got = sub.collect_rtp(window);
    assert!(
        got.is_empty(),
        "{who} must receive nothing, got {} packets (first seq {})",
        got.len(),
        got[0].packet.seq
    );
}

// ---------------------------------------------------------------------------------------
// 1. Forwarding
// ---------------------------------------------------------------------------------------

/// A publisher and two subscribers: one WHEP'd before the publisher existed (late binding,
/// AES-CM), one bound explicitly with `?publisher=` and other payload types (VP8 as 100,
/// Opus as 109: PT rewriting). The publisher uses AEAD-GCM.
fn forwarding(steering: &str) {
    let gw = start(steering, &[]);
    let base = base_url(&gw);
    let room = "fwd-room";
    let early = subscribe(&base, room, None, PeerConfig::subscriber().only_profile(CM));
    let publisher = publish(&base, room, PeerConfig::publisher().only_profile(GCM));
    let mut cfg = PeerConfig::subscriber();
    cfg.offer.video = Some(vec![Codec::vp8(100)]);
    cfg.offer.audio = Some(vec![Codec::opus(109)]);
    let bound = subscribe(&base, room, Some(&publisher.participant), cfg);

    assert_eq!(
        publisher.dtls_profile, GCM,
        "the publisher offered only AEAD-AES-128-GCM"
    );
    assert_eq!(
        early.dtls_profile, CM,
        "the subscriber offered only AES-CM-HMAC-SHA1-80"
    );
    for p in [&publisher, &early, &bound] {
        assert!(p.answer.ice_lite, "answer is ICE-lite:\n{}", p.answer.raw);
        assert_eq!(p.answer.setup, "passive", "gateway is the DTLS server");
        assert!(
            p.answer.ice_ufrag.starts_with("fwd+room"),
            "server ufrag carries the room part: {}",
            p.answer.ice_ufrag
        );
        assert!(p.answer.ice_ufrag.ends_with(&p.participant));
    }
    assert_eq!(
        bound.answer.pt(Kind::Video),
        Some(100),
        "answer keeps our PT"
    );
    assert_eq!(
        bound.answer.pt(Kind::Audio),
        Some(109),
        "answer keeps our PT"
    );
    assert_ne!(
        early.answer.ssrc(Kind::Video),
        bound.answer.ssrc(Kind::Video),
        "each subscriber gets its own SSRC"
    );
    wait_connected(&gw, room, &[&publisher, &early, &bound]);
    let (_, room_info) = gw.get(&format!("/api/rooms/{room}"));
    let roles: HashMap<String, String> = room_info["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| {
            (
                p["participant"].as_str().unwrap_or_default().to_owned(),
                p["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(roles[&publisher.participant], "publisher", "{room_info}");
    assert_eq!(roles[&early.participant], "subscriber", "{room_info}");
    assert_eq!(roles[&bound.participant], "subscriber", "{room_info}");

    let before = gw.status();
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    let sent = send_media(&publisher, &mut video, &mut audio, 60);
    let n = total(&sent) as u64;
    assert_received("late-bound subscriber", &early, &sent);
    assert_received("explicitly bound subscriber", &bound, &sent);
    assert_media_delta(&gw, &before, "rtp_received", n);
    assert_media_delta(&gw, &before, "rtp_forwarded", 2 * n);
    let after = gw.status();
    assert_eq!(
        media(&after, "rtp_unknown_ssrc") + media(&after, "codec_mismatch"),
        0,
        "{after}"
    );
    if steering == "ebpf" {
        assert_eq!(
            sum_threads(&after, "handoffs"),
            0,
            "eBPF mode never hands off"
        );
        assert_eq!(sum_threads(&after, "misdelivered"), 0, "{after}");
    } else {
        assert!(
            sum_threads(&after, "handoffs") <= 3,
            "at most one handoff per client: {after}"
        );
    }
    assert_eq!(
        publisher.counters().srtp_failures.load(Ordering::Relaxed),
        0
    );
    assert_eq!(early.counters().srtp_failures.load(Ordering::Relaxed), 0);
    assert_eq!(bound.counters().srtp_failures.load(Ordering::Relaxed), 0);
}

#[test]
fn forwarding_ebpf() {
    if !support::require_root() {
        return;
    }
    forwarding("ebpf");
}

#[test]
fn forwarding_connected() {
    forwarding("connected");
}

// ---------------------------------------------------------------------------------------
// 2. Feedback: PLI, FIR, NACK, RR
// ---------------------------------------------------------------------------------------

fn plis_for(rtcp: &[Rtcp], media_ssrc: u32) -> usize {
    rtcp.iter()
        .filter(|p| matches!(p, Rtcp::Pli { media, .. } if *media == media_ssrc))
        .count()
}

#[test]
fn feedback_pli_fir_nack_and_receiver_reports() {
    let gw = start(preferred_mode(), &[]);
    let base = base_url(&gw);
    let room = "feedback";
    let publisher = publish(&base, room, PeerConfig::publisher());
    let sub = subscribe(&base, room, None, PeerConfig::subscriber());
    wait_connected(&gw, room, &[&publisher, &sub]);
    let pub_video = publisher.ssrc(Kind::Video);
    let sub_video = sub.answer.ssrc(Kind::Video).expect("a=ssrc for video");
    let mut all_rtcp = Vec::new();

    // Media first, so the gateway has packets to retransmit and to report on.
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    let sent = send_media(&publisher, &mut video, &mut audio, 30);
    assert_received("subscriber", &sub, &sent);

    // A new subscriber makes the gateway ask its publisher for a key frame.
    let rtcp = publisher.collect_rtcp(Duration::from_millis(1200));
    assert!(
        plis_for(&rtcp, pub_video) >= 1,
        "joining subscriber -> PLI for {pub_video} at the publisher; got {rtcp:?}"
    );
    all_rtcp.extend(rtcp);

    // One PLI from the subscriber, about the SSRC it receives.
    let before = gw.status();
    sub.send_pli(sub_video);
    let rtcp = publisher.collect_rtcp(Duration::from_millis(600));
    assert_eq!(
        plis_for(&rtcp, pub_video),
        1,
        "one PLI reaches the publisher with its SSRC; got {rtcp:?}"
    );
    all_rtcp.extend(rtcp);
    assert_media_delta(&gw, &before, "plis_received", 1);

    // A burst of 10 within 100 ms: rate-limited to at most one per 500 ms.
    let before = gw.status();
    let t = Instant::now();
    for _ in 0..10 {
        sub.send_pli(sub_video);
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "burst took {:?}",
        t.elapsed()
    );
    let rtcp = publisher.collect_rtcp(Duration::from_millis(800));
    let n = plis_for(&rtcp, pub_video);
    assert!(
        (1..=2).contains(&n),
        "burst of 10 PLIs -> {n} at the publisher"
    );
    all_rtcp.extend(rtcp);
    assert_media_delta(&gw, &before, "plis_received", 10);
    let limited = media(&gw.status(), "plis_rate_limited") - media(&before, "plis_rate_limited");
    assert!(
        limited >= 8,
        "plis_rate_limited grew by {limited}, expected >= 8"
    );

    // FIR is answered with a PLI as well.
    std::thread::sleep(Duration::from_millis(200));
    let before = gw.status();
    sub.send_fir(sub_video, 1);
    let rtcp = publisher.collect_rtcp(Duration::from_millis(600));
    assert_eq!(plis_for(&rtcp, pub_video), 1, "FIR -> PLI; got {rtcp:?}");
    all_rtcp.extend(rtcp);
    assert_media_delta(&gw, &before, "firs_received", 1);

    // The first media is well over a second old now: past the retransmission buffer's
    // time window, a NACK for it is a miss, not a late repair.
    let before = gw.status();
    sub.send_nack(sub_video, &[sent[&Kind::Video][7].seq]);
    assert_nothing(
        "subscriber after a NACK for a packet older than the buffer's window",
        &sub,
        Duration::from_millis(300),
    );
    assert_media_delta(&gw, &before, "nack_misses", 1);
    assert_media_delta(&gw, &before, "retransmissions", 0);

    // NACK for a packet the gateway just forwarded: the same packet again.
    let sent = send_media(&publisher, &mut video, &mut audio, 10);
    assert_received("subscriber", &sub, &sent);
    let before = gw.status();
    let wanted = &sent[&Kind::Video][7];
    sub.send_nack(sub_video, &[wanted.seq]);
    let again = sub
        .recv_rtp(Duration::from_secs(2))
        .expect("retransmission after NACK")
        .packet;
    assert_eq!(
        (again.ssrc, again.pt, again.seq, again.ts),
        (
            sub_video,
            sub.offered_pt(Kind::Video),
            wanted.seq,
            wanted.ts
        ),
        "retransmitted with the subscriber's SSRC/PT and the original seq/ts"
    );
    assert_eq!(
        again.payload, wanted.payload,
        "retransmitted payload intact"
    );
    assert_media_delta(&gw, &before, "nacks_received", 1);
    assert_media_delta(&gw, &before, "retransmissions", 1);
    assert_media_delta(&gw, &before, "nack_misses", 0);

    // NACK for a sequence number never sent: a miss, nothing sent.
    let before = gw.status();
    sub.send_nack(sub_video, &[video.seq.wrapping_add(1000)]);
    assert_nothing(
        "subscriber after a NACK for an unknown seq",
        &sub,
        Duration::from_millis(500),
    );
    assert_media_delta(&gw, &before, "nack_misses", 1);
    assert_media_delta(&gw, &before, "retransmissions", 0);

    // A sender report reaches the subscriber about the SSRC it receives on, with the
    // publisher's NTP/RTP mapping (timestamps pass through for the first binding).
    let before = gw.status();
    let ntp = 0xe8a1_b2c3_8000_0000u64;
    publisher.send_rtcp(&webrtc::rtcp::sr(pub_video, ntp, video.ts, 39, 39_000));
    let srs: Vec<Rtcp> = sub
        .collect_rtcp(Duration::from_millis(500))
        .into_iter()
        .filter(|p| matches!(p, Rtcp::SenderReport { .. }))
        .collect();
    assert!(
        matches!(
            srs.as_slice(),
            [Rtcp::SenderReport { ssrc, ntp: n, rtp_ts, packets: 39, octets: 39_000, .. }]
                if *ssrc == sub_video && *n == ntp && *rtp_ts == video.ts
        ),
        "one SR for {sub_video} with the publisher's timing: {srs:?}"
    );
    assert_media_delta(&gw, &before, "sender_reports_forwarded", 1);

    // Receiver reports about the publisher's SSRCs, about once a second.
    let sent2 = send_media(&publisher, &mut video, &mut audio, 9);
    assert_received("subscriber", &sub, &sent2);
    all_rtcp.extend(publisher.collect_rtcp(Duration::from_millis(1500)));
    let reports: Vec<_> = all_rtcp
        .iter()
        .filter_map(|p| match p {
            Rtcp::ReceiverReport { reports, .. } | Rtcp::SenderReport { reports, .. } => {
                Some(reports)
            }
            _ => None,
        })
        .flatten()
        .filter(|b| b.ssrc == pub_video)
        .collect();
    assert!(
        !reports.is_empty(),
        "an RR about {pub_video} reached the publisher; RTCP seen: {all_rtcp:?}"
    );
    let last = reports.last().expect("a report");
    assert_eq!(
        last.highest_seq as u16,
        video.seq.wrapping_sub(1),
        "the latest RR reports the highest seq sent: {last:?}"
    );
    assert!(media(&gw.status(), "receiver_reports_sent") >= 1);
}

// ---------------------------------------------------------------------------------------
// 3. Leaving
// ---------------------------------------------------------------------------------------

/// The NACKs for `media_ssrc` among `rtcp`, as the sequence numbers they ask for.
fn nacked(rtcp: &[Rtcp], media_ssrc: u32) -> Vec<u16> {
    rtcp.iter()
        .filter_map(|r| match r {
            Rtcp::Nack { media, lost, .. } if *media == media_ssrc => Some(lost.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A publisher that repairs on an RTX stream (FID group), on a path that reorders: the
/// first late packet is NACKed at once, since nothing says the path reorders yet; it then
/// arrives on the media stream and teaches roomgate to hold later first NACKs back, so the
/// next reordered packet costs no NACK; a real loss is still NACKed and repaired from the
/// RTX stream. The viewer gets every packet once.
#[test]
fn reordering_is_learned_and_costs_no_nacks_while_losses_are_repaired_over_rtx() {
    let gw = start(preferred_mode(), &[]);
    let base = base_url(&gw);
    let room = "reorder";
    let mut cfg = PeerConfig::publisher();
    cfg.offer.audio = None;
    let video_ssrc = cfg.offer.video_ssrc;
    let rtx_ssrc = video_ssrc ^ 0x0100_0000;
    cfg.offer.video = Some(vec![
        Codec::vp8(96),
        Codec {
            pt: 97,
            name: "rtx".into(),
            clock: 90_000,
            channels: None,
            fmtp: Some("apt=96".into()),
            rtcp_fb: Vec::new(),
        },
    ]);
    cfg.offer.extra_media_lines = vec![
        format!("a=ssrc-group:FID {video_ssrc} {rtx_ssrc}"),
        format!("a=ssrc:{rtx_ssrc} cname:roomgate-test"),
    ];
    let publisher = publish(&base, room, cfg);
    let sub = subscribe(&base, room, None, PeerConfig::subscriber());
    wait_connected(&gw, room, &[&publisher, &sub]);
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let packets: Vec<RtpPacket> = (0..19).map(|_| video.next(400, 1)).collect();
    let send = |i: usize| publisher.send_rtp(&packets[i]);
    let metric = |name: &str| gw.metric_sum(name).unwrap_or(0.0) as u64;

    // 0..=10 in order, then 12 before 11, which comes 30 ms later.
    for i in 0..=10 {
        send(i);
    }
    send(12);
    std::thread::sleep(Duration::from_millis(30));
    send(11);
    let rtcp = publisher.collect_rtcp(Duration::from_millis(300));
    assert_eq!(
        nacked(&rtcp, video_ssrc),
        [packets[11].seq],
        "before any reordering was seen, the gap is NACKed at once; got {rtcp:?}"
    );
    // 14 right behind 15: inside the learned window, no NACK for it.
    send(13);
    send(15);
    send(14);
    let rtcp = publisher.collect_rtcp(Duration::from_millis(300));
    assert!(
        nacked(&rtcp, video_ssrc).is_empty(),
        "a packet reordered within the learned window is not NACKed; got {rtcp:?}"
    );
    // 17 is lost: NACKed once the window is over, and repaired on the RTX stream.
    send(16);
    send(18);
    let lost_at = Instant::now();
    let mut rtcp = Vec::new();
    while !nacked(&rtcp, video_ssrc).contains(&packets[17].seq) {
        let left = (lost_at + WAIT).saturating_duration_since(Instant::now());
        let Some(r) = publisher.recv_rtcp(left) else {
            panic!(
                "the lost packet {} is never NACKed; got {rtcp:?}",
                packets[17].seq
            );
        };
        rtcp.extend(r.packet);
    }
    assert_eq!(nacked(&rtcp, video_ssrc), [packets[17].seq]);
    eprintln!("the loss was NACKed {:?} after it", lost_at.elapsed());
    let original = &packets[17];
    let mut payload = original.seq.to_be_bytes().to_vec();
    payload.extend_from_slice(&original.payload);
    publisher.send_rtp(&RtpPacket {
        marker: original.marker,
        pt: 97,
        seq: 1,
        ts: original.ts,
        ssrc: rtx_ssrc,
        payload,
    });

    let got = sub.recv_rtp_n(packets.len(), WAIT);
    let mut seen: Vec<u16> = got.iter().map(|r| r.packet.seq).collect();
    seen.sort_unstable();
    let mut want: Vec<u16> = packets.iter().map(|p| p.seq).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "the viewer gets every packet once");
    for r in &got {
        let sent = packets
            .iter()
            .find(|p| p.seq == r.packet.seq)
            .expect("a packet that was sent");
        assert_eq!(r.packet.payload, sent.payload, "payload of {}", sent.seq);
    }
    let counted = eventually(WAIT, || {
        metric("roomgate_rtp_reordered_total") == 2
            && metric("roomgate_nacks_spurious_total") == 1
            && metric("roomgate_rtx_repairs_received_total") == 1
    });
    assert!(
        counted,
        "reordered {} (want 2: 11 and 14), spurious NACKs {} (want 1: 11), RTX repairs {} (want 1: 17)\n{}",
        metric("roomgate_rtp_reordered_total"),
        metric("roomgate_nacks_spurious_total"),
        metric("roomgate_rtx_repairs_received_total"),
        log_tail(&gw)
    );
}

#[test]
fn leaving_delete_and_close_notify() {
    let gw = start(preferred_mode(), &[]);
    let base = base_url(&gw);
    let room = "leaving";
    let publisher = publish(&base, room, PeerConfig::publisher());
    let subs: Vec<Peer> = (0..3)
        .map(|_| subscribe(&base, room, None, PeerConfig::subscriber()))
        .collect();
    let [stay, deleted, closer] = [&subs[0], &subs[1], &subs[2]];
    wait_connected(&gw, room, &[&publisher, stay, deleted, closer]);
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    let sent = send_media(&publisher, &mut video, &mut audio, 9);
    for (i, s) in subs.iter().enumerate() {
        assert_received(&format!("subscriber {i}"), s, &sent);
    }

    // close_notify ends that session on the gateway.
    let before = gw.status();
    closer.close_dtls();
    assert!(
        eventually(WAIT, || listed(&gw, room, &closer.participant).is_none()),
        "close_notify must end the session: {:?}\n{}",
        participants(&gw, room),
        log_tail(&gw)
    );
    assert_media_delta(&gw, &before, "dtls_closed", 1);
    let before = gw.status();
    let sent = send_media(&publisher, &mut video, &mut audio, 9);
    assert_received("remaining subscriber", stay, &sent);
    assert_received("subscriber to be deleted", deleted, &sent);
    assert_nothing("closed subscriber", closer, Duration::from_millis(300));
    assert_media_delta(&gw, &before, "rtp_forwarded", 2 * total(&sent) as u64);

    // The participant id is public (room listings show it): without the session's
    // resource key, or through the other role's URL, nothing is deleted.
    let forged = [
        format!("/whep/{room}/{}/{}", "A".repeat(22), deleted.participant),
        format!("/whep/{room}/{}", deleted.participant),
        deleted.location.replacen("/whep/", "/whip/", 1),
    ];
    for path in &forged {
        let r = http_request("DELETE", &format!("{base}{path}"), None, None, None);
        assert_eq!(r.status, 404, "DELETE {path}: {}", r.body);
    }
    assert!(
        listed(&gw, room, &deleted.participant).is_some(),
        "forged DELETEs left the session alone"
    );

    // DELETE of a subscriber.
    assert_eq!(deleted.delete(), 200, "DELETE subscriber resource");
    assert!(listed(&gw, room, &deleted.participant).is_none());
    assert_eq!(deleted.delete(), 404, "second DELETE");
    let before = gw.status();
    let sent = send_media(&publisher, &mut video, &mut audio, 6);
    assert_received("remaining subscriber", stay, &sent);
    assert_nothing("deleted subscriber", deleted, Duration::from_millis(300));
    // (Also lets this phase's counters fold before the next phase's snapshot.)
    assert_media_delta(&gw, &before, "rtp_forwarded", total(&sent) as u64);

    // DELETE of the publisher: its subscribers get nothing more.
    assert_eq!(publisher.delete(), 200, "DELETE publisher resource");
    assert!(
        listed(&gw, room, &publisher.participant).is_none(),
        "{:?}",
        participants(&gw, room)
    );
    let before = gw.status();
    send_media(&publisher, &mut video, &mut audio, 6);
    assert_nothing(
        "subscriber of a gone publisher",
        stay,
        Duration::from_millis(700),
    );
    assert_media_delta(&gw, &before, "rtp_forwarded", 0);
    let left: Vec<String> = participants(&gw, room)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["participant"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&stay.participant),
        "only the remaining subscriber is listed"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Bad input
// ---------------------------------------------------------------------------------------

fn offer_sdp(role: Role, edit: impl FnOnce(&mut Offer)) -> String {
    let mut o = Offer::new(role);
    o.fingerprint = webrtc::fingerprint_of(&webrtc::new_certificate());
    edit(&mut o);
    o.to_sdp()
}

#[test]
fn bad_signalling_is_refused_and_creates_nothing() {
    let gw = start(preferred_mode(), &[]);
    let base = base_url(&gw);
    let cases: Vec<(&str, String, &str, u16)> = vec![
        (
            "malformed",
            "this is not SDP\r\n".into(),
            "application/sdp",
            400,
        ),
        (
            "no-bundle",
            offer_sdp(Role::Publisher, |o| o.bundle = false),
            "application/sdp",
            406,
        ),
        (
            "no-rtcp-mux",
            offer_sdp(Role::Publisher, |o| o.rtcp_mux = false),
            "application/sdp",
            406,
        ),
        (
            "no-codec",
            offer_sdp(Role::Publisher, |o| {
                o.audio = Some(vec![Codec::unknown(98, 48_000)]);
                o.video = Some(vec![Codec::unknown(99, 90_000)]);
            }),
            "application/sdp",
            406,
        ),
        (
            "setup-passive",
            offer_sdp(Role::Publisher, |o| o.setup = "passive".into()),
            "application/sdp",
            406,
        ),
        (
            "content-type",
            offer_sdp(Role::Publisher, |_| {}),
            "text/plain",
            415,
        ),
    ];
    for (room, sdp, ctype, want) in &cases {
        for role in ["whip", "whep"] {
            let r = http_request(
                "POST",
                &format!("{base}/{role}/{room}"),
                Some(ctype),
                Some(sdp),
                None,
            );
            assert_eq!(r.status, *want, "{role} {room}: {}", r.body);
            assert!(
                r.json()["error"].is_string(),
                "{role} {room}: JSON error body, got {:?}",
                r.body
            );
            assert!(r.location.is_none(), "{role} {room}: no Location on errors");
            assert_eq!(
                participants(&gw, room),
                None,
                "{role} {room}: nothing created"
            );
        }
    }
    // WHEP for a publisher that does not exist.
    let r = post_offer(
        &base,
        "/whep/ghost?publisher=zzzzzzzz",
        &offer_sdp(Role::Subscriber, |_| {}),
        None,
    );
    assert_eq!(r.status, 404, "unknown publisher: {}", r.body);
    assert_eq!(participants(&gw, "ghost"), None);
    // Resources can't be PATCHed (no trickle ICE).
    let r = post_offer(
        &base,
        "/whip/patchme",
        &offer_sdp(Role::Publisher, |_| {}),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let loc = r.location.expect("Location");
    let r = http_request(
        "PATCH",
        &format!("{base}{loc}"),
        Some("application/trickle-ice-sdpfrag"),
        Some("a=end-of-candidates\r\n"),
        None,
    );
    // Trickle is accepted (RFC 9725 4.3); ICE-lite needs no candidates.
    assert_eq!(r.status, 204, "PATCH: {}", r.body);
    assert_eq!(
        http_request("DELETE", &format!("{base}{loc}"), None, None, None).status,
        200
    );
}

/// Keeps a second room's media flowing while another room is attacked, and counts.
struct Background {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<(usize, Peer)>,
}

impl Background {
    fn start(publisher: Peer) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut s = Stream::for_peer(&publisher, Kind::Video);
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                publisher.send_rtp(&s.next(800, 2));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, publisher)
        });
        Background { stop, sender }
    }
    fn finish(self, sub: &Peer) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, _publisher) = self.sender.join().expect("background sender");
        let got = sub.recv_rtp_n(sent, WAIT);
        assert_eq!(
            got.len(),
            sent,
            "the other room's subscriber received everything throughout"
        );
        let gaps = got
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        assert!(
            gaps < Duration::from_millis(500),
            "the other room's media stalled for {gaps:?}"
        );
    }
}

#[test]
fn bad_media_is_dropped_and_counted_without_disturbing_others() {
    let gw = start(preferred_mode(), &[]);
    let base = base_url(&gw);
    let (room, other) = ("victim", "bystander");
    let publisher = publish(&base, room, PeerConfig::publisher().only_profile(CM));
    let sub = subscribe(&base, room, None, PeerConfig::subscriber());
    let other_pub = publish(&base, other, PeerConfig::publisher().only_profile(GCM));
    let other_sub = subscribe(&base, other, None, PeerConfig::subscriber());
    wait_connected(&gw, room, &[&publisher, &sub]);
    wait_connected(&gw, other, &[&other_pub, &other_sub]);
    let background = Background::start(other_pub);
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);

    // A flipped auth-tag byte: counted as an authentication failure, not forwarded.
    let before = gw.status();
    let pkt = video.next(900, 1);
    let mut bad = publisher.protect_rtp(&pkt.to_bytes());
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    publisher.send_raw(&bad);
    assert_nothing(
        "subscriber of a forged packet",
        &sub,
        Duration::from_millis(400),
    );
    assert_media_delta(&gw, &before, "srtp_unprotect_failures.auth", 1);
    assert_media_delta(&gw, &before, "srtp_unprotect_failures.replay", 0);

    // The same valid packet twice: forwarded once, the copy counted as a replay.
    let before = gw.status();
    let pkt = video.next(900, 1);
    let good = publisher.protect_rtp(&pkt.to_bytes());
    publisher.send_raw(&good);
    publisher.send_raw(&good);
    let got = sub.collect_rtp(Duration::from_millis(600));
    assert_eq!(got.len(), 1, "a replayed packet is forwarded once");
    assert_eq!(got[0].packet.seq, pkt.seq);
    assert_eq!(got[0].packet.payload, pkt.payload);
    assert_media_delta(&gw, &before, "srtp_unprotect_failures.replay", 1);
    assert_media_delta(&gw, &before, "srtp_unprotect_failures.auth", 0);

    // Runts shorter than header + auth tag: malformed, never handed to the SRTP library (a
    // 4-byte SRTCP used to panic inside it and take the thread and its rooms down).
    let before = gw.status();
    publisher.send_raw(&[0x80, 0xc8, 0x00, 0x01]);
    publisher.send_raw(&[0x80, 0xc8, 0x00, 0x06, 0, 0, 0, 1, 0x80, 0, 0, 1]);
    publisher.send_raw(&[0x80, 0x60, 0x00, 0x01, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_media_delta(&gw, &before, "srtcp_unprotect_failures.malformed", 2);
    assert_media_delta(&gw, &before, "srtp_unprotect_failures.malformed", 1);
    assert_eq!(
        support::sum_threads(&gw.status(), "datagram_panics"),
        0,
        "no datagram may panic a thread"
    );
    let sent = send_media(&publisher, &mut video, &mut audio, 4);
    assert_received("subscriber after runt SRTP/SRTCP", &sub, &sent);

    // A DTLS client whose certificate is not the one in its SDP: that handshake fails and
    // only that session ends.
    let before = gw.status();
    let mut cfg = PeerConfig::subscriber();
    cfg.lie_about_fingerprint = true;
    cfg.delete_on_failure = false;
    cfg.handshake_timeout = Duration::from_secs(4);
    let liar = webrtc::connect(&base, &format!("/whep/{room}"), cfg);
    let liar_id = match &liar {
        Ok(p) => p.participant.clone(),
        Err(e) => e
            .location
            .as_deref()
            .and_then(|l| l.rsplit('/').next())
            .unwrap_or_else(|| panic!("liar was refused before DTLS: {e}"))
            .to_owned(),
    };
    assert_media_delta(&gw, &before, "dtls_failed", 1);
    assert!(
        eventually(WAIT, || listed(&gw, room, &liar_id).is_none()),
        "the failed session ends: {:?}",
        participants(&gw, room)
    );
    if let Ok(p) = &liar {
        assert_nothing(
            "a subscriber whose handshake failed",
            p,
            Duration::from_millis(300),
        );
    }
    let sent = send_media(&publisher, &mut video, &mut audio, 6);
    assert_received("subscriber after another's failed handshake", &sub, &sent);
    wait_connected(&gw, room, &[&publisher, &sub]);

    // Garbage DTLS records from an established client (RFC 6347 §4.1.2.7: invalid records
    // are discarded): every content type in the DTLS range at epoch 0 and 1, a record with
    // an unknown content type, a truncated one. The session lives on, media keeps flowing.
    let before = gw.status();
    for first in [20u8, 21, 22, 23, 25, 63] {
        for epoch in [0u8, 1] {
            let mut g = vec![first, 0xfe, 0xfd, 0, epoch, 0, 0, 0, 0, 0, 9, 0, 40];
            g.extend(std::iter::repeat_n(0xa5, 40));
            publisher.send_raw(&g);
        }
    }
    publisher.send_raw(&[23, 0xfe]);
    let sent = send_media(&publisher, &mut video, &mut audio, 6);
    assert_received("subscriber after garbage DTLS", &sub, &sent);
    let me = listed(&gw, room, &publisher.participant).expect("publisher still listed");
    assert_eq!(me["dtls_state"], "connected", "{me}");
    assert_media_delta(&gw, &before, "dtls_failed", 0);
    assert_media_delta(&gw, &before, "dtls_closed", 0);
    // Dropped before webrtc-dtls sees them: the malformed CCS (2), a plaintext alert and
    // plaintext application data (epoch 0), types 25 and 63 (4), the truncated record.
    // Handshake records and epoch-1 alerts/application data go to the DTLS layer, which
    // discards what fails to decrypt.
    assert_media_delta(&gw, &before, "dtls_records_dropped", 9);

    background.finish(&other_sub);
}

// ---------------------------------------------------------------------------------------
// 5. Limits and auth
// ---------------------------------------------------------------------------------------

#[test]
fn limits_and_auth() {
    let pub_sdp = || offer_sdp(Role::Publisher, |_| {});
    let sub_sdp = || offer_sdp(Role::Subscriber, |_| {});

    let gw = start(preferred_mode(), &[("--max-participants-per-room", "2")]);
    let base = base_url(&gw);
    let r = post_offer(&base, "/whip/full", &pub_sdp(), None);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        post_offer(&base, "/whep/full", &sub_sdp(), None).status,
        201
    );
    for path in ["/whip/full", "/whep/full"] {
        let sdp = if path.starts_with("/whip") {
            pub_sdp()
        } else {
            sub_sdp()
        };
        let r = post_offer(&base, path, &sdp, None);
        assert_eq!(r.status, 503, "third participant via {path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    assert_eq!(participants(&gw, "full").map(|p| p.len()), Some(2));
    assert_eq!(
        post_offer(&base, "/whip/other", &pub_sdp(), None).status,
        201
    );
    drop(gw);

    let gw = start(preferred_mode(), &[("--max-sessions", "1")]);
    let base = base_url(&gw);
    assert_eq!(post_offer(&base, "/whip/one", &pub_sdp(), None).status, 201);
    let r = post_offer(&base, "/whip/two", &pub_sdp(), None);
    assert_eq!(r.status, 503, "second session: {}", r.body);
    assert_eq!(participants(&gw, "two"), None);
    drop(gw);

    let gw = start(preferred_mode(), &[("--auth-token", "s3cret")]);
    let base = base_url(&gw);
    let r = post_offer(&base, "/whip/auth", &pub_sdp(), None);
    assert_eq!(r.status, 401, "no token: {}", r.body);
    let r = post_offer(&base, "/whip/auth", &pub_sdp(), Some("wrong"));
    assert_eq!(r.status, 401, "wrong token: {}", r.body);
    let mut cfg = PeerConfig::publisher();
    cfg.bearer = Some("s3cret".into());
    let p = publish(&base, "auth", cfg);
    assert_eq!(p.delete_with(None), 401, "DELETE needs the token too");
    assert_eq!(p.delete(), 200);
}

// ---------------------------------------------------------------------------------------
// Sending bursts with UDP GSO
// ---------------------------------------------------------------------------------------

/// A burst of one frame (20 video packets of one size) fanned out to two subscribers.
/// The gateway is stopped (SIGSTOP) while the publisher sends, as a descheduled thread
/// would be, so the whole burst is in its socket when it resumes and is read in one
/// batch: with GSO each subscriber gets its 20 datagrams in one send, without it in 20.
/// Either way every packet arrives intact and in order.
fn burst_to_two_subscribers(steering: &str, gso: &str) {
    burst_of_size(steering, gso, 1000);
}

fn burst_of_size(steering: &str, gso: &str, size: usize) {
    const FRAME: usize = 20;
    let gw = start(steering, &[("--gso", gso)]);
    let base = base_url(&gw);
    let room = "gso-room";
    let publisher = publish(&base, room, PeerConfig::publisher());
    let subs = [
        subscribe(
            &base,
            room,
            Some(&publisher.participant),
            PeerConfig::subscriber(),
        ),
        subscribe(
            &base,
            room,
            Some(&publisher.participant),
            PeerConfig::subscriber().only_profile(CM),
        ),
    ];
    wait_connected(&gw, room, &[&publisher, &subs[0], &subs[1]]);
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    // Warm-up: both subscribers bound and receiving.
    let warm = video.next(1000, 1);
    publisher.send_rtp(&warm);
    for s in &subs {
        assert!(
            s.recv_rtp(WAIT).is_some(),
            "warm-up packet\n{}",
            log_tail(&gw)
        );
    }
    // Forwarding counters fold in every 500 ms: let the warm-up's land first.
    std::thread::sleep(Duration::from_millis(700));
    let before = gw.status();
    let frame: Vec<RtpPacket> = (0..FRAME).map(|_| video.next(size, FRAME as u32)).collect();
    gw.freeze();
    for p in &frame {
        publisher.send_rtp(p);
    }
    gw.thaw();
    let sent = HashMap::from([(Kind::Video, frame)]);
    if size >= 1400 {
        // Sockets are DF (quinn-udp sets IP_PMTUDISC_PROBE, as WebRTC wants no IP
        // fragments): past the path MTU every datagram is refused, alone or in a GSO run,
        // and every one of them is counted.
        let all_counted = eventually(WAIT, || {
            let now = gw.status();
            sum_emsgsize(&now) - sum_emsgsize(&before) == 2 * FRAME as u64
        });
        let after = gw.status();
        assert!(
            all_counted,
            "every refused datagram counted as emsgsize: {after}"
        );
        let delta = |k: &str| sum_threads(&after, k) - sum_threads(&before, k);
        assert_eq!(delta("tx_gso_sends"), 0, "{after}");
        let refused_runs = if gso == "on" { 2 } else { 0 };
        assert_eq!(delta("tx_gso_fallbacks"), refused_runs, "{after}");
        assert_nothing("first subscriber", &subs[0], Duration::from_millis(300));
        return;
    }
    assert_received("first subscriber", &subs[0], &sent);
    assert_received("second subscriber (AES-CM)", &subs[1], &sent);
    assert_media_delta(&gw, &before, "rtp_forwarded", 2 * FRAME as u64);
    let after = gw.status();
    let delta = |k: &str| sum_threads(&after, k) - sum_threads(&before, k);
    if gso == "on" {
        assert_eq!(
            delta("tx_gso_sends"),
            2,
            "one GSO send per subscriber: {after}"
        );
        assert_eq!(delta("tx_gso_datagrams"), 2 * FRAME as u64, "{after}");
    } else {
        assert_eq!(delta("tx_gso_sends"), 0, "{after}");
        assert_eq!(delta("tx_gso_datagrams"), 0, "{after}");
    }
}

#[test]
fn gso_sends_a_burst_to_each_subscriber_at_once_ebpf() {
    if !support::require_root() {
        return;
    }
    burst_to_two_subscribers("ebpf", "on");
}

#[test]
fn gso_sends_a_burst_to_each_subscriber_at_once_connected() {
    burst_to_two_subscribers("connected", "on");
}

#[test]
fn without_gso_a_burst_leaves_datagram_by_datagram() {
    burst_to_two_subscribers(preferred_mode(), "off");
}

fn sum_emsgsize(status: &Value) -> u64 {
    status["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["send_errors"]["emsgsize"].as_u64().unwrap_or(0))
        .sum()
}

/// Loopback with a 1,300-byte MTU, in a namespace of this test's own, and a frame of
/// 1,400-byte packets: a GSO run the kernel refuses is retried datagram by datagram, and
/// what the path cannot carry is counted, never lost silently.
fn past_the_path_mtu(gso: &str) {
    let ns = support::netns::TestNetns::enter(&format!("mtu{gso}"));
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "set", "lo", "mtu", "1300"])
        .output()
        .expect("ip link");
    assert!(out.status.success(), "{out:?}");
    burst_of_size("ebpf", gso, 1400);
}

#[test]
fn datagrams_past_the_path_mtu_are_counted_with_gso() {
    if !support::require_root() {
        return;
    }
    past_the_path_mtu("on");
}

#[test]
fn datagrams_past_the_path_mtu_are_counted_without_gso() {
    if !support::require_root() {
        return;
    }
    past_the_path_mtu("off");
}
