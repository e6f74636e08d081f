//! `/metrics` in the Prometheus text format.
//!
//! Built at scrape time from the logic threads' own counters (relaxed atomic loads) and
//! the eBPF map, so a scrape never takes a lock a logic thread could be waiting on.
//! Labels are bounded: thread index, mode, branch, outcome — never room or participant.
use std::fmt::Write as _;

use prometheus::{
    core::Collector, CounterVec, Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::ApiState;
use crate::{ice::StunOutcome, logic::STATE_NAMES, stats::PROCESSING_BUCKETS_NS};

/// A per-thread series: name, help, and how to read it from a thread's counters.
type ThreadSeries = (
    &'static str,
    &'static str,
    fn(&crate::stats::ThreadStats) -> u64,
);

fn counter(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

pub fn render(state: &ApiState) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let mut collectors: Vec<Box<dyn Collector>> = Vec::new();

    let build = gauge(
        "roomgate_build_info",
        "Build information; always 1.",
        &["version", "ebpf_embedded"],
    )?;
    build
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            if crate::steering::ebpf::embedded() {
                "true"
            } else {
                "false"
            },
        ])
        .set(1);
    collectors.push(Box::new(build));

    let mode = gauge(
        "roomgate_steering_mode",
        "Active packet steering mode (1 for the active one).",
        &["mode"],
    )?;
    for m in ["ebpf", "connected"] {
        mode.with_label_values(&[m])
            .set(i64::from(state.steering.mode.as_str() == m));
    }
    collectors.push(Box::new(mode));
    let fallback = gauge(
        "roomgate_steering_fallback",
        "1 when auto mode fell back to connected steering because eBPF was unavailable.",
        &[],
    )?;
    fallback
        .with_label_values(&[] as &[&str])
        .set(i64::from(state.steering.fallback_reason.is_some()));
    collectors.push(Box::new(fallback));

    let per_thread: [ThreadSeries; 10] = [
        (
            "roomgate_rx_datagrams_total",
            "Datagrams received by the logic thread.",
            |s| s.rx_datagrams.get(),
        ),
        (
            "roomgate_rx_bytes_total",
            "Bytes received by the logic thread.",
            |s| s.rx_bytes.get(),
        ),
        (
            "roomgate_tx_datagrams_total",
            "Datagrams sent by the logic thread.",
            |s| s.tx_datagrams.get(),
        ),
        (
            "roomgate_tx_bytes_total",
            "Bytes sent by the logic thread.",
            |s| s.tx_bytes.get(),
        ),
        (
            "roomgate_handoffs_total",
            "Datagrams passed to the owning thread (connected mode).",
            |s| s.handoffs.get(),
        ),
        (
            "roomgate_misdelivered_total",
            "Datagrams that reached a thread another thread owns.",
            |s| s.misdelivered.get(),
        ),
        (
            "roomgate_no_session_total",
            "Non-STUN datagrams from an address without a session.",
            |s| s.no_session.get(),
        ),
        (
            "roomgate_pins_total",
            "Client addresses pinned to a thread after a valid check.",
            |s| s.pins.get(),
        ),
        (
            "roomgate_pin_conflicts_total",
            "Valid checks refused: address pinned to another session.",
            |s| s.pin_conflicts.get(),
        ),
        (
            "roomgate_consent_expired_total",
            "Sessions whose ICE consent expired.",
            |s| s.consent_expired.get(),
        ),
    ];
    for (name, help, get) in per_thread {
        let c = counter(name, help, &["thread"])?;
        for (i, h) in state.threads.iter().enumerate() {
            c.with_label_values(&[&i.to_string()]).inc_by(get(&h.stats));
        }
        collectors.push(Box::new(c));
    }
    let gauges: [ThreadSeries; 3] = [
        ("roomgate_rooms", "Rooms owned by the logic thread.", |s| {
            s.rooms.get()
        }),
        ("roomgate_sessions", "Sessions on the logic thread.", |s| {
            s.sessions.get()
        }),
        (
            "roomgate_connected_sockets",
            "Per-client connected sockets (connected mode).",
            |s| s.connected_sockets.get(),
        ),
    ];
    for (name, help, get) in gauges {
        let g = gauge(name, help, &["thread"])?;
        for (i, h) in state.threads.iter().enumerate() {
            g.with_label_values(&[&i.to_string()])
                .set(get(&h.stats) as i64);
        }
        collectors.push(Box::new(g));
    }
    let busy = CounterVec::new(
        Opts::new(
            "roomgate_thread_busy_seconds_total",
            "Time the logic thread spent handling events (not waiting in poll).",
        ),
        &["thread"],
    )?;
    let by_state = gauge(
        "roomgate_sessions_by_state",
        "Sessions per ICE state (refreshed every 500 ms).",
        &["thread", "state"],
    )?;
    let mut pinned = 0u64;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        busy.with_label_values(&[&t])
            .inc_by(h.stats.busy_ns.get() as f64 / 1e9);
        for (name, c) in STATE_NAMES.iter().zip(&h.stats.sessions_by_state) {
            by_state
                .with_label_values(&[t.as_str(), name])
                .set(c.get() as i64);
        }
        pinned += h.stats.pins.get().saturating_sub(h.stats.unpins.get());
    }
    collectors.push(Box::new(busy));
    collectors.push(Box::new(by_state));
    let flows = gauge(
        "roomgate_flows_pinned",
        "Client addresses currently pinned (eBPF flow-map entries or connected sockets).",
        &[],
    )?;
    flows.with_label_values(&[] as &[&str]).set(pinned as i64);
    collectors.push(Box::new(flows));
    if let Some(capacity) = state.steering.flows_capacity() {
        let cap = gauge(
            "roomgate_flows_capacity",
            "Capacity of the eBPF flow map.",
            &[],
        )?;
        cap.with_label_values(&[] as &[&str])
            .set(i64::from(capacity));
        collectors.push(Box::new(cap));
    }

    let stun = counter(
        "roomgate_stun_requests_total",
        "STUN messages handled, by outcome.",
        &["thread", "outcome"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        for o in StunOutcome::ALL {
            stun.with_label_values(&[&i.to_string(), o.name()])
                .inc_by(h.stats.stun(o).get());
        }
    }
    collectors.push(Box::new(stun));

    if let Some(counters) = state.steering.ebpf_counters() {
        let ebpf = counter(
            "roomgate_ebpf_decisions_total",
            "Decisions of the sk_reuseport program, summed over CPUs (branch=packets counts every run).",
            &["branch"],
        )?;
        for (branch, v) in counters {
            ebpf.with_label_values(&[branch]).inc_by(v);
        }
        collectors.push(Box::new(ebpf));
    }

    for c in collectors {
        registry.register(c)?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    processing_histogram(state, &mut text);
    Ok(text)
}

/// The per-datagram processing-time histogram, written directly in the text format: the
/// threads keep fixed buckets, which the prometheus crate's Histogram cannot be set from.
fn processing_histogram(state: &ApiState, out: &mut String) {
    const NAME: &str = "roomgate_datagram_processing_seconds";
    let _ = writeln!(
        out,
        "# HELP {NAME} Time a logic thread spends on one datagram (averaged per recvmmsg batch)."
    );
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    for (i, h) in state.threads.iter().enumerate() {
        let hist = &h.stats.processing;
        let mut cumulative = 0;
        for (bound, bucket) in PROCESSING_BUCKETS_NS.iter().zip(&hist.buckets) {
            cumulative += bucket.get();
            let le = *bound as f64 / 1e9;
            let _ = writeln!(
                out,
                "{NAME}_bucket{{thread=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        // Buckets are read one by one while the thread may be writing: derive +Inf and
        // _count from the same reads so the exposition stays self-consistent.
        let total = cumulative + hist.buckets[PROCESSING_BUCKETS_NS.len()].get();
        let _ = writeln!(out, "{NAME}_bucket{{thread=\"{i}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{NAME}_sum{{thread=\"{i}\"}} {}",
            hist.sum_ns.get() as f64 / 1e9
        );
        let _ = writeln!(out, "{NAME}_count{{thread=\"{i}\"}} {total}");
    }
}
