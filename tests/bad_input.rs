//! Invariant 5: malformed input of any kind is dropped and counted; nothing panics; no
//! other session notices.
mod support;

use std::time::Duration;

use support::*;

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
