//! Churn soak: WHIP publishers and WHEP viewers (the Rust client, real ICE, DTLS and
//! SRTP) join and leave continuously with media, in both steering modes. They leave by
//! DELETE, by DTLS close_notify, or by vanishing (consent expires after 30 s), and every
//! third room also sends malformed traffic (support/churn.rs).
//!
//! At the end every counter reconciles with what the clients did, the gateway holds no
//! session, room, pin or connected socket, the kernel's own flow map (read by id, not
//! through roomgate's gauge) is empty, and the process's open fds and RSS are back at
//! their baseline within [`FD_SLACK`] and [`RSS_SLACK_KIB`].
//!
//! `ROOMGATE_SOAK_SECS` sets each mode's run (default 60 s: both modes together make
//! the 2 minutes `cargo xtask test` spends here); `cargo xtask soak --minutes N` runs
//! the same tests for N minutes each and keeps the report they print.
#[path = "support/churn.rs"]
mod churn;
#[path = "support/flowmap.rs"]
mod flowmap;
#[path = "support/process.rs"]
mod process;
mod support;
#[path = "support/webrtc.rs"]
mod webrtc;

use std::time::{Duration, Instant};

use churn::{Leave, Tally, ALL_LEAVES};
use serde_json::Value;
use support::{eventually, status_total, Gateway};

const THREADS: usize = 2;
const WORKERS: usize = 4;
/// Churn stops this long before the run's end: vanished sessions expire 30 s after their
/// last consent check, then every count must settle.
const DRAIN: Duration = Duration::from_secs(35);
/// Warm-up before the baseline: allocator arenas, the DTLS runtime's threads and buffers
/// that exist once per process, not per session.
const WARMUP: Duration = Duration::from_secs(4);
/// Open fds may differ from the baseline by this much (none expected: every socket and
/// timer a session opens is closed when it ends).
const FD_SLACK: usize = 0;
/// RSS may grow by this much over the baseline: freed heap that malloc keeps for reuse
/// after the busiest moment (about 250 sessions at once, mostly vanished peers waiting
/// out consent, ~60 KiB each: +16 MiB measured over 20 and 30 minutes, flat after the
/// first minutes). Growth with time is what the checkpoint bound catches.
const RSS_SLACK_KIB: u64 = 24 * 1024;
/// Runs at least this long drain once at a quarter of their time (a checkpoint); the end
/// must then be within [`RSS_GROWTH_KIB`] of it.
const CHECKPOINT_AFTER_SECS: u64 = 600;
const RSS_GROWTH_KIB: u64 = 4 * 1024;

fn run_secs() -> u64 {
    std::env::var("ROOMGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

struct Delta<'a> {
    before: &'a Value,
    after: &'a Value,
}

impl Delta<'_> {
    fn get(&self, path: &str) -> u64 {
        status_total(self.after, path) - status_total(self.before, path)
    }
    fn ebpf(&self, key: &str) -> u64 {
        let v = |s: &Value| s["ebpf"][key].as_u64().unwrap_or(0);
        v(self.after) - v(self.before)
    }
}

/// Sessions, rooms and connected sockets on every thread.
fn held(gw: &Gateway) -> (u64, u64, u64) {
    let s = gw.status();
    (
        status_total(&s, "sessions"),
        status_total(&s, "rooms"),
        status_total(&s, "connected_sockets"),
    )
}

/// Churn until `until`, printing the gateway's sessions, fds and RSS every minute.
fn churn_for(gw: &Gateway, t: &Tally, mode: &str, until: Instant, started: Instant, tag: &str) {
    let pid = gw.pid();
    std::thread::scope(|s| {
        // A sample a minute, so a long run shows whether anything grows with time.
        s.spawn(|| {
            let mut next = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(500));
                if Instant::now() >= next {
                    next += Duration::from_secs(60);
                    let (sessions, rooms, _) = held(gw);
                    println!(
                        "{tag}: t={:>5}s sessions={sessions} rooms={rooms} fds={} rss={} KiB",
                        started.elapsed().as_secs(),
                        process::open_fds(pid),
                        process::rss_kib(pid)
                    );
                }
            }
        });
        let base = format!("http://{}", gw.http);
        churn::run(
            &base,
            &format!("soak{mode}"),
            WORKERS,
            until,
            &ALL_LEAVES,
            t,
        );
    });
}

/// Wait for consent expiry to end the vanished sessions (their sockets stay open until
/// then); true once nothing is held.
fn drain(gw: &Gateway, t: &Tally) -> bool {
    eventually(DRAIN + Duration::from_secs(15), || {
        t.release_held(false);
        held(gw) == (0, 0, 0)
    })
}

/// Open fds once the API has closed its side of the HTTP connections just used (the
/// fewest over half a second).
fn quiet_fds(pid: u32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            process::open_fds(pid)
        })
        .min()
        .unwrap_or(usize::MAX)
}

fn soak(mode: &str) {
    if mode == "ebpf" && !support::require_root() {
        return;
    }
    let secs = run_secs();
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    // Info, not debug: a long run would otherwise keep every session's log lines in memory.
    let gw = Gateway::builder(mode, THREADS)
        .set("--public-ip", "127.0.0.1")
        .set("--log-level", "info")
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    let base = format!("http://{}", gw.http);
    let pid = gw.pid();
    let tag = format!("soak[{mode}]");

    let warm = Tally::default();
    churn::run(
        &base,
        &format!("warm{mode}"),
        WORKERS,
        Instant::now() + WARMUP,
        &[Leave::Delete, Leave::CloseNotify],
        &warm,
    );
    assert!(
        warm.failures().is_empty(),
        "{tag} warm-up: {:?}",
        warm.failures()
    );
    assert!(
        eventually(Duration::from_secs(10), || held(&gw) == (0, 0, 0)),
        "{tag}: warm-up sessions remain: {:?}",
        held(&gw)
    );
    let before = gw.status();
    let (fds0, rss0) = (quiet_fds(pid), process::rss_kib(pid));
    let flows = match mode {
        "ebpf" => {
            let capacity = before["ebpf"]["flows_capacity"]
                .as_u64()
                .expect("ebpf.flows_capacity") as u32;
            Some(flowmap::flows_map_id(pid, capacity))
        }
        _ => None,
    };
    println!("{tag}: baseline after warm-up: {fds0} fds, RSS {rss0} KiB");

    let t = Tally::default();
    let churn_until = end
        .checked_sub(DRAIN)
        .unwrap_or(started)
        .max(Instant::now() + Duration::from_secs(10));
    // A long run also drains once at a quarter of its time: memory the allocator keeps
    // after the busiest moment stays out of the comparison, growth with time does not.
    let checkpoint = (secs >= CHECKPOINT_AFTER_SECS).then(|| {
        let until = started + Duration::from_secs(secs / 4);
        churn_for(&gw, &t, mode, until, started, &tag);
        let drained = drain(&gw, &t);
        assert!(drained, "{tag}: checkpoint: still held {:?}", held(&gw));
        let at = (quiet_fds(pid), process::rss_kib(pid));
        println!(
            "{tag}: checkpoint at t={} s, drained: {} fds, RSS {} KiB",
            started.elapsed().as_secs(),
            at.0,
            at.1
        );
        at
    });
    churn_for(&gw, &t, mode, churn_until, started, &tag);
    let churned = started.elapsed();
    let drained = drain(&gw, &t);
    t.release_held(true);
    assert!(
        drained,
        "{tag}: still held (sessions, rooms, connected sockets) {:?}",
        held(&gw)
    );
    assert!(
        t.failures().is_empty(),
        "{tag}: client failures: {:?}",
        t.failures()
    );

    let g = Tally::get;
    let connected = g(&t.connected);
    let vanished = g(&t.vanished);
    // The media counters are folded in about every 500 ms; wait for the last fold.
    let settled = |s: &Value| {
        let d = Delta {
            before: &before,
            after: s,
        };
        d.get("media.dtls_closed") + d.get("media.sessions_timed_out") + g(&t.deleted) == connected
            && d.get("media.rtp_forwarded") == g(&t.rtp_received)
    };
    let mut after = gw.status();
    eventually(Duration::from_secs(5), || {
        after = gw.status();
        settled(&after)
    });
    let d = Delta {
        before: &before,
        after: &after,
    };
    let drops = d.get("socket_receive_drops.group") + d.get("socket_receive_drops.connected");
    let report = format!(
        "{tag}: {secs} s ({} s churn), {} cycles, {connected} sessions: {} deleted, {} closed, {vanished} vanished; \
         RTP sent {} received {} before-keys {} forwarded {} viewer-decrypted {}; malformed sent tag {} type {} rtcp {}; \
         gateway counted srtp auth {} unknown_type {} rtcp_malformed {} no_session {}; \
         receive drops {drops} (group {}, connected {}); fds {fds0} -> {}; RSS {rss0} -> {} KiB (peak {} KiB)",
        churned.as_secs(),
        g(&t.cycles),
        g(&t.deleted),
        g(&t.closed),
        g(&t.rtp_sent),
        d.get("media.rtp_received"),
        d.get("media.srtp_before_keys"),
        d.get("media.rtp_forwarded"),
        g(&t.rtp_received),
        g(&t.bad_tag_sent),
        g(&t.unknown_type_sent),
        g(&t.bad_rtcp_sent),
        d.get("media.srtp_unprotect_failures.auth"),
        d.get("unknown_type") + d.ebpf("unknown_type"),
        d.get("media.rtcp_malformed"),
        d.get("no_session"),
        d.get("socket_receive_drops.group"),
        d.get("socket_receive_drops.connected"),
        process::open_fds(pid),
        process::rss_kib(pid),
        process::peak_rss_kib(pid),
    );
    println!("{report}");

    // Sessions: each one the clients set up ends exactly once, by its reason.
    assert_eq!(
        connected,
        g(&t.deleted) + g(&t.closed) + vanished,
        "{report}"
    );
    assert_eq!(d.get("media.dtls_started"), connected, "{report}");
    assert_eq!(d.get("media.dtls_completed"), connected, "{report}");
    assert_eq!(d.get("media.dtls_failed"), 0, "{report}");
    assert_eq!(d.get("media.dtls_closed"), g(&t.closed), "{report}");
    assert_eq!(d.get("media.sessions_timed_out"), vanished, "{report}");
    assert_eq!(d.get("consent_expired"), vanished, "{report}");
    // The lifecycle counters say the same: created once, ended once under its reason.
    assert_eq!(d.get("sessions_created"), connected, "{report}");
    for (reason, want) in [
        ("deleted", g(&t.deleted)),
        ("dtls_closed", g(&t.closed)),
        ("consent_expired", vanished),
        ("connect_timeout", 0),
        ("dtls_failed", 0),
        ("room_closed", 0),
        ("abandoned", 0),
        ("shutdown", 0),
    ] {
        assert_eq!(
            d.get(&format!("sessions_ended.{reason}")),
            want,
            "sessions_ended.{reason}: {report}"
        );
    }
    // Media: every packet sent is received, and every copy forwarded is decrypted by its
    // viewer. Receive drops are reported, not asserted: in connected mode a new client
    // socket drops (and counts) whatever the kernel hashes to it between its bind and its
    // connect (the DROP_ALL filter of net::open_connected); only clients without a
    // socket of their own land there, with STUN checks and DTLS flights they retransmit.
    // A dropped media packet would fail the equalities here.
    assert_eq!(
        d.get("media.rtp_received") + d.get("media.srtp_before_keys"),
        g(&t.rtp_sent),
        "{report}"
    );
    assert_eq!(d.get("media.rtp_forwarded"), g(&t.rtp_received), "{report}");
    // Malformed traffic: each datagram counted once, under its own reason.
    assert_eq!(
        d.get("media.srtp_unprotect_failures.auth"),
        g(&t.bad_tag_sent),
        "{report}"
    );
    for other in ["malformed", "replay", "ssrc_limit", "other"] {
        assert_eq!(
            d.get(&format!("media.srtp_unprotect_failures.{other}")),
            0,
            "{other}: {report}"
        );
    }
    assert_eq!(
        d.get("unknown_type") + d.ebpf("unknown_type"),
        g(&t.unknown_type_sent),
        "{report}"
    );
    assert_eq!(
        d.get("media.rtcp_malformed"),
        g(&t.bad_rtcp_sent),
        "{report}"
    );
    assert_eq!(d.get("datagram_panics"), 0, "{report}");
    // Nothing held: sessions, rooms, media gauges, pins, connected sockets, kernel flows.
    assert_eq!(status_total(&after, "sessions"), 0, "{report}");
    assert_eq!(status_total(&after, "rooms"), 0, "{report}");
    assert_eq!(status_total(&after, "media.publishers"), 0, "{report}");
    assert_eq!(status_total(&after, "media.subscribers"), 0, "{report}");
    assert_eq!(status_total(&after, "connected_sockets"), 0, "{report}");
    assert_eq!(
        gw.metric_sum("roomgate_flows_pinned"),
        Some(0.0),
        "{report}"
    );
    if let Some(id) = flows {
        assert_eq!(
            flowmap::entries(id),
            0,
            "{tag}: kernel FLOWS map {id} not empty; {report}"
        );
    }
    // Resources: back to the baseline.
    // The API's side of our last HTTP connection closes a moment after ours.
    eventually(Duration::from_secs(3), || {
        process::open_fds(pid) <= fds0 + FD_SLACK
    });
    let (fds1, rss1) = (process::open_fds(pid), process::rss_kib(pid));
    assert!(
        fds1 <= fds0 + FD_SLACK,
        "{tag}: fds {fds0} -> {fds1}; {report}"
    );
    if let Some((fds_mid, rss_mid)) = checkpoint {
        assert!(
            fds1 <= fds_mid && rss1 <= rss_mid + RSS_GROWTH_KIB,
            "{tag}: grew since the checkpoint: fds {fds_mid} -> {fds1}, RSS {rss_mid} -> {rss1} KiB; {report}"
        );
    }
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "{tag}: RSS {rss0} -> {rss1} KiB; {report}"
    );
}

#[test]
fn soak_ebpf() {
    soak("ebpf");
}

#[test]
fn soak_connected() {
    soak("connected");
}
