//! `cargo xtask bench media`: SFU forwarding over the real media path.
//!
//! Starts the release `roomgate` binary, creates R rooms with one publisher and S
//! subscribers each through WHIP/WHEP + ICE + DTLS + SRTP with the test client
//! (`tests/support/webrtc.rs`), lets every publisher send video at a configured bitrate
//! (~1100-byte packets, 30 frames/s) plus 50 packets/s of audio for a fixed time, and
//! measures, per steering mode:
//!
//! - forwarded packets/s from the gateway's `rtp_forwarded` counter and from what the
//!   subscribers actually decrypted; loss = 1 - received / (sent x S);
//! - the gateway's CPU per forwarded packet: utime+stime of /proc/<pid>/stat (the whole
//!   process) and, more precisely, the schedstat ns of its logic threads;
//! - the latency the path adds: every payload carries its send time (same host, same
//!   clock); subscribers record receive - send after decryption (p50/p99). This includes
//!   the client's own SRTP work and scheduling on both ends, not only the gateway.
//!
//! Knobs (flags after `--`, or environment variables):
//! `--rooms N` (ROOMGATE_BENCH_ROOMS, 4), `--subs N` (ROOMGATE_BENCH_SUBS, 25),
//! `--secs N` (ROOMGATE_BENCH_SECS, 10), `--kbps N` (ROOMGATE_BENCH_KBPS, 600),
//! `--threads N` (ROOMGATE_BENCH_THREADS, gateway logic threads, default nproc),
//! `--modes ebpf,connected` (ROOMGATE_BENCH_MODES). The client runtime's worker threads:
//! ROOMGATE_CLIENT_THREADS (default 2).
#[path = "../tests/support/mod.rs"]
mod support;
mod util;
#[path = "../tests/support/webrtc.rs"]
mod webrtc;

use std::{
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, Instant},
};

use support::{eventually, require_root, sum_threads, Gateway};
use util::{cpu_ns, machine, threads_named};
use webrtc::{Delivery, Kind, Peer, PeerConfig, Stream};

const VIDEO_PAYLOAD: usize = 1100;
const AUDIO_PAYLOAD: usize = 160;
const AUDIO_PPS: f64 = 50.0;
const FPS: f64 = 30.0;

/// Published anchors (other projects, other hardware; see the report's caveat).
const SRS_PLAYERS_PER_CORE: f64 = 2000.0;
const MEDIASOUP_CONSUMERS_PER_WORKER: f64 = 500.0;

#[derive(Clone, Debug)]
struct Settings {
    rooms: usize,
    subs: usize,
    secs: u64,
    kbps: u64,
    threads: usize,
    modes: Vec<String>,
}

impl Settings {
    fn from_env_and_args() -> Settings {
        let args: Vec<String> = std::env::args().collect();
        let get = |flag: &str, env: &str| -> Option<String> {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
                .or_else(|| std::env::var(env).ok())
        };
        let num = |flag: &str, env: &str, default: u64| -> u64 {
            get(flag, env).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag}/{env}: not a number: {v:?}"))
            })
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Settings {
            rooms: num("--rooms", "ROOMGATE_BENCH_ROOMS", 4) as usize,
            subs: num("--subs", "ROOMGATE_BENCH_SUBS", 25) as usize,
            secs: num("--secs", "ROOMGATE_BENCH_SECS", 10),
            kbps: num("--kbps", "ROOMGATE_BENCH_KBPS", 600),
            threads: num("--threads", "ROOMGATE_BENCH_THREADS", cores as u64) as usize,
            modes: get("--modes", "ROOMGATE_BENCH_MODES")
                .unwrap_or_else(|| "ebpf,connected".into())
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    fn video_pps(&self) -> f64 {
        self.kbps as f64 * 1000.0 / 8.0 / VIDEO_PAYLOAD as f64
    }

    /// Packets per second one subscriber receives (video + audio).
    fn stream_pps(&self) -> f64 {
        self.video_pps() + AUDIO_PPS
    }
}

struct Outcome {
    mode: String,
    sessions: usize,
    wall: Duration,
    sent: u64,
    send_drops: u64,
    forwarded: u64,
    received: u64,
    process_cpu_ns: u64,
    logic_cpu_ns: u64,
    client_cpu_ns: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    setup: Duration,
    handoffs: u64,
    misdelivered: u64,
    srtp_failures: u64,
    gateway_unprotect_failures: u64,
}

impl Outcome {
    fn expected(&self, subs: usize) -> u64 {
        self.sent * subs as u64
    }
    fn loss(&self, subs: usize) -> f64 {
        1.0 - self.received as f64 / self.expected(subs).max(1) as f64
    }
    fn forwarded_per_sec(&self) -> f64 {
        self.forwarded as f64 / self.wall.as_secs_f64()
    }
    fn received_per_sec(&self) -> f64 {
        self.received as f64 / self.wall.as_secs_f64()
    }
    fn ns_per_forwarded(&self) -> f64 {
        self.process_cpu_ns as f64 / self.forwarded.max(1) as f64
    }
    fn logic_ns_per_forwarded(&self) -> f64 {
        self.logic_cpu_ns as f64 / self.forwarded.max(1) as f64
    }
    /// Forwarded packets per second of gateway CPU (= per fully used core).
    fn per_core_pps(&self) -> f64 {
        1e9 / self.ns_per_forwarded().max(1.0)
    }
    fn gateway_cores(&self) -> f64 {
        self.process_cpu_ns as f64 / self.wall.as_nanos() as f64
    }
    fn client_cores(&self) -> f64 {
        self.client_cpu_ns as f64 / self.wall.as_nanos() as f64
    }
}

/// utime+stime of a process in ns (clock ticks from /proc/<pid>/stat).
fn process_cpu_ns(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// Connect `count` peers with up to 8 connecting threads.
fn connect_many(count: usize, make: impl Fn(usize) -> Peer + Sync + Send) -> Vec<Peer> {
    let slots: Vec<Mutex<Option<Peer>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8.min(count.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let p = make(i);
                *slots[i].lock().expect("slot lock") = Some(p);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("slot lock")
                .expect("every peer connected")
        })
        .collect()
}

/// Pace every publisher: video packets spread evenly at the configured bitrate (frames
/// of several packets, marker on the last), audio at 50 packets/s. `streams` (video,
/// audio) per publisher carry seq/ts across calls, as a real sender's would. Returns
/// (sent, drops).
fn send_for(
    publishers: &[Peer],
    streams: &mut [(Stream, Stream)],
    settings: &Settings,
    duration: Duration,
) -> (u64, u64) {
    let video_every = Duration::from_secs_f64(1.0 / settings.video_pps());
    let audio_every = Duration::from_secs_f64(1.0 / AUDIO_PPS);
    let per_frame = (settings.video_pps() / FPS).ceil().max(1.0) as u32;
    let start = Instant::now();
    let n = publishers.len().max(1) as u32;
    // (next video, next audio), staggered across rooms.
    let mut state: Vec<(Instant, Instant)> = (0..publishers.len())
        .map(|i| {
            (
                start + video_every * i as u32 / n,
                start + audio_every * i as u32 / n,
            )
        })
        .collect();
    let (mut sent, mut drops) = (0u64, 0u64);
    let end = start + duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut earliest = end;
        for ((p, (next_v, next_a)), (video, audio)) in publishers
            .iter()
            .zip(state.iter_mut())
            .zip(streams.iter_mut())
        {
            while *next_v <= now {
                let pkt = video.next(VIDEO_PAYLOAD, per_frame);
                if p.try_send_raw(&p.protect_rtp(&pkt.to_bytes())) {
                    sent += 1;
                } else {
                    drops += 1;
                }
                *next_v += video_every;
            }
            while *next_a <= now {
                let pkt = audio.next(AUDIO_PAYLOAD, 1);
                if p.try_send_raw(&p.protect_rtp(&pkt.to_bytes())) {
                    sent += 1;
                } else {
                    drops += 1;
                }
                *next_a += audio_every;
            }
            earliest = earliest.min(*next_v).min(*next_a);
        }
        let wait = earliest.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    (sent, drops)
}

fn media_sum(status: &serde_json::Value, key: &str) -> u64 {
    status["threads"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["media"][key].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn run(mode: &str, settings: &Settings) -> Outcome {
    let gw = Gateway::builder(mode, settings.threads)
        .set("--log-level", "warn")
        .set("--public-ip", "127.0.0.1")
        .set(
            "--max-participants-per-room",
            (settings.subs + 1).max(64).to_string(),
        )
        .set(
            "--max-sessions",
            (settings.rooms * (settings.subs + 1))
                .max(10_000)
                .to_string(),
        )
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    let base = format!("http://{}", gw.http);
    let t0 = Instant::now();
    let publishers = connect_many(settings.rooms, |r| {
        let mut cfg = PeerConfig::publisher();
        cfg.delivery = Delivery::Stats;
        webrtc::publish(&base, &format!("bench-{r}"), cfg)
    });
    let subscribers = connect_many(settings.rooms * settings.subs, |i| {
        let r = i / settings.subs.max(1);
        let mut cfg = PeerConfig::subscriber();
        cfg.delivery = Delivery::Stats;
        webrtc::subscribe(
            &base,
            &format!("bench-{r}"),
            Some(&publishers[r].participant),
            cfg,
        )
    });
    let sessions = publishers.len() + subscribers.len();
    let all_connected = eventually(Duration::from_secs(30), || {
        (0..settings.rooms).all(|r| {
            let (_, v) = gw.get(&format!("/api/rooms/bench-{r}"));
            v["participants"].as_array().is_some_and(|ps| {
                ps.len() == settings.subs + 1 && ps.iter().all(|p| p["dtls_state"] == "connected")
            })
        })
    });
    assert!(all_connected, "not every session reached DTLS connected");
    let setup = t0.elapsed();

    // Warm-up, then discard what it produced.
    let mut streams: Vec<(Stream, Stream)> = publishers
        .iter()
        .map(|p| {
            (
                Stream::for_peer(p, Kind::Video),
                Stream::for_peer(p, Kind::Audio),
            )
        })
        .collect();
    send_for(&publishers, &mut streams, settings, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(600));
    for s in &subscribers {
        s.take_latencies();
    }

    let pid = gw.pid();
    let pid_s = pid.to_string();
    let logic = threads_named(pid, "roomgate-logic");
    let before = gw.status();
    let received0: u64 = subscribers.iter().map(Peer::rtp_received).sum();
    let cpu0 = process_cpu_ns(&pid_s);
    let logic0 = cpu_ns(pid, &logic);
    let client0 = process_cpu_ns("self");
    let started = Instant::now();
    let (sent, send_drops) = send_for(
        &publishers,
        &mut streams,
        settings,
        Duration::from_secs(settings.secs),
    );
    let wall = started.elapsed();
    // Let in-flight packets land and the counters fold (~500 ms).
    std::thread::sleep(Duration::from_millis(300));
    let received: u64 = subscribers.iter().map(Peer::rtp_received).sum::<u64>() - received0;
    let cpu = process_cpu_ns(&pid_s) - cpu0;
    let logic_cpu = cpu_ns(pid, &logic) - logic0;
    let client_cpu = process_cpu_ns("self") - client0;
    std::thread::sleep(Duration::from_millis(700));
    let after = gw.status();
    let forwarded = media_sum(&after, "rtp_forwarded") - media_sum(&before, "rtp_forwarded");

    let mut lat: Vec<u64> = subscribers.iter().flat_map(Peer::take_latencies).collect();
    lat.sort_unstable();
    let srtp_failures = subscribers
        .iter()
        .map(|s| {
            s.counters()
                .srtp_failures
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let outcome = Outcome {
        mode: mode.to_owned(),
        sessions,
        wall,
        sent,
        send_drops,
        forwarded,
        received,
        process_cpu_ns: cpu,
        logic_cpu_ns: logic_cpu,
        client_cpu_ns: client_cpu,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        max_us: percentile(&lat, 1.0),
        setup,
        handoffs: sum_threads(&after, "handoffs"),
        misdelivered: sum_threads(&after, "misdelivered"),
        srtp_failures,
        gateway_unprotect_failures: ["auth", "replay", "malformed", "other"]
            .iter()
            .map(|k| {
                let f = |st: &serde_json::Value| -> u64 {
                    st["threads"].as_array().map_or(0, |ts| {
                        ts.iter()
                            .map(|t| {
                                t["media"]["srtp_unprotect_failures"][k]
                                    .as_u64()
                                    .unwrap_or(0)
                            })
                            .sum()
                    })
                };
                f(&after) - f(&before)
            })
            .sum(),
    };
    drop(subscribers);
    drop(publishers);
    outcome
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env_and_args();
    let mut results = Vec::new();
    for mode in &settings.modes {
        if mode == "ebpf" && !require_root() {
            continue;
        }
        eprintln!("media bench: {mode}, {settings:?}");
        results.push(run(mode, &settings));
    }
    let report = report(&settings, &results);
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-media.md");
    std::fs::write(&out, &report).expect("write target/bench-media.md");
}

fn report(s: &Settings, results: &[Outcome]) -> String {
    let mut r = String::new();
    let stream_pps = s.stream_pps();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(r, "## Media forwarding (`cargo xtask bench media`)\n");
    let _ = writeln!(
        r,
        "Machine: {} (nproc {nproc}). Command: `cargo xtask bench media{}` (release build, as root).\n",
        machine(),
        if std::env::args().len() > 1 {
            let extra: Vec<String> = std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect();
            if extra.is_empty() {
                String::new()
            } else {
                format!(" {}", extra.join(" "))
            }
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        r,
        "Load: {} rooms x (1 publisher + {} subscribers), {} logic threads; each publisher sends \
         {} kbit/s of video ({:.0} packets/s of {VIDEO_PAYLOAD}-byte payloads, {FPS:.0} frames/s) + \
         {AUDIO_PPS:.0} packets/s of {AUDIO_PAYLOAD}-byte audio = {stream_pps:.0} packets/s per \
         stream, for {} s per mode, over WHIP/WHEP + ICE + DTLS + SRTP (AEAD-AES-128-GCM) on \
         loopback. The load generator (publishers, subscribers, SRTP both ways) runs in the \
         benchmark process on the same {nproc} cores; the gateway's CPU is measured on its own \
         process.\n",
        s.rooms, s.subs, s.threads, s.kbps, s.video_pps(), s.secs
    );
    let _ = writeln!(
        r,
        "| mode | sessions | sent pkt/s | forwarded pkt/s (gateway) | received pkt/s (subscribers) | loss | \
         gateway CPU (cores) | gateway CPU ns/fwd pkt | logic threads ns/fwd pkt | fwd pkt/s per core | \
         latency p50 / p99 / max | load-generator CPU (cores) |"
    );
    let _ = writeln!(
        r,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in results {
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2}% | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} µs | {:.2} |",
            o.mode,
            o.sessions,
            o.sent as f64 / o.wall.as_secs_f64(),
            o.forwarded_per_sec(),
            o.received_per_sec(),
            o.loss(s.subs) * 100.0,
            o.gateway_cores(),
            o.ns_per_forwarded(),
            o.logic_ns_per_forwarded(),
            o.per_core_pps(),
            o.p50_us,
            o.p99_us,
            o.max_us,
            o.client_cores(),
        );
    }
    let _ = writeln!(r);
    for o in results {
        let _ = writeln!(
            r,
            "- {}: setup of {} sessions took {:.2} s; sent {} packets ({} send drops), expected \
             {} deliveries, forwarded {} (gateway counter), received {} (subscribers); \
             handoffs {}, misdelivered {}, SRTP unprotect failures: gateway {}, subscribers {}.",
            o.mode,
            o.sessions,
            o.setup.as_secs_f64(),
            o.sent,
            o.send_drops,
            o.expected(s.subs),
            o.forwarded,
            o.received,
            o.handoffs,
            o.misdelivered,
            o.gateway_unprotect_failures,
            o.srtp_failures
        );
    }
    let srs = SRS_PLAYERS_PER_CORE * stream_pps;
    let ms = MEDIASOUP_CONSUMERS_PER_WORKER * stream_pps;
    let _ = writeln!(
        r,
        "\nComparison (NOT the same hardware, workload or measurement; published figures converted at \
         {stream_pps:.0} packets/s per {} kbit/s stream): SRS ~{SRS_PLAYERS_PER_CORE:.0} players per core \
         ≈ {srs:.0} packets/s per core; mediasoup ~{MEDIASOUP_CONSUMERS_PER_WORKER:.0} consumers per \
         worker (one core) ≈ {ms:.0} packets/s per core.",
        s.kbps
    );
    for o in results {
        let per_core = o.per_core_pps();
        let _ = writeln!(
            r,
            "- roomgate {}: {per_core:.0} forwarded packets/s per gateway core ≈ {:.0} subscribers per core \
             at this bitrate ({:.2}x the SRS figure, {:.2}x the mediasoup figure).",
            o.mode,
            per_core / stream_pps,
            per_core / srs,
            per_core / ms
        );
    }
    let _ = writeln!(
        r,
        "\n\"fwd pkt/s per core\" is 1e9 / (gateway CPU ns per forwarded packet): an extrapolation \
         to a fully used core from a run where the gateway used the fraction of a core shown. At \
         low utilisation fixed per-wake-up costs (timers, RR scheduling, the DTLS driver) weigh \
         more per packet than at saturation; scale the load up (`--subs 100`) to see the trend."
    );
    let _ = writeln!(
        r,
        "\nLatency is receive time minus the send time embedded in each payload (same host, same \
         clock), measured after the subscriber decrypted the packet: it includes the client's SRTP \
         protect/unprotect and scheduling of the load generator, so it is an upper bound on what \
         the gateway adds. CPU ns per forwarded packet divides the gateway process's utime+stime \
         (/proc/<pid>/stat) by the `rtp_forwarded` delta; the logic-thread column uses schedstat \
         of the `roomgate-logic` threads only. On loopback the kernel's send path runs in the \
         sender's context, so part of the cost of delivering packets to subscribers is charged \
         to the gateway (its sendmsg) and part of the publisher side to the load generator."
    );
    r
}
