//! Invariant 4: a flow is pinned only after MESSAGE-INTEGRITY verified, and a forged
//! STUN request never moves someone's flow — not with a wrong password, not without
//! integrity, and not with valid credentials of *another* session sent from a spoofed
//! source address.
mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};
use support::*;

/// A socket bound to exactly `addr` next to the victim's own socket (SO_REUSEPORT on
/// both): datagrams it sends carry the victim's source address, as a spoofer's would.
fn spoofer_of(addr: SocketAddr) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_port(true).expect("reuseport");
    s.bind(&addr.into()).expect("bind to the victim's address");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    UdpSocket::from(s)
}

fn victim_client() -> Client {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_port(true).expect("reuseport");
    s.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    let socket = UdpSocket::from(s);
    socket
        .set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    Client { socket }
}

fn participant_view(gw: &Gateway, p: &Participant) -> Value {
    let (code, v) = gw.get(&format!("/api/rooms/{}", p.room));
    assert_eq!(code, 200, "{v}");
    v["participants"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|x| x["participant"] == p.participant.as_str())
                .cloned()
        })
        .unwrap_or_else(|| panic!("{} in {v}", p.participant))
}

/// Rooms owned by different threads, so a moved flow would be visible as a new owner.
fn two_rooms_on_different_threads(gw: &Gateway) -> (Participant, Participant) {
    let victim = gw.create("victim-room");
    for i in 0..64 {
        let p = gw.create(&format!("attacker-{i}"));
        if p.thread != victim.thread {
            return (victim, p);
        }
    }
    panic!("no room on another thread");
}

fn forged_requests_never_move_a_flow(steering: &str) {
    let gw = Gateway::start(steering, 2);
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    let (victim, attacker) = two_rooms_on_different_threads(&gw);
    let client = victim_client();
    assert_eq!(
        client.ice_check(gw.udp, &victim),
        StunReply::Success {
            mapped: client.addr()
        }
    );
    for s in 0..5 {
        client.send(gw.udp, &fake_dtls(s));
    }
    assert!(eventually(Duration::from_secs(5), || participant_view(
        &gw, &victim
    )["rx_datagrams"]
        == 5));
    let before = gw.status();

    let spoof = spoofer_of(client.addr());
    let mut buf = [0u8; 1500];
    // 1. The victim's own ufrag, wrong password: 401, nothing pinned.
    spoof
        .send_to(
            &binding_request(&victim.ufrag, "evil", "wrong-password-wrong-pwd", true),
            gw.udp,
        )
        .unwrap();
    // 2. No MESSAGE-INTEGRITY at all (hand-made: USERNAME only): 400.
    spoof
        .send_to(&username_only_request(&attacker.ufrag), gw.udp)
        .unwrap();
    // 3. Valid credentials of the attacker's own session, from the victim's address: the
    //    most dangerous case. It must not re-pin the victim's address to the attacker's
    //    thread.
    spoof
        .send_to(
            &binding_request(&attacker.ufrag, "evil", &attacker.pwd, true),
            gw.udp,
        )
        .unwrap();
    // Drain whatever came back on either socket (replies go to the shared address).
    std::thread::sleep(Duration::from_millis(300));
    while spoof.recv_from(&mut buf).is_ok() {}
    while client.socket.recv_from(&mut buf).is_ok() {}

    let after = gw.status();
    let d = |k: &str| stun_counter(&after, k) - stun_counter(&before, k);
    let conflicts = sum_threads(&after, "pin_conflicts") - sum_threads(&before, "pin_conflicts");
    assert_eq!(d("success"), 0, "no forged request succeeded: {after}");
    assert_eq!(
        d("unauthorized"),
        1,
        "wrong password on the victim's own session: {after}"
    );
    // In eBPF mode the no-integrity request reaches the attacker room's thread and gets
    // its 400; in connected mode it arrives on the victim's connected socket and is
    // refused there, before any handoff, like any request from a pinned address that
    // names another session.
    let (want_400, want_conflicts) = if steering == "ebpf" { (1, 1) } else { (0, 2) };
    assert_eq!(d("bad_request"), want_400, "{after}");
    assert_eq!(
        conflicts, want_conflicts,
        "requests naming another session from a pinned address refused: {after}"
    );
    assert_eq!(
        sum_threads(&after, "pins"),
        sum_threads(&before, "pins"),
        "no new pin: {after}"
    );
    let av = participant_view(&gw, &attacker);
    assert_eq!(
        av["addresses"].as_array().map(Vec::len),
        Some(0),
        "attacker pinned nothing: {av}"
    );

    // The victim's media still reaches the victim's session on the victim's thread.
    for s in 5..10 {
        client.send(gw.udp, &fake_dtls(s));
    }
    assert!(
        eventually(Duration::from_secs(5), || participant_view(&gw, &victim)
            ["rx_datagrams"]
            == 10),
        "victim traffic kept flowing: {}",
        participant_view(&gw, &victim)
    );
    let fin = gw.status();
    for t in 0..gw.threads {
        assert_eq!(thread_counter(&fin, t, "misdelivered"), 0, "{fin}");
        assert_eq!(thread_counter(&fin, t, "no_session"), 0, "{fin}");
    }
    assert_eq!(
        participant_view(&gw, &victim)["addresses"][0],
        client.addr().to_string()
    );
    if steering == "ebpf" {
        assert_eq!(
            ebpf_counter(&fin, "steered_by_flow") - ebpf_counter(&before, "steered_by_flow"),
            5,
            "the victim's datagrams were steered by its (unmoved) flow"
        );
    }
}

/// A Binding Request with USERNAME but neither MESSAGE-INTEGRITY nor FINGERPRINT.
fn username_only_request(server_ufrag: &str) -> Vec<u8> {
    let username = format!("{server_ufrag}:evil");
    let padded = (username.len() + 3) & !3;
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[0x42; 12]);
    m.extend_from_slice(&[0x00, 0x06]);
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.resize(20 + 4 + padded, 0);
    m
}

#[test]
fn ebpf_mode_forged_stun_never_moves_a_flow() {
    if !require_root() {
        return;
    }
    forged_requests_never_move_a_flow("ebpf");
}

#[test]
fn connected_mode_forged_stun_never_moves_a_flow() {
    forged_requests_never_move_a_flow("connected");
}

#[test]
fn nothing_is_pinned_before_a_valid_check() {
    let gw = Gateway::start("connected", 2);
    let p = gw.create("quiet-room");
    let client = Client::bind("127.0.0.3");
    // Media before any ICE check goes nowhere.
    for s in 0..3 {
        client.send(gw.udp, &fake_rtp(s));
    }
    assert_eq!(
        client.ice_check_with(gw.udp, &p.ufrag, "not-the-password-at-all", &p.pwd),
        StunReply::Error { code: 401 }
    );
    std::thread::sleep(Duration::from_millis(200));
    let v = participant_view(&gw, &p);
    assert_eq!(v["ice_state"], "new", "{v}");
    assert_eq!(v["rx_datagrams"], 0, "{v}");
    let s = gw.status();
    assert_eq!(sum_threads(&s, "pins"), 0);
    assert_eq!(
        sum_threads(&s, "no_session"),
        3,
        "unpinned media is dropped and counted: {s}"
    );
}

/// A refused pin (the address belongs to another session) must not cost the session one
/// of the addresses it already holds, even when its address list is full. The conflict
/// must come from another thread's pin (only the kernel map knows it there), so this runs
/// in eBPF mode with the two sessions' rooms on different threads.
#[test]
fn a_refused_pin_does_not_evict_a_full_sessions_addresses() {
    if !require_root() {
        return;
    }
    let gw = Gateway::start("ebpf", 2);
    let (victim, other) = two_rooms_on_different_threads(&gw);
    // The other session (other thread) pins address X.
    let x = victim_client();
    assert_eq!(
        x.ice_check(gw.udp, &other),
        StunReply::Success { mapped: x.addr() }
    );
    // The victim fills its 8 address slots.
    let own: Vec<Client> = (0..8).map(|_| Client::bind("127.0.0.4")).collect();
    for c in &own {
        assert_eq!(
            c.ice_check(gw.udp, &victim),
            StunReply::Success { mapped: c.addr() }
        );
    }
    assert_eq!(
        participant_view(&gw, &victim)["addresses"]
            .as_array()
            .map(Vec::len),
        Some(8)
    );
    // A valid check for the victim from X is refused by the kernel map (BPF_NOEXIST)...
    let spoof = spoofer_of(x.addr());
    spoof
        .send_to(
            &binding_request(&victim.ufrag, "evil", &victim.pwd, true),
            gw.udp,
        )
        .unwrap();
    assert!(eventually(Duration::from_secs(3), || sum_threads(
        &gw.status(),
        "pin_conflicts"
    ) == 1));
    // ...and the victim keeps all eight addresses; their media still arrives.
    let v = participant_view(&gw, &victim);
    assert_eq!(v["addresses"].as_array().map(Vec::len), Some(8), "{v}");
    for c in &own {
        c.send(gw.udp, &fake_dtls(1));
    }
    assert!(
        eventually(Duration::from_secs(5), || participant_view(&gw, &victim)
            ["rx_datagrams"]
            == 8),
        "{}",
        participant_view(&gw, &victim)
    );
}
