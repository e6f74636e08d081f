//! `cargo xtask bench metrics`: what scraping costs.
//!
//! 1. Time per `/metrics` request (sequential GETs against a gateway with sessions).
//! 2. The logic threads' per-datagram processing time and CPU per datagram under the same
//!    load, without scraping and with a scraper hitting `/metrics` every 100 ms.
#[path = "../tests/support/mod.rs"]
mod support;
mod util;

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;
use util::*;

const THREADS: usize = 2;

struct Sample {
    processing_ns: f64,
    cpu_ns_per_datagram: f64,
    datagrams: u64,
    scrapes: u64,
}

/// Mean processing time from the histogram's sum and count in /metrics.
fn histogram_totals(gw: &Gateway) -> (f64, f64) {
    let (_, text) = gw.get("/metrics");
    let text = text.as_str().unwrap_or_default().to_owned();
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("roomgate_datagram_processing_seconds_{suffix}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (total("sum"), total("count"))
}

fn measure(
    gw: &Gateway,
    clients: &[std::net::UdpSocket],
    scrape_every: Option<Duration>,
) -> Sample {
    let pid = gw.pid();
    let tids = threads_named(pid, "roomgate-logic");
    let before: Value = gw.status();
    let (sum0, count0) = histogram_totals(gw);
    let cpu0 = cpu_ns(pid, &tids);
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = scrape_every.map(|every| {
        let stop = stop.clone();
        let url = gw.url("/metrics");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = http("GET", &url);
                n += 1;
                std::thread::sleep(every);
            }
            n
        })
    });
    blast(clients, gw.udp);
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.map_or(0, |s| s.join().unwrap_or(0));
    std::thread::sleep(Duration::from_millis(200));
    let cpu = cpu_ns(pid, &tids) - cpu0;
    let (sum1, count1) = histogram_totals(gw);
    let after = gw.status();
    let datagrams =
        sum_threads(&after, "session_datagrams") - sum_threads(&before, "session_datagrams");
    Sample {
        processing_ns: (sum1 - sum0) / (count1 - count0).max(1.0) * 1e9,
        cpu_ns_per_datagram: cpu as f64 / datagrams.max(1) as f64,
        datagrams,
        scrapes,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let gw = Gateway::builder("ebpf", THREADS)
        .set("--log-level", "warn")
        .start();
    let clients = client_sockets();
    for (i, socket) in clients.iter().enumerate() {
        let p = gw.create(&format!("scraped-{}", i / PER_ROOM));
        let c = Client {
            socket: socket.try_clone().expect("clone"),
        };
        c.socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok();
        assert!(matches!(c.ice_check(gw.udp, &p), StunReply::Success { .. }));
    }

    // 1. Latency of one scrape.
    let mut times: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            let (code, _) = gw.get("/metrics");
            assert_eq!(code, 200);
            t.elapsed()
        })
        .collect();
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    let (_, body) = gw.get("/metrics");
    let bytes = body.as_str().map_or(0, str::len);

    // 2. Effect on the media path.
    let quiet = measure(&gw, &clients, None);
    let scraped = measure(&gw, &clients, Some(Duration::from_millis(100)));

    let mut report = String::new();
    let _ = writeln!(
        report,
        "## Metrics scrape cost (`cargo xtask bench metrics`)\n\nMachine: {}. eBPF mode, {THREADS} logic threads, {} sessions, \
         one sender thread on loopback for {} s per run.\n",
        machine(),
        clients.len(),
        RUN_FOR.as_secs()
    );
    let _ = writeln!(
        report,
        "`GET /metrics` ({bytes} bytes): p50 {:.0} µs, p99 {:.0} µs over 300 sequential requests.\n",
        p(0.5),
        p(0.99)
    );
    let _ = writeln!(report, "| run | datagrams | processing ns/datagram (histogram mean) | logic-thread CPU ns/datagram | scrapes |");
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    for (name, s) in [("no scraping", &quiet), ("scrape every 100 ms", &scraped)] {
        let _ = writeln!(
            report,
            "| {name} | {} | {:.0} | {:.0} | {} |",
            s.datagrams, s.processing_ns, s.cpu_ns_per_datagram, s.scrapes
        );
    }
    let _ = writeln!(
        report,
        "\nRatio scraped/quiet: processing {:.2}x, CPU per datagram {:.2}x.",
        scraped.processing_ns / quiet.processing_ns.max(1.0),
        scraped.cpu_ns_per_datagram / quiet.cpu_ns_per_datagram.max(1.0)
    );
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-metrics.md");
    let _ = std::fs::write(&out, &report);
}
