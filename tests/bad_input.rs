//! Invariant 5: malformed input of any kind is dropped and counted; nothing panics; no
//! other session notices.
mod support;
#[path = "support/webrtc.rs"]
mod webrtc;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use support::*;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;

fn stun(msg_type: u16, body: &[u8]) -> Vec<u8> {
    let mut m = msg_type.to_be_bytes().to_vec();
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[0x33; 12]);
    m.extend_from_slice(body);
    m
}

fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut a = ty.to_be_bytes().to_vec();
    a.extend_from_slice(&(value.len() as u16).to_be_bytes());
    a.extend_from_slice(value);
    a.resize(4 + ((value.len() + 3) & !3), 0);
    a
}

/// Binding Requests the kernel program cannot walk: each must be counted as
/// `stun_malformed` in eBPF mode and dropped in userspace in connected mode.
fn malformed_binding_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mi = attr(0x0008, &[0; 20]);
    let good_user = attr(0x0006, b"lobbyAbCd1234:cli1");
    let mut truncated = stun(0x0001, &[good_user.clone(), mi.clone()].concat());
    truncated.truncate(30);
    let mut past_end = stun(0x0001, &[good_user.clone(), mi.clone()].concat());
    past_end[22] = 0x04; // USERNAME length 0x0400
    let many: Vec<u8> = (0..20)
        .flat_map(|_| attr(0x8022, b"soft"))
        .chain(good_user.clone())
        .collect();
    vec![
        ("truncated", truncated),
        ("attribute length past the end", past_end),
        (
            "more attributes than the bound",
            stun(0x0001, &[many, mi.clone()].concat()),
        ),
        (
            "USERNAME without ':'",
            stun(
                0x0001,
                &[attr(0x0006, b"lobbyAbCd1234cli1"), mi.clone()].concat(),
            ),
        ),
        (
            "oversize USERNAME",
            stun(0x0001, &[attr(0x0006, &[b'a'; 600]), mi.clone()].concat()),
        ),
        ("no USERNAME", stun(0x0001, &mi)),
        (
            "room part with a forbidden byte",
            stun(0x0001, &[attr(0x0006, b"lo.byAbCd1234:c"), mi].concat()),
        ),
    ]
}

fn garbage_from_unknown_addresses() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("unknown first byte", vec![99u8; 40]),
        ("DTLS from an unknown address", fake_dtls(1)),
        ("RTP from an unknown address", fake_rtp(1)),
        ("STUN indication from an unknown address", stun(0x0011, &[])),
    ]
}

/// A legitimate session that must not notice anything.
fn healthy_session(gw: &Gateway) -> (Participant, Client) {
    let p = gw.create("healthy");
    let c = Client::bind("127.0.0.5");
    assert_eq!(
        c.ice_check(gw.udp, &p),
        StunReply::Success { mapped: c.addr() }
    );
    (p, c)
}

fn session_rx(gw: &Gateway, p: &Participant) -> u64 {
    let (_, v) = gw.get(&format!("/api/rooms/{}", p.room));
    v["participants"][0]["rx_datagrams"].as_u64().unwrap_or(0)
}

fn hammer(gw: &Gateway, legit: &Client) -> (u64, u64, u64) {
    let attacker = Client::bind("127.0.0.6");
    let malformed = malformed_binding_requests();
    let garbage = garbage_from_unknown_addresses();
    for round in 0..3u16 {
        for (_, m) in &malformed {
            attacker.send(gw.udp, m);
        }
        for (_, g) in &garbage {
            attacker.send(gw.udp, g);
        }
        attacker.send(gw.udp, &[]);
        // Interleaved legitimate media.
        legit.send(gw.udp, &fake_rtp(round));
    }
    (3 * malformed.len() as u64, 3 * garbage.len() as u64, 3)
}

#[test]
fn ebpf_mode_drops_and_counts_bad_input_in_the_kernel() {
    if !require_root() {
        return;
    }
    let gw = Gateway::start("ebpf", 2);
    assert_eq!(gw.mode, "ebpf", "{}", gw.stderr());
    let (p, legit) = healthy_session(&gw);
    let before = gw.status();
    let (malformed, garbage, empty) = hammer(&gw, &legit);
    assert!(
        eventually(Duration::from_secs(5), || session_rx(&gw, &p) == 3),
        "legit session unaffected"
    );
    let after = gw.status();
    let d = |k: &str| ebpf_counter(&after, k) - ebpf_counter(&before, k);
    assert_eq!(d("stun_malformed"), malformed, "{after}");
    assert_eq!(d("empty"), empty, "{after}");
    // Unknown first byte: 3; DTLS, RTP and the indication from an unpinned source: flow misses.
    assert_eq!(d("unknown_type"), 3, "{after}");
    assert_eq!(d("flow_miss"), garbage - 3, "{after}");
    assert_eq!(d("steered_by_flow"), 3, "{after}");
    assert_eq!(d("packets"), malformed + garbage + empty + 3);
    // Nothing of it reached userspace.
    let rx = sum_threads(&after, "rx_datagrams") - sum_threads(&before, "rx_datagrams");
    assert_eq!(
        rx, 3,
        "only the legitimate datagrams reached a thread: {after}"
    );
    assert_eq!(gw.get("/healthz").0, 200);
}

#[test]
fn connected_mode_drops_and_counts_bad_input_in_userspace() {
    let gw = Gateway::start("connected", 2);
    let (p, legit) = healthy_session(&gw);
    let before = gw.status();
    let (malformed, garbage, empty) = hammer(&gw, &legit);
    let total = malformed + garbage + empty;
    // Every bad datagram is accounted for by exactly one drop counter (a STUN error
    // response is a drop too: nothing is pinned).
    let dropped = |s: &serde_json::Value| {
        ["empty", "unknown_type", "no_session"]
            .iter()
            .map(|k| sum_threads(s, k))
            .sum::<u64>()
            + [
                "malformed",
                "bad_request",
                "unknown_ufrag",
                "not_a_request",
                "unauthorized",
            ]
            .iter()
            .map(|k| stun_counter(s, k))
            .sum::<u64>()
    };
    assert!(
        eventually(Duration::from_secs(5), || dropped(&gw.status())
            - dropped(&before)
            == total),
        "{total} dropped datagrams counted: {}",
        gw.status()
    );
    assert!(
        eventually(Duration::from_secs(5), || session_rx(&gw, &p) == 3),
        "legit session unaffected"
    );
    let after = gw.status();
    assert_eq!(
        stun_counter(&after, "success"),
        stun_counter(&before, "success")
    );
    assert_eq!(sum_threads(&after, "pins"), sum_threads(&before, "pins"));
    assert_eq!(
        sum_threads(&after, "empty") - sum_threads(&before, "empty"),
        empty
    );
    assert_eq!(
        sum_threads(&after, "unknown_type") - sum_threads(&before, "unknown_type"),
        3
    );
    // The healthy client still completes checks.
    assert_eq!(
        legit.ice_check(gw.udp, &p),
        StunReply::Success {
            mapped: legit.addr()
        }
    );
}

#[test]
fn api_rejects_bad_room_ids_with_json_errors() {
    let gw = Gateway::start("connected", 1);
    for bad in ["with%20space", "a.b", "%C3%A9", &"x".repeat(33)] {
        let (code, v) = gw.post(&format!("/api/rooms/{bad}/participants"));
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("room id")),
            "{v}"
        );
    }
    let (code, _) = gw.get("/api/rooms/nobody-here");
    assert_eq!(code, 404);
    let (code, v) = gw.delete("/api/rooms/nobody-here/participants/AbCd1234");
    assert_eq!(code, 404, "{v}");
    // Create, delete, gone.
    let p = gw.create("short-lived");
    assert_eq!(
        gw.delete(&format!(
            "/api/rooms/short-lived/participants/{}",
            p.participant
        ))
        .0,
        204
    );
    assert_eq!(gw.get("/api/rooms/short-lived").0, 404);
}

// ---------------------------------------------------------------------------------------
// Simulcast RTP through real SRTP: a publisher that negotiated three layers sends RTP
// naming a RID it never announced, extension blocks with a truncated element or a
// repeated RID, and elements under IDs the session never mapped. Two pinned subscribers
// must get exactly the valid packets of their layer, before and after.
// ---------------------------------------------------------------------------------------

const SIMULCAST_ROOM: &str = "bad-ext";
/// The publisher's `a=extmap` IDs.
const EXT_MID: u8 = 1;
const EXT_RID: u8 = 2;
/// An RFC 8285 one-byte ID (1..=14) the offer never maps.
const EXT_UNMAPPED: u8 = 9;
/// A RID absent from the offer's `a=rid` lines, and the SSRC it comes on.
const UNKNOWN_RID: &[u8] = b"zz";
const UNKNOWN_RID_SSRC: u32 = 0x0bad_0001;
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// A keyframe on every layer this often: a pinned subscriber switches only at one, and
/// this publisher ignores the gateway's PLIs.
const KEYFRAME_EVERY: u64 = 10;
/// Warm-up bound: layers ranked by rate and each subscriber on its pinned layer.
const SETTLE: Duration = Duration::from_secs(15);
/// Frames of the measured phase; every bad packet goes out in the first two thirds, so
/// at least ten frames of clean media follow the last one.
const MEASURED_FRAMES: u64 = 30;

/// One simulcast layer of the fake camera. Its packets differ in size and count per
/// frame so that the gateway ranks them by rate as low < mid < high.
struct Layer {
    index: u64,
    rid: &'static str,
    ssrc: u32,
    seq: u16,
    ts: u32,
    frame: u64,
    packets_per_frame: u32,
    size: usize,
    /// Packets sent, the low 32 bits of each packet's stamp counter.
    sent: u64,
}

impl Layer {
    fn new(index: u64, rid: &'static str, packets_per_frame: u32, size: usize) -> Layer {
        let r = webrtc::random_u32();
        Layer {
            index,
            rid,
            ssrc: webrtc::random_u32() | 1,
            seq: (r & 0x7fff) as u16,
            ts: r >> 1,
            frame: 0,
            packets_per_frame,
            size,
            sent: 0,
        }
    }

    fn next_seq(&mut self) -> u16 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    /// The next frame's packets, each carrying mid and rid plus `extra` elements. Returns
    /// the packets and the stamp counters they carry.
    fn frame(&mut self, extra: &[u8]) -> (Vec<Vec<u8>>, Vec<u64>) {
        let keyframe = self.frame.is_multiple_of(KEYFRAME_EVERY);
        let mut packets = Vec::new();
        let mut ids = Vec::new();
        for i in 0..self.packets_per_frame {
            let counter = self.index << 32 | self.sent;
            let payload = webrtc::vp8_payload(i == 0, keyframe, self.size, counter);
            let mut elements = [
                element(EXT_MID, b"0"),
                element(EXT_RID, self.rid.as_bytes()),
            ]
            .concat();
            elements.extend_from_slice(extra);
            let last = i + 1 == self.packets_per_frame;
            let seq = self.next_seq();
            packets.push(rtp_with_extensions(
                last, seq, self.ts, self.ssrc, &elements, &payload,
            ));
            ids.push(counter);
            self.sent += 1;
        }
        self.ts = self.ts.wrapping_add(3000);
        self.frame += 1;
        (packets, ids)
    }

    /// A packet of this layer's stream (it takes a sequence number, as a packet lost on
    /// the way would) with `elements` as its whole extension block.
    fn raw(&mut self, elements: &[u8]) -> Vec<u8> {
        let payload = webrtc::vp8_payload(false, false, self.size, u64::MAX);
        let seq = self.next_seq();
        rtp_with_extensions(false, seq, self.ts, self.ssrc, elements, &payload)
    }
}

/// An RFC 8285 one-byte element (`data` is 1 to 16 bytes).
fn element(id: u8, data: &[u8]) -> Vec<u8> {
    let mut e = vec![(id << 4) | (data.len() as u8 - 1)];
    e.extend_from_slice(data);
    e
}

/// A VP8 (PT 96) RTP packet with a one-byte-form extension block holding `elements`,
/// zero-padded to whole words.
fn rtp_with_extensions(
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    elements: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let words = elements.len().div_ceil(4);
    let mut b = vec![0x90, (u8::from(marker) << 7) | 96];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    b.extend_from_slice(&[0xbe, 0xde]);
    b.extend_from_slice(&(words as u16).to_be_bytes());
    b.extend_from_slice(elements);
    b.resize(16 + 4 * words, 0);
    b.extend_from_slice(payload);
    b
}

/// Sum over every sample of `name` in the gateway's Prometheus exposition.
fn metric(gw: &Gateway, name: &str) -> u64 {
    gw.metric_sum(name).unwrap_or(0.0) as u64
}

/// `(layer, requested)` of subscriber `participant`'s first video slot in the room listing.
fn listed_layer(gw: &Gateway, participant: &str) -> Option<(String, String)> {
    gw.listed_layer(SIMULCAST_ROOM, participant)
}

/// The stamp counters of the media packets `peer` received within `window`.
fn received_stamps(peer: &webrtc::Peer, window: Duration) -> Vec<u64> {
    peer.collect_rtp(window)
        .iter()
        .filter_map(|r| webrtc::payload_stamp(&r.packet.payload).map(|(_, c)| c))
        .collect()
}

fn simulcast_subscriber(base: &str, layer: &str) -> webrtc::Peer {
    let mut cfg = webrtc::PeerConfig::subscriber();
    cfg.offer.audio = None;
    let path = format!("/whep/{SIMULCAST_ROOM}?layer={layer}");
    webrtc::connect(base, &path, cfg).unwrap_or_else(|e| panic!("subscribe via {path}: {e}"))
}

fn send_all(publisher: &webrtc::Peer, packets: &[Vec<u8>]) {
    for p in packets {
        publisher.send_raw(&publisher.protect_rtp(p));
    }
}

fn simulcast_bad_rtp_is_dropped_and_counted(steering: &str) {
    let gw = Gateway::builder(steering, 2)
        .set("--public-ip", "127.0.0.1")
        .start();
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    let base = format!("http://{}", gw.http);
    // AES-CM, not GCM: the client's SRTP library finds the header's end by walking the
    // extension elements, and a truncated element makes it walk into the payload. With
    // GCM that wrong length would change the authenticated header and the gateway would
    // refuse the packet at SRTP, before the extension parser under test ever saw it;
    // with AES-CM only the (dropped) payload's encryption is misplaced.
    let mut cfg = webrtc::PeerConfig::publisher()
        .only_profile(SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80);
    cfg.offer.audio = None;
    cfg.offer.extra_media_lines = vec![
        format!("a=extmap:{EXT_MID} urn:ietf:params:rtp-hdrext:sdes:mid"),
        format!("a=extmap:{EXT_RID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        "a=rid:hi send".into(),
        "a=rid:lo send".into(),
        "a=rid:md send".into(),
        // Not in rate order: the gateway ranks layers by what arrives.
        "a=simulcast:send hi;lo;md".into(),
    ];
    let publisher = webrtc::publish(&base, SIMULCAST_ROOM, cfg);
    assert!(
        publisher.answer.raw.contains("a=simulcast:recv"),
        "the answer accepts simulcast:\n{}",
        publisher.answer.raw
    );
    let low = simulcast_subscriber(&base, "low");
    let high = simulcast_subscriber(&base, "high");
    let mut layers = [
        Layer::new(0, "lo", 1, 300),
        Layer::new(1, "md", 2, 600),
        Layer::new(2, "hi", 3, 1000),
    ];
    let frame_of_every_layer = |layers: &mut [Layer], extra: &[u8]| -> [Vec<u64>; 3] {
        let mut ids: [Vec<u64>; 3] = Default::default();
        for (l, out) in layers.iter_mut().zip(ids.iter_mut()) {
            let (packets, sent) = l.frame(extra);
            send_all(&publisher, &packets);
            *out = sent;
        }
        ids
    };

    // Warm-up: a steady camera until the listing shows each subscriber on its layer and
    // each has received media of it.
    let deadline = Instant::now() + SETTLE;
    let (mut low_seen, mut high_seen) = (false, false);
    loop {
        frame_of_every_layer(&mut layers, &[]);
        low_seen |= received_stamps(&low, Duration::ZERO)
            .iter()
            .any(|c| c >> 32 == 0);
        high_seen |= received_stamps(&high, Duration::ZERO)
            .iter()
            .any(|c| c >> 32 == 2);
        let listed = (
            listed_layer(&gw, &low.participant),
            listed_layer(&gw, &high.participant),
        );
        let on_layer = |l: &Option<(String, String)>, want: &str| {
            l.as_ref()
                .is_some_and(|(got, req)| got == want && req == want)
        };
        if low_seen && high_seen && on_layer(&listed.0, "low") && on_layer(&listed.1, "high") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {SETTLE:?}: low subscriber got media {low_seen}, high {high_seen}; \
             listing (layer, requested): {listed:?}\n{}",
            log_tail(&gw)
        );
        std::thread::sleep(FRAME_INTERVAL);
    }
    // Let the warm-up's packets land, then count from a clean slate.
    std::thread::sleep(Duration::from_millis(300));
    low.drain();
    high.drain();
    let counters = |gw: &Gateway| {
        [
            "roomgate_rtp_unknown_rid_total",
            "roomgate_rtp_bad_extension_total",
            "roomgate_rtp_foreign_extension_total",
        ]
        .map(|name| metric(gw, name))
    };
    let before = counters(&gw);

    let unmapped = element(EXT_UNMAPPED, &[0xab, 0xcd]);
    let (mut want_low, mut want_high) = (BTreeSet::new(), BTreeSet::new());
    let (mut unknown_rids, mut bad_blocks) = (0u64, 0u64);
    for f in 0..MEASURED_FRAMES {
        // (4) Every other frame's valid packets carry an element under an ID the session
        // never mapped: stripped, and the packet forwarded.
        let extra = if f % 2 == 1 {
            unmapped.clone()
        } else {
            Vec::new()
        };
        let [l, _, h] = frame_of_every_layer(&mut layers, &extra);
        want_low.extend(l);
        want_high.extend(h);
        match f {
            // (1) A RID the offer never announced, on an SSRC of its own.
            3 | 9 | 15 => {
                let payload = webrtc::vp8_payload(true, true, 300, u64::MAX);
                let elements = [element(EXT_MID, b"0"), element(EXT_RID, UNKNOWN_RID)].concat();
                let seq = 1000 + f as u16;
                let p = rtp_with_extensions(
                    true,
                    seq,
                    90 * f as u32,
                    UNKNOWN_RID_SSRC,
                    &elements,
                    &payload,
                );
                send_all(&publisher, &[p]);
                unknown_rids += 1;
            }
            // (2) A truncated element on the low layer: the MID element says 16 bytes of
            // data, the block holds 3 more.
            5 | 13 => {
                let p = layers[0].raw(&[(EXT_MID << 4) | 0x0f, b'0', 0, 0]);
                send_all(&publisher, &[p]);
                bad_blocks += 1;
            }
            // (3) The RID element twice on the high layer.
            7 | 17 => {
                let rid = element(EXT_RID, b"hi");
                let elements = [element(EXT_MID, b"0"), rid.clone(), rid].concat();
                let p = layers[2].raw(&elements);
                send_all(&publisher, &[p]);
                bad_blocks += 1;
            }
            _ => {}
        }
        std::thread::sleep(FRAME_INTERVAL);
    }

    // Still on their layers right after the last frame (a layer that stops for 1.5 s is
    // no longer listed, so this is not checked after the waits below).
    assert_eq!(
        listed_layer(&gw, &low.participant),
        Some(("low".into(), "low".into()))
    );
    assert_eq!(
        listed_layer(&gw, &high.participant),
        Some(("high".into(), "high".into()))
    );
    // Exactly the valid packets of each subscriber's layer, each once.
    let collect = |peer: &webrtc::Peer, want: usize| {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want && Instant::now() < deadline {
            got.extend(received_stamps(peer, Duration::from_millis(100)));
        }
        // Anything beyond would be a duplicate or a packet of another layer.
        got.extend(received_stamps(peer, Duration::from_millis(300)));
        got
    };
    for (name, peer, want) in [("low", &low, &want_low), ("high", &high, &want_high)] {
        let got = collect(peer, want.len());
        let distinct: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(
            got.len(),
            distinct.len(),
            "{name} subscriber got duplicates: {got:?}"
        );
        let missing: Vec<_> = want.difference(&distinct).collect();
        let extra: Vec<_> = distinct.difference(want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name} subscriber: {} of {} valid packets arrived; missing {missing:?}, \
             unexpected {extra:?}\n{}",
            distinct.len(),
            want.len(),
            log_tail(&gw)
        );
    }

    let expected = [unknown_rids, bad_blocks, 0];
    assert!(
        eventually(Duration::from_secs(5), || {
            let now = counters(&gw);
            (0..3).all(|i| now[i] - before[i] == expected[i])
        }),
        "unknown_rid, bad_extension, foreign_extension deltas: expected {expected:?}, \
         counters went from {before:?} to {:?}",
        counters(&gw)
    );
    // The counters were folded in: nothing more arrives later.
    std::thread::sleep(Duration::from_millis(600));
    let after = counters(&gw);
    assert_eq!(
        (0..3).map(|i| after[i] - before[i]).collect::<Vec<_>>(),
        expected.to_vec()
    );
    // The publisher's session is still connected.
    let (code, room) = gw.get(&format!("/api/rooms/{SIMULCAST_ROOM}"));
    assert_eq!(code, 200, "{room}");
    let pub_entry = room["participants"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["participant"] == publisher.participant.as_str())
        })
        .unwrap_or_else(|| panic!("publisher listed: {room}"));
    assert_eq!(pub_entry["dtls_state"], "connected", "{room}");
}

fn log_tail(gw: &Gateway) -> String {
    let s = gw.stderr();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn simulcast_bad_rtp_is_dropped_and_counted_ebpf() {
    if !require_root() {
        return;
    }
    simulcast_bad_rtp_is_dropped_and_counted("ebpf");
}

#[test]
fn simulcast_bad_rtp_is_dropped_and_counted_connected() {
    simulcast_bad_rtp_is_dropped_and_counted("connected");
}

/// A datagram longer than the receive slot is cut short by the kernel without a flag
/// quinn-udp reports; roomgate drops and counts it rather than hand a truncated packet
/// to a session. 2,048 bytes and more: no WebRTC datagram is that long.
fn oversized_datagrams_are_dropped_not_truncated(mode: &str) {
    if !require_root() {
        return;
    }
    let gw = Gateway::start(mode, 2);
    let (p, legit) = healthy_session(&gw);
    let before_rx = session_rx(&gw, &p);
    let before = gw.status();
    // RTP-looking, from the pinned client, so it reaches the session's thread in both modes.
    let mut big = vec![0x80u8; 4000];
    big[1] = 96;
    for len in [2048usize, 3000, 4000] {
        legit.send(gw.udp, &big[..len]);
    }
    // Just under the slot: delivered whole, the session counts it.
    legit.send(gw.udp, &big[..2047]);
    assert!(
        eventually(Duration::from_secs(5), || {
            sum_threads(&gw.status(), "oversized") - sum_threads(&before, "oversized") == 3
        }),
        "3 oversized datagrams counted: {}",
        gw.status()
    );
    assert!(
        eventually(Duration::from_secs(5), || session_rx(&gw, &p)
            == before_rx + 1),
        "only the 2,047-byte datagram reached the session"
    );
    assert_eq!(
        gw.metric_sum("roomgate_oversized_datagrams_total"),
        Some(3.0)
    );
}

#[test]
fn oversized_datagrams_are_dropped_not_truncated_ebpf() {
    oversized_datagrams_are_dropped_not_truncated("ebpf");
}

#[test]
fn oversized_datagrams_are_dropped_not_truncated_connected() {
    oversized_datagrams_are_dropped_not_truncated("connected");
}

/// A Binding Request without USERNAME names no session and may come from a spoofed
/// source: both modes drop and count it, neither answers (no 400 to reflect).
fn a_request_without_username_is_dropped_not_answered(mode: &str) {
    if !require_root() {
        return;
    }
    let gw = Gateway::start(mode, 2);
    let before = gw.status();
    let c = Client::bind("127.0.0.7");
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"no-username!");
    let reply = c.send_and_maybe_recv(gw.udp, &request, Duration::from_millis(300));
    assert!(reply.is_none(), "answered: {reply:?}");
    let counted = |s: &serde_json::Value| match mode {
        "ebpf" => ebpf_counter(s, "stun_malformed"),
        _ => stun_counter(s, "bad_request"),
    };
    assert!(
        eventually(Duration::from_secs(5), || counted(&gw.status())
            == counted(&before) + 1),
        "counted once: {}",
        gw.status()
    );
}

#[test]
fn a_request_without_username_is_dropped_not_answered_ebpf() {
    a_request_without_username_is_dropped_not_answered("ebpf");
}

#[test]
fn a_request_without_username_is_dropped_not_answered_connected() {
    a_request_without_username_is_dropped_not_answered("connected");
}
