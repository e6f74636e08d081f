//! Address change without an ICE restart: a WHIP/WHEP client whose source address changes
//! mid-call (NAT rebinding, Wi-Fi to LTE) keeps its session, DTLS and SRTP state; its
//! consent checks with valid MESSAGE-INTEGRITY from the new address move its pin and its
//! media there. A spoofed move (a check with a wrong MESSAGE-INTEGRITY, or media without
//! any check) moves nothing.
//!
//! Everything runs in two network namespaces of the test's own, joined by a veth pair:
//! the gateway on 198.51.100.1, the clients on 198.51.100.0/24. The moving client's
//! socket is bound to the wildcard address, so its datagrams leave from whatever address
//! the route names; the move adds a route to the gateway with the new source address and
//! deletes the old address, so the gateway's datagrams to the old one are lost, as they
//! are after a real network change. The client itself is the Rust WHIP/WHEP client of
//! `support/webrtc.rs`: it nominates once (USE-CANDIDATE on its first check) and then
//! sends consent checks without USE-CANDIDATE, like aioice.
mod support;
#[path = "support/webrtc.rs"]
mod webrtc;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    binding_request, ebpf_counter, eventually,
    netns::{in_netns, ip},
    require_root, stun_counter, sum_threads, Gateway,
};
use webrtc::{publish, rtcp, subscribe, Kind, Peer, PeerConfig, RtpPacket, Stream};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The moving client's address before and after the move.
const OLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NEW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// The client that stays where it is.
const STILL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 4);
/// Where the spoofer sends from.
const SPOOF: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// The issue's bound for media to resume after the move.
const RESUME: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(5);
/// Consent checks every 400 ms: with the gateway's 1 s of silence before a check without
/// USE-CANDIDATE moves the path, the third check from the new address moves it.
const CONSENT_EVERY: Duration = Duration::from_millis(400);
/// One Opus packet every 20 ms.
const PACKET_EVERY: Duration = Duration::from_millis(20);

/// The gateway's and the clients' namespaces, removed on drop (with their veth pair).
struct Topology {
    gw: String,
    cli: String,
    /// The clients' end of the veth pair.
    dev: String,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let base = format!("rgm{}{tag}", std::process::id() % 10_000);
        let t = Topology {
            gw: format!("{base}gw"),
            cli: format!("{base}cl"),
            dev: format!("{base}c"),
        };
        for ns in [&t.gw, &t.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let g = format!("{base}g");
        ip(&[
            "link", "add", &g, "netns", &t.gw, "type", "veth", "peer", "name", &t.dev, "netns",
            &t.cli,
        ]);
        ip(&[
            "-n",
            &t.gw,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            &g,
        ]);
        // OLD is the subnet's primary address, so the wildcard socket sends from it; the
        // others are /32s of their own, which survive OLD's removal.
        ip(&[
            "-n",
            &t.cli,
            "addr",
            "add",
            &format!("{OLD}/24"),
            "dev",
            &t.dev,
        ]);
        for a in [NEW, STILL, SPOOF] {
            ip(&[
                "-n",
                &t.cli,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                &t.dev,
            ]);
        }
        ip(&["-n", &t.gw, "link", "set", &g, "up"]);
        ip(&["-n", &t.cli, "link", "set", &t.dev, "up"]);
        t
    }

    /// The network change: datagrams to the gateway leave from NEW from now on, and OLD
    /// is gone, so whatever the gateway still sends there is lost.
    fn move_client(&self) {
        ip(&[
            "-n",
            &self.cli,
            "route",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            &self.dev,
            "src",
            &NEW.to_string(),
        ]);
        ip(&[
            "-n",
            &self.cli,
            "addr",
            "del",
            &format!("{OLD}/24"),
            "dev",
            &self.dev,
        ]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mover {
    Publisher,
    Subscriber,
    /// A subscriber that also sends a check with USE-CANDIDATE from its new address as
    /// soon as it moved, as Chrome does on its selected pair: media moves at once.
    RenominatingSubscriber,
}

#[test]
fn a_subscriber_moves_ebpf() {
    if require_root() {
        mobility("ebpf", Mover::Subscriber);
    }
}

#[test]
fn a_subscriber_moves_connected() {
    if require_root() {
        mobility("connected", Mover::Subscriber);
    }
}

#[test]
fn a_publisher_moves_ebpf() {
    if require_root() {
        mobility("ebpf", Mover::Publisher);
    }
}

#[test]
fn a_publisher_moves_connected() {
    if require_root() {
        mobility("connected", Mover::Publisher);
    }
}

#[test]
fn a_renominating_subscriber_moves_ebpf() {
    if require_root() {
        mobility("ebpf", Mover::RenominatingSubscriber);
    }
}

#[test]
fn a_renominating_subscriber_moves_connected() {
    if require_root() {
        mobility("connected", Mover::RenominatingSubscriber);
    }
}

/// The gateway's view of one participant.
fn listed(gw: &Gateway, cli: &str, room: &str, participant: &str) -> Option<Value> {
    let (code, v) = in_netns(cli, || gw.get(&format!("/api/rooms/{room}")));
    assert_eq!(code, 200, "GET /api/rooms/{room}: {v}");
    v["participants"]
        .as_array()?
        .iter()
        .find(|p| p["participant"] == participant)
        .cloned()
}

/// Where the gateway has the participant: (pinned addresses, media path).
fn placed(gw: &Gateway, cli: &str, room: &str, participant: &str) -> (Vec<String>, String) {
    let p = listed(gw, cli, room, participant).unwrap_or(Value::Null);
    let addresses = p["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (addresses, p["selected"].as_str().unwrap_or("").to_owned())
}

/// Send `n` Opus packets, one per [`PACKET_EVERY`] (a live stream's rate, not a retry).
fn stream(publisher: &Peer, audio: &mut Stream, n: usize) -> Vec<RtpPacket> {
    let start = Instant::now();
    (0..n)
        .map(|i| {
            let at = start + PACKET_EVERY * i as u32;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let p = audio.next(160, 1);
            publisher.send_rtp(&p);
            p
        })
        .collect()
}

/// The subscriber receives exactly `sent` (by seq, in order) and nothing else.
fn assert_exactly(what: &str, subscriber: &Peer, sent: &[RtpPacket], gw: &Gateway) {
    let mut got = subscriber.recv_rtp_n(sent.len(), WAIT);
    got.extend(subscriber.collect_rtp(Duration::from_millis(300)));
    let got: Vec<u16> = got.iter().map(|r| r.packet.seq).collect();
    let want: Vec<u16> = sent.iter().map(|p| p.seq).collect();
    assert_eq!(
        got,
        want,
        "{what}: the subscriber's packets (by seq)\n{}",
        tail(gw)
    );
}

fn tail(gw: &Gateway) -> String {
    let s = gw.stderr();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn mobility(steering: &str, mover: Mover) {
    let tag = format!(
        "{}{}",
        &steering[..1],
        match mover {
            Mover::Publisher => "p",
            Mover::Subscriber => "s",
            Mover::RenominatingSubscriber => "r",
        }
    );
    let topo = Topology::new(&tag);
    let gw = Gateway::builder(steering, 2)
        .set("--udp-bind", format!("{GATEWAY}:0"))
        .set("--http-bind", format!("{GATEWAY}:0"))
        .wrapper(["ip", "netns", "exec", topo.gw.as_str()])
        .start();
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    let base = format!("http://{}", gw.http);
    let room = format!("mobility-{tag}");
    let config = |role_publisher: bool, moves: bool| {
        let mut c = if role_publisher {
            PeerConfig::publisher()
        } else {
            PeerConfig::subscriber()
        };
        c.bind_ip = IpAddr::V4(if moves { Ipv4Addr::UNSPECIFIED } else { STILL });
        c.consent_interval = Some(CONSENT_EVERY);
        c
    };
    let publisher = in_netns(&topo.cli, || {
        publish(&base, &room, config(true, mover == Mover::Publisher))
    });
    let subscriber = in_netns(&topo.cli, || {
        subscribe(
            &base,
            &room,
            Some(&publisher.participant),
            config(false, mover != Mover::Publisher),
        )
    });
    let moving = match mover {
        Mover::Publisher => &publisher,
        Mover::Subscriber | Mover::RenominatingSubscriber => &subscriber,
    };
    let port = moving.local.port();
    let (old, new) = (
        SocketAddr::from((OLD, port)).to_string(),
        SocketAddr::from((NEW, port)).to_string(),
    );
    let connected = eventually(WAIT, || {
        [&publisher, &subscriber].iter().all(|p| {
            listed(&gw, &topo.cli, &room, &p.participant)
                .is_some_and(|v| v["dtls_state"] == "connected")
        })
    });
    assert!(connected, "both DTLS-connected\n{}", tail(&gw));
    assert_eq!(
        placed(&gw, &topo.cli, &room, &moving.participant),
        (vec![old.clone()], old.clone())
    );

    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    let sent = stream(&publisher, &mut audio, 25);
    assert_exactly("before the move", &subscriber, &sent, &gw);

    // A spoofed move: from another address, a check for the moving client's session with
    // a wrong MESSAGE-INTEGRITY, and a copy of its SRTP/SRTCP without any check.
    let status = || in_netns(&topo.cli, || gw.status());
    let before = status();
    let spoofer = in_netns(&topo.cli, || {
        UdpSocket::bind((SPOOF, 0)).expect("bind spoofer")
    });
    let forged = binding_request(
        &moving.answer.ice_ufrag,
        &moving.offer.ice_ufrag,
        "forged-password-forged-pw",
        true,
    );
    spoofer.send_to(&forged, gw.udp).expect("send forged check");
    let media_copy = match mover {
        Mover::Publisher => publisher.protect_rtp(&audio.next(160, 1).to_bytes()),
        Mover::Subscriber | Mover::RenominatingSubscriber => {
            subscriber.protect_rtcp(&rtcp::empty_rr(subscriber.rtcp_ssrc()))
        }
    };
    spoofer
        .send_to(&media_copy, gw.udp)
        .expect("send media copy");
    // eBPF mode drops datagrams of unpinned flows in the kernel; connected mode finds no
    // session for them.
    let refused_media = |s: &Value| match steering {
        "ebpf" => ebpf_counter(s, "flow_miss"),
        _ => sum_threads(s, "no_session"),
    };
    let mut last = Value::Null;
    let counted = eventually(WAIT, || {
        last = status();
        stun_counter(&last, "unauthorized") == stun_counter(&before, "unauthorized") + 1
            && refused_media(&last) == refused_media(&before) + 1
    });
    assert!(
        counted,
        "the spoof is refused and counted: {last}\n{}",
        tail(&gw)
    );
    let sent = stream(&publisher, &mut audio, 25);
    assert_exactly("after the spoofed move", &subscriber, &sent, &gw);
    let after = status();
    assert_eq!(
        stun_counter(&after, "unauthorized"),
        stun_counter(&before, "unauthorized") + 1
    );
    assert_eq!(refused_media(&after), refused_media(&before) + 1);
    assert_eq!(sum_threads(&after, "pins"), sum_threads(&before, "pins"));
    assert_eq!(
        placed(&gw, &topo.cli, &room, &moving.participant),
        (vec![old.clone()], old.clone()),
        "nothing moved"
    );

    // The move. Media keeps flowing from the publisher meanwhile.
    let before = status();
    let moved_at = Instant::now();
    topo.move_client();
    if mover == Mover::RenominatingSubscriber {
        moving.send_raw(&binding_request(
            &moving.answer.ice_ufrag,
            &moving.offer.ice_ufrag,
            &moving.answer.ice_pwd,
            true,
        ));
    }
    // 3 s of media, well past RESUME.
    let during = stream(&publisher, &mut audio, 150);
    let got = subscriber.collect_rtp(Duration::from_millis(300));
    let first = got
        .first()
        .unwrap_or_else(|| panic!("no media after the move\n{}", tail(&gw)));
    let resumed = first.at.saturating_duration_since(moved_at);
    // A nomination moves the path at once, before the old address has been silent for
    // the 1 s that plain consent checks wait for.
    let bound = match mover {
        Mover::RenominatingSubscriber => Duration::from_millis(500),
        _ => RESUME,
    };
    assert!(
        resumed <= bound,
        "media resumed {resumed:?} after the move\n{}",
        tail(&gw)
    );
    // From the first packet on, nothing is lost: the resumed stream is a tail of the sent.
    let tail_seqs: Vec<u16> = got.iter().map(|r| r.packet.seq).collect();
    let sent_seqs: Vec<u16> = during.iter().map(|p| p.seq).collect();
    assert!(
        sent_seqs.ends_with(&tail_seqs),
        "after resuming, every packet arrives: got {tail_seqs:?} of {sent_seqs:?}"
    );
    eprintln!(
        "{steering} {mover:?}: media resumed {resumed:?} after the move, {} of {} packets during",
        got.len(),
        during.len()
    );
    let mut now = (Vec::new(), String::new());
    let placed_new = eventually(WAIT, || {
        now = placed(&gw, &topo.cli, &room, &moving.participant);
        now == (vec![new.clone()], new.clone())
    });
    assert!(
        placed_new,
        "pinned and selected at {new} only, the old pin released: {now:?}\n{}",
        tail(&gw)
    );
    let after = status();
    assert_eq!(
        sum_threads(&after, "pins"),
        sum_threads(&before, "pins") + 1
    );
    assert_eq!(
        sum_threads(&after, "unpins"),
        sum_threads(&before, "unpins") + 1
    );
    assert_eq!(
        sum_threads(&after, "pin_conflicts"),
        sum_threads(&before, "pin_conflicts")
    );

    let sent = stream(&publisher, &mut audio, 25);
    assert_exactly("after the move", &subscriber, &sent, &gw);
    let c = moving.counters();
    assert_eq!(
        (
            c.srtp_failures.load(Relaxed),
            c.srtcp_failures.load(Relaxed)
        ),
        (0, 0),
        "the same SRTP state throughout"
    );
}
