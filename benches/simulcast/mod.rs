//! `cargo xtask bench media --simulcast`: what simulcast costs the forwarder, and how fast
//! the per-viewer estimator follows a change of capacity.
//!
//! Per steering mode, two gateways in turn on the same path, load generator and schedule:
//! publishers that send one video stream at `--kbps` (the plain media bench's load), then
//! publishers that send three layers at 1/4, 3/4 and 2x `--kbps`, bound by RID, with a
//! transport-wide sequence number on every layer packet. In the simulcast run the viewers
//! of each room ask for `low`, `mid` and `high` in turn (`?layer=` on WHEP), so with the
//! subscribers per room rounded up to a multiple of 3 both runs forward the same video
//! packet rate; the simulcast gateway receives twice as many video packets and drops
//! what nobody asked for. Reported per run: packets in, forwarded (gateway counter) and
//! received, loss against what each viewer's layer sent, the gateway's CPU per forwarded
//! packet, and the ratio of simulcast's to the single layer's. Before measuring, every
//! viewer must be listed on the layer it asked for (`GET /api/rooms/{room}`).
//!
//! The estimator part runs the gateway's own sans-IO simulator (`gateway::sfu::bwe::sim`)
//! on a virtual clock: capacity steps 2 Mbit/s -> 300 kbit/s and back, on the simulator's
//! default link and on one with 1% random loss, over `--bwe-seeds N` seeds (10).
mod convergence;
mod load;
mod report;

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use super::{
    connect_many, media_sum, percentile, start_gateway, status_drops, unprotect_failures,
    util::{
        cpu::{busy_between, cpu_jiffies, process_cpu_ns},
        cpu_ns, threads_named,
    },
    webrtc::{self, Delivery, Peer, PeerConfig},
    Net, Settings,
};
use load::{Counts, Source, Variant, LAYER_NAMES, RIDS};

/// How long the viewers may take to be listed on their layers (rate ranking, then a
/// keyframe on the layer) before the run fails.
const LAYER_WAIT: Duration = Duration::from_secs(20);

pub struct Run {
    pub mode: String,
    pub variant: Variant,
    pub sessions: usize,
    pub setup: Duration,
    pub wall: Duration,
    /// Packets the publishers sent (all layers and audio), and send drops.
    pub sent: u64,
    pub send_drops: u64,
    /// Per viewer, what its layer and its room's audio sent, summed.
    pub expected: u64,
    pub forwarded: u64,
    pub received: u64,
    pub decrypted_failures: u64,
    pub process_cpu_ns: u64,
    pub logic_cpu_ns: u64,
    pub client_cpu_ns: u64,
    pub busy: Vec<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Per layer (index into [`LAYER_NAMES`]; single layer: index 0): viewers, expected,
    /// received.
    pub per_layer: Vec<(usize, u64, u64)>,
    /// Viewers listed on the layer they asked for at the end of the window, of all viewers.
    pub on_layer: (usize, usize),
    pub gateway_unprotect_failures: u64,
    pub gateway_drops: Option<u64>,
    /// Over the window, from /metrics: RID-less or unknown-RID drops, bad extension
    /// blocks, layer switches.
    pub unknown_rid: Option<u64>,
    pub bad_extension: Option<u64>,
    pub layer_switches: Option<u64>,
}

impl Run {
    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.expected.max(1) as f64
    }
    pub fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }
    pub fn ns_per_forwarded(&self) -> f64 {
        self.process_cpu_ns as f64 / self.forwarded.max(1) as f64
    }
    pub fn logic_ns_per_forwarded(&self) -> f64 {
        self.logic_cpu_ns as f64 / self.forwarded.max(1) as f64
    }
}

/// One viewer: its room and the layer it asked for (`None`: single-layer run).
struct Viewer {
    peer: Peer,
    room: usize,
    layer: Option<usize>,
}

/// The simulcast comparison and the estimator's convergence, as the report's markdown.
pub fn run(s: &Settings, net: &Net) -> String {
    let args: Vec<String> = std::env::args().collect();
    let seeds = args
        .iter()
        .position(|a| a == "--bwe-seeds")
        .and_then(|i| args.get(i + 1))
        .map_or(10, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--bwe-seeds: not a number: {v:?}"))
        });
    let subs = s.subs.max(1).div_ceil(RIDS.len()) * RIDS.len();
    let mut runs = Vec::new();
    for mode in &s.modes {
        for variant in [Variant::Single, Variant::Simulcast] {
            eprintln!("media bench --simulcast: {mode}, {}", variant.name());
            runs.push(run_one(mode, variant, s, net, subs));
        }
    }
    eprintln!("media bench --simulcast: estimator convergence, {seeds} seeds");
    let steps = convergence::run(seeds);
    report::report(s, subs, &runs, &steps, seeds)
}

fn connect_publishers(base: &str, s: &Settings, net: &Net, variant: Variant) -> Vec<Peer> {
    let ip = net.client_ip();
    connect_many(s.rooms, |r| {
        let mut cfg = PeerConfig::publisher();
        if variant == Variant::Simulcast {
            cfg.offer = cfg.offer.with_simulcast(&RIDS);
        }
        cfg.delivery = Delivery::Stats;
        cfg.bind_ip = ip;
        webrtc::publish(base, &format!("bench-{r}"), cfg)
    })
}

/// Subscriber `k` of room `r` asks for layer `k mod 3` in the simulcast run.
fn connect_viewers(
    base: &str,
    publishers: &[Peer],
    subs: usize,
    net: &Net,
    variant: Variant,
) -> Vec<Viewer> {
    let ip = net.client_ip();
    let rooms = publishers.len().max(1);
    let place = |i: usize| {
        let layer = (variant == Variant::Simulcast).then_some((i / rooms) % RIDS.len());
        (i % rooms, layer)
    };
    let peers = connect_many(publishers.len() * subs, |i| {
        let (r, layer) = place(i);
        let mut cfg = PeerConfig::subscriber();
        cfg.delivery = Delivery::Stats;
        cfg.bind_ip = ip;
        let mut path = format!("/whep/bench-{r}?publisher={}", publishers[r].participant);
        if let Some(l) = layer {
            path.push_str(&format!("&layer={}", LAYER_NAMES[l]));
        }
        webrtc::connect(base, &path, cfg).unwrap_or_else(|e| panic!("subscribe via {path}: {e}"))
    });
    peers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| {
            let (room, layer) = place(i);
            Viewer { peer, room, layer }
        })
        .collect()
}

/// Viewers the gateway lists on the layer they asked for (`high` without simulcast).
fn on_requested_layer(gw: &super::Gateway, rooms: usize, viewers: &[Viewer]) -> usize {
    let listed: std::collections::HashMap<String, String> = (0..rooms)
        .flat_map(|r| {
            let (_, v) = gw.get(&format!("/api/rooms/bench-{r}"));
            v["participants"].as_array().cloned().unwrap_or_default()
        })
        .filter_map(|p| {
            let id = p["participant"].as_str()?.to_owned();
            let layer = p["video"][0]["layer"].as_str()?.to_owned();
            Some((id, layer))
        })
        .collect();
    viewers
        .iter()
        .filter(|v| {
            let want = v.layer.map_or("high", |l| LAYER_NAMES[l]);
            listed.get(&v.peer.participant).map(String::as_str) == Some(want)
        })
        .count()
}

/// Sum of a Prometheus counter over its series; `None` when /metrics has no such series.
fn metric(text: &str, name: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

fn metrics(gw: &super::Gateway) -> String {
    webrtc::http_request("GET", &gw.url("/metrics"), None, None, None).body
}

fn send(publishers: &[Peer], sources: &mut [Source], duration: Duration) -> Counts {
    let intervals: Vec<Vec<Duration>> = sources.iter().map(Source::intervals).collect();
    load::pace(&intervals, duration, |i, j| {
        let p = &publishers[i];
        p.try_send_raw(&p.protect_rtp(&sources[i].next_packet(j)))
    })
}

fn run_one(mode: &str, variant: Variant, s: &Settings, net: &Net, subs: usize) -> Run {
    let gw = start_gateway(mode, s, net, subs);
    let base = format!("http://{}", gw.http);
    let t0 = Instant::now();
    let publishers = connect_publishers(&base, s, net, variant);
    let viewers = connect_viewers(&base, &publishers, subs, net, variant);
    super::wait_connected(&gw, s.rooms, subs);
    let setup = t0.elapsed();
    let mut sources: Vec<Source> = publishers
        .iter()
        .map(|p| Source::new(p, variant, s.kbps))
        .collect();
    // Warm up until every viewer is on its layer: the gateway ranks layers by their
    // arrival rate, then switches each viewer at the layer's next keyframe.
    let waited = Instant::now();
    loop {
        send(&publishers, &mut sources, Duration::from_secs(1));
        let on = on_requested_layer(&gw, s.rooms, &viewers);
        if on == viewers.len() {
            break;
        }
        assert!(
            waited.elapsed() < LAYER_WAIT,
            "{mode}, {}: only {on} of {} viewers reached the layer they asked for",
            variant.name(),
            viewers.len()
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    let take_latencies = || -> Vec<u64> {
        viewers
            .iter()
            .flat_map(|v| v.peer.take_latencies())
            .collect()
    };
    take_latencies();
    let failures = || -> u64 {
        viewers
            .iter()
            .map(|v| v.peer.counters().srtp_failures.load(Relaxed))
            .sum()
    };
    let failures0 = failures();
    let pid = gw.pid();
    let pid_s = pid.to_string();
    let logic = threads_named(pid, "roomgate-logic");
    let before = gw.status();
    let metrics0 = metrics(&gw);
    let received0: Vec<u64> = viewers.iter().map(|v| v.peer.rtp_received()).collect();
    let (cpu0, logic0, client0) = (
        process_cpu_ns(&pid_s),
        cpu_ns(pid, &logic),
        process_cpu_ns("self"),
    );
    let jiffies0 = cpu_jiffies();
    let started = Instant::now();
    let counts = send(&publishers, &mut sources, Duration::from_secs(s.secs));
    let wall = started.elapsed();
    // Now: a layer with no packet for 1.5 s is listed as none.
    let on = on_requested_layer(&gw, s.rooms, &viewers);
    std::thread::sleep(Duration::from_millis(300));
    let received: Vec<u64> = viewers
        .iter()
        .zip(&received0)
        .map(|(v, r0)| v.peer.rtp_received() - r0)
        .collect();
    let cpu = process_cpu_ns(&pid_s) - cpu0;
    let logic_cpu = cpu_ns(pid, &logic) - logic0;
    let client_cpu = process_cpu_ns("self") - client0;
    let busy = busy_between(&jiffies0, &cpu_jiffies());
    let after = super::settled_status(&gw);
    let metrics1 = metrics(&gw);
    let mut lat = take_latencies();
    lat.sort_unstable();
    let layers = match variant {
        Variant::Single => 1,
        Variant::Simulcast => RIDS.len(),
    };
    let mut per_layer = vec![(0usize, 0u64, 0u64); layers];
    for (v, got) in viewers.iter().zip(&received) {
        let streams = &counts[v.room];
        let video = v.layer.unwrap_or(0);
        let audio = streams.len() - 1;
        let entry = &mut per_layer[video];
        entry.0 += 1;
        entry.1 += streams[video].0 + streams[audio].0;
        entry.2 += got;
    }
    let window = |name: &str| {
        metric(&metrics1, name)
            .zip(metric(&metrics0, name))
            .map(|(a, b)| a.saturating_sub(b))
    };
    Run {
        mode: mode.to_owned(),
        variant,
        sessions: publishers.len() + viewers.len(),
        setup,
        wall,
        sent: counts.iter().flatten().map(|c| c.0).sum(),
        send_drops: counts.iter().flatten().map(|c| c.1).sum(),
        expected: per_layer.iter().map(|l| l.1).sum(),
        forwarded: media_sum(&after, "rtp_forwarded") - media_sum(&before, "rtp_forwarded"),
        received: received.iter().sum(),
        decrypted_failures: failures() - failures0,
        process_cpu_ns: cpu,
        logic_cpu_ns: logic_cpu,
        client_cpu_ns: client_cpu,
        busy,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        per_layer,
        on_layer: (on, viewers.len()),
        gateway_unprotect_failures: unprotect_failures(&after) - unprotect_failures(&before),
        gateway_drops: super::delta(status_drops(&after), status_drops(&before)),
        unknown_rid: window("roomgate_rtp_unknown_rid_total"),
        bad_extension: window("roomgate_rtp_bad_extension_total"),
        layer_switches: window("roomgate_layer_switches_total"),
    }
}
