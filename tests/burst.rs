//! Bursts: datagrams sent at once, as fast as one sender can, to the rooms of one logic
//! thread. In eBPF mode they all queue in that thread's one group socket; in connected
//! mode each client has its own socket. Every datagram must reach its owner, and where
//! the kernel does drop (a buffer configured too small on purpose), roomgate's drop
//! counter must equal the kernel's own count.
//!
//! Each test runs the gateway and its clients in a private network namespace that the
//! test thread enters, so `nstat` there counts this test's datagrams only.
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{netns::TestNetns, *};

const THREADS: usize = 2;
/// Clients, all in rooms of thread 0.
const CLIENTS: usize = 16;
/// Datagrams each client sends in the burst: 16 x 150 = 2,400.
const PER_CLIENT: u64 = 150;

/// REST participants in rooms owned by `thread`, each with a client whose address is
/// pinned by a real ICE check.
fn pinned_clients(gw: &Gateway, thread: usize) -> Vec<(Participant, Client)> {
    let mut out = Vec::new();
    for r in 0.. {
        if out.len() == CLIENTS {
            break;
        }
        assert!(r < 1000, "no rooms on thread {thread}");
        let p = gw.create(&format!("burst-{r}"));
        if p.thread != thread {
            let _ = gw.delete(&format!(
                "/api/rooms/{}/participants/{}",
                p.room, p.participant
            ));
            continue;
        }
        let client = Client::bind("127.0.0.1");
        assert_eq!(
            client.ice_check(gw.udp, &p),
            StunReply::Success {
                mapped: client.addr()
            }
        );
        out.push((p, client));
    }
    out
}

/// Every client sends its share back to back; no pause anywhere.
fn burst(gw: &Gateway, clients: &[(Participant, Client)]) -> u64 {
    let datagrams: Vec<Vec<u8>> = (0..PER_CLIENT)
        .map(|s| {
            if s % 2 == 0 {
                fake_rtp(s as u16)
            } else {
                fake_dtls(s as u32)
            }
        })
        .collect();
    let mut sent = 0;
    for d in &datagrams {
        for (_, c) in clients {
            c.send(gw.udp, d);
            sent += 1;
        }
    }
    sent
}

fn socket_drops(status: &Value) -> u64 {
    status["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| {
            t["socket_receive_drops"]["group"].as_u64().unwrap_or(0)
                + t["socket_receive_drops"]["connected"].as_u64().unwrap_or(0)
        })
        .sum()
}

fn metric_drops(gw: &Gateway) -> u64 {
    let body = ureq::get(&gw.url("/metrics"))
        .call()
        .expect("GET /metrics")
        .into_body()
        .read_to_string()
        .expect("metrics body");
    body.lines()
        .filter(|l| l.starts_with("roomgate_socket_receive_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn session_rx(gw: &Gateway, p: &Participant) -> u64 {
    let (code, v) = gw.get(&format!("/api/rooms/{}", p.room));
    assert_eq!(code, 200, "{v}");
    v["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .find(|x| x["participant"] == p.participant.as_str())
        .and_then(|x| x["rx_datagrams"].as_u64())
        .unwrap_or(0)
}

fn every_datagram_of_a_burst_reaches_its_owner(mode: &str) {
    let ns = TestNetns::enter(&mode[..1]);
    let gw = Gateway::builder(mode, THREADS)
        .set("--log-level", "info")
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    let clients = pinned_clients(&gw, 0);
    let kernel0 = ns.udp_rcvbuf_errors();
    let before = gw.status();
    let sent = burst(&gw, &clients);
    assert!(sent >= 2000, "a burst of {sent}");
    let all_arrived = eventually(Duration::from_secs(10), || {
        clients
            .iter()
            .all(|(p, _)| session_rx(&gw, p) == PER_CLIENT)
    });
    let after = gw.status();
    let counts: Vec<u64> = clients.iter().map(|(p, _)| session_rx(&gw, p)).collect();
    assert!(
        all_arrived,
        "{mode}: per-client arrivals {counts:?} (each must be {PER_CLIENT}); \
         kernel drops {}, roomgate drops {}",
        ns.udp_rcvbuf_errors() - kernel0,
        socket_drops(&after) - socket_drops(&before)
    );
    // Only the owner saw them: thread 1 received nothing, nothing was misdelivered.
    let delta = |t: usize, k: &str| thread_counter(&after, t, k) - thread_counter(&before, t, k);
    assert_eq!(
        delta(0, "rx_datagrams"),
        sent,
        "{mode}: owner's receive count"
    );
    assert_eq!(delta(1, "rx_datagrams"), 0, "{mode}: other thread");
    assert_eq!(sum_threads(&after, "misdelivered"), 0);
    assert_eq!(
        sum_threads(&after, "handoffs"),
        sum_threads(&before, "handoffs"),
        "{mode}: every client was pinned before the burst"
    );
    assert_eq!(ns.udp_rcvbuf_errors(), kernel0, "kernel dropped nothing");
    assert_eq!(socket_drops(&after), 0, "roomgate counted no drop");
    if mode == "ebpf" {
        assert!(
            ebpf_counter(&after, "steered_by_flow") - ebpf_counter(&before, "steered_by_flow")
                >= sent,
            "{after}"
        );
    }
}

#[test]
fn ebpf_mode_burst_of_2400_datagrams_to_one_thread_loses_nothing() {
    if !require_root() {
        return;
    }
    every_datagram_of_a_burst_reaches_its_owner("ebpf");
}

#[test]
fn connected_mode_burst_of_2400_datagrams_to_one_thread_loses_nothing() {
    if !require_root() {
        return;
    }
    every_datagram_of_a_burst_reaches_its_owner("connected");
}

/// A receive buffer configured far too small, and a burst that arrives while the gateway
/// is stopped: the kernel must drop, and roomgate must report exactly what it counted, in `/api/status` and in `/metrics`. Every
/// datagram sent is then either received or counted as dropped.
fn drops_match_the_kernel(mode: &str) {
    let ns = TestNetns::enter(&format!("o{}", &mode[..1]));
    let gw = Gateway::builder(mode, THREADS)
        .set("--log-level", "info")
        .set("--recv-buffer", "4K")
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    let status = gw.status();
    let recv = &status["socket_buffers"]["recv"];
    assert_eq!(recv["requested"], 4096, "{status}");
    assert!(
        recv["forced"].as_bool().unwrap_or(false),
        "root may force: {status}"
    );
    let clients = pinned_clients(&gw, 0);
    let kernel0 = ns.udp_rcvbuf_errors();
    let before = gw.status();
    // The gateway is stopped while the burst arrives, as a descheduled thread would be,
    // so the tiny buffer overflows whatever the scheduler does; then it drains the rest.
    gw.freeze();
    let sent = burst(&gw, &clients);
    gw.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut kernel, mut ours, mut received);
    loop {
        let now = gw.status();
        kernel = ns.udp_rcvbuf_errors() - kernel0;
        ours = socket_drops(&now) - socket_drops(&before);
        received = sum_threads(&now, "rx_datagrams") - sum_threads(&before, "rx_datagrams");
        if (kernel == ours && ours + received == sent) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        kernel > 0,
        "{mode}: a 4 KiB buffer must overflow (sent {sent})"
    );
    assert_eq!(
        ours, kernel,
        "{mode}: roomgate's drop count vs the kernel's"
    );
    assert_eq!(ours + received, sent, "{mode}: received + dropped = sent");
    assert_eq!(
        metric_drops(&gw),
        ours,
        "{mode}: /metrics agrees with /api/status"
    );
    let kind = if mode == "ebpf" { "group" } else { "connected" };
    let on_kind: u64 = gw.status()["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["socket_receive_drops"][kind].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(on_kind, ours, "{mode}: drops are on the {kind} socket(s)");
}

#[test]
fn ebpf_mode_overflow_drops_equal_the_kernels_count() {
    if !require_root() {
        return;
    }
    drops_match_the_kernel("ebpf");
}

#[test]
fn connected_mode_overflow_drops_equal_the_kernels_count() {
    if !require_root() {
        return;
    }
    drops_match_the_kernel("connected");
}
