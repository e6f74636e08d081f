//! `cargo xtask bench media`: SFU forwarding over the real media path, against the
//! kernel's own cost for the same fan-out (a plain UDP relay) and against Janus, with the
//! same load generator in the same run.
//!
//! roomgate runs as the release binary in network namespace `rgb-gw` behind a veth pair
//! (`--path veth`, default; `--path loopback` keeps everything on 127.0.0.1), the load
//! generator stays in the root namespace. R rooms get one publisher and S subscribers each
//! through WHIP/WHEP + ICE + DTLS + SRTP with the test client (`tests/support/webrtc.rs`).
//! Every publisher sends video at a configured bitrate (~1100-byte packets, 30 frames/s)
//! plus 50 packets/s of audio for a fixed time. Measured per steering mode:
//!
//! - forwarded packets/s from the gateway's `rtp_forwarded` counter and from what the
//!   subscribers received; loss = 1 - received / (sent x S);
//! - the gateway's CPU per forwarded packet: schedstat ns of all its threads (the whole
//!   process; the relay is measured the same way) and of its logic threads only;
//! - the latency the path adds: payloads carry their send time (same host, same clock);
//!   subscribers record receive - send after decryption (p50/p99);
//! - a burst: `--burst N` datagrams sent back to back by the publishers, as fast as the
//!   sender can, after the steady run; how many the gateway did not forward, and the
//!   kernel's `UdpRcvbufErrors` in the gateway's namespace.
//!
//! Baselines, each on the same path, load and schedule: (a) a plain UDP fan-out relay
//! (`benches/util/relay.rs`: recvmmsg, then sendmmsg or sendto per copy, no crypto), whose
//! CPU per copy is the kernel's floor; (b) Janus (`benches/janus/`), when present.
//!
//! `--capacity` raises the subscribers per room step by step (x `--growth`) with the
//! gateway on one logic thread pinned to CPU 1 and the load generator pinned to CPU 0,
//! until loss exceeds `--max-loss` or p99 added latency exceeds `--max-p99-ms`, and reports
//! the largest passing step. Subscribers then count datagrams with recvmmsg and decrypt
//! only one in `--sample` (`benches/util/counting.rs`), so the generator stays cheaper
//! than the gateway; the report says which CPU saturated.
//!
//! Knobs (flags after `--`, or environment variables):
//! `--rooms N` (ROOMGATE_BENCH_ROOMS, 4), `--subs N` (ROOMGATE_BENCH_SUBS, 25),
//! `--secs N` (ROOMGATE_BENCH_SECS, 10), `--kbps N` (ROOMGATE_BENCH_KBPS, 600),
//! `--threads N` (ROOMGATE_BENCH_THREADS, default nproc; 1 with --capacity),
//! `--modes ebpf,connected` (ROOMGATE_BENCH_MODES; ebpf with --capacity),
//! `--path veth|loopback` (veth), `--relay-send sendmmsg,sendto|none` (both),
//! `--pin yes|no` (gateway/relay on CPU 1, load generator on CPU 0; yes with --capacity),
//! `--sample N` (decrypt 1 in N received packets; 1 = every packet, 16 with --capacity),
//! `--burst N` (2000; 0 = none), `--janus yes|no` (yes when a `janus` binary exists),
//! `--capacity`, `--growth F` (1.5), `--max-steps N` (12), `--max-loss PCT` (0.1),
//! `--max-p99-ms MS` (50). The client runtime's worker threads: ROOMGATE_CLIENT_THREADS
//! (default 2).
//!
//! `--simulcast` runs instead the simulcast comparison and the estimator's convergence
//! (`benches/simulcast/`; `--bwe-seeds N`, 10), reported to target/bench-media-simulcast.md.
mod janus;
#[path = "util/schedule.rs"]
mod schedule;
mod simulcast;
#[path = "../tests/support/mod.rs"]
mod support;
mod util;
#[path = "../tests/support/webrtc.rs"]
mod webrtc;

use schedule::{
    next_packet, send_schedule, Schedule, AUDIO_PAYLOAD, AUDIO_PPS, FPS, VIDEO_PAYLOAD,
};
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use support::{eventually, require_root, sum_threads, Gateway};
use util::{
    baseline::BaselineOutcome,
    counting::{unregister_everywhere, Counter},
    cpu::{
        busy_between, cores, cpu_jiffies, keep_pinned, ksoftirqd_ns, ksoftirqd_pids,
        pin_current_thread, process_cpu_ns, raise_nofile_limit,
    },
    cpu_ns, machine,
    netns::{pin_wrapper, Path, VethNs, NS},
    relay::{self, Relay, SendMode},
    threads_named,
};
use webrtc::{
    now_ns, payload_stamp, random_u32, DatagramSampler, Delivery, DetachedPeer, Kind, Peer,
    PeerConfig, Stream,
};

/// AEAD_AES_128_GCM tag: the relay's datagrams carry as many bytes as SRTP ones.
const SRTP_TAG: usize = 16;
/// With pinning, the server (gateway, relay) gets this CPU and the load generator the other.
const SERVER_CPU: usize = 1;
const LOADGEN_CPU: usize = 0;
/// A side counts as saturated above this busy fraction of its CPU.
const SATURATED: f64 = 0.9;

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
    path: Path,
    relay_send: Vec<SendMode>,
    pin: bool,
    sample: u64,
    burst: u64,
    /// Send each video frame's packets back to back at the frame time (an encoder
    /// without a pacer), instead of spreading them evenly.
    frame_bursts: bool,
    /// The gateway's --gso.
    gso: String,
    janus: bool,
    capacity: bool,
    growth: f64,
    max_steps: usize,
    max_loss: f64,
    max_p99_ms: f64,
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
        let num = |flag: &str, env: &str, default: f64| -> f64 {
            get(flag, env).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag}/{env}: not a number: {v:?}"))
            })
        };
        let yes = |flag: &str, default: bool| -> bool {
            match get(flag, "").as_deref() {
                None => default,
                Some("yes" | "on" | "true" | "1") => true,
                Some("no" | "off" | "false" | "0") => false,
                Some(v) => panic!("{flag}: expected yes or no, got {v:?}"),
            }
        };
        let list = |flag: &str, env: &str, default: &str| -> Vec<String> {
            get(flag, env)
                .unwrap_or_else(|| default.into())
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != "none")
                .map(str::to_owned)
                .collect()
        };
        let capacity = args.iter().any(|a| a == "--capacity");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let path_name = get("--path", "ROOMGATE_BENCH_PATH").unwrap_or_else(|| "veth".into());
        Settings {
            rooms: num("--rooms", "ROOMGATE_BENCH_ROOMS", 4.0) as usize,
            subs: num("--subs", "ROOMGATE_BENCH_SUBS", 25.0) as usize,
            secs: num("--secs", "ROOMGATE_BENCH_SECS", 10.0) as u64,
            kbps: num("--kbps", "ROOMGATE_BENCH_KBPS", 600.0) as u64,
            threads: num(
                "--threads",
                "ROOMGATE_BENCH_THREADS",
                if capacity { 1.0 } else { cores as f64 },
            ) as usize,
            modes: list(
                "--modes",
                "ROOMGATE_BENCH_MODES",
                if capacity { "ebpf" } else { "ebpf,connected" },
            ),
            path: Path::parse(&path_name)
                .unwrap_or_else(|| panic!("--path: veth or loopback, not {path_name:?}")),
            relay_send: list("--relay-send", "", "sendmmsg,sendto")
                .iter()
                .map(|m| {
                    SendMode::parse(m).unwrap_or_else(|| {
                        panic!("--relay-send: sendmmsg, sendto or none, not {m:?}")
                    })
                })
                .collect(),
            pin: yes("--pin", capacity) && cores >= 2,
            sample: num("--sample", "", if capacity { 16.0 } else { 1.0 }).max(1.0) as u64,
            burst: num("--burst", "", 2000.0) as u64,
            frame_bursts: match get("--frames", "").as_deref() {
                None | Some("paced") => false,
                Some("burst") => true,
                Some(v) => panic!("--frames: paced or burst, not {v:?}"),
            },
            gso: get("--gso", "").unwrap_or_else(|| "on".into()),
            janus: yes("--janus", janus_available()),
            capacity,
            growth: num("--growth", "", 1.5).max(1.01),
            max_steps: num("--max-steps", "", 12.0).max(1.0) as usize,
            max_loss: num("--max-loss", "", 0.1) / 100.0,
            max_p99_ms: num("--max-p99-ms", "", 50.0),
        }
    }

    fn video_pps(&self) -> f64 {
        schedule::video_pps(self.kbps)
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            kbps: self.kbps,
            frame_bursts: self.frame_bursts,
        }
    }

    /// Packets per second one subscriber receives (video + audio).
    fn stream_pps(&self) -> f64 {
        self.video_pps() + AUDIO_PPS
    }

    fn server_cpu(&self) -> Option<usize> {
        self.pin.then_some(SERVER_CPU)
    }
}

fn janus_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("janus").is_file()))
}

/// Where the server under test runs: its namespace (veth path) and its CPU.
struct Net {
    path: Path,
    ns: Option<VethNs>,
    server_cpu: Option<usize>,
}

impl Net {
    fn new(s: &Settings) -> Net {
        let ns = match s.path {
            Path::Veth => Some(VethNs::create().expect("create the bench namespace")),
            Path::Loopback => None,
        };
        Net {
            path: s.path,
            ns,
            server_cpu: s.server_cpu(),
        }
    }

    /// Command prefix for a server process: into the namespace, onto its CPU.
    fn server_wrapper(&self) -> Vec<String> {
        match &self.ns {
            Some(ns) => ns.wrapper(self.server_cpu),
            None => pin_wrapper(self.server_cpu),
        }
    }

    fn client_ip(&self) -> IpAddr {
        self.path.client_ip().parse().expect("client ip constant")
    }

    /// The kernel's UDP receive-buffer drops (`UdpRcvbufErrors`, /proc/net/snmp) in the
    /// server's namespace. On loopback this includes the load generator's own sockets.
    fn udp_rcvbuf_errors(&self) -> Option<u64> {
        let snmp = match &self.ns {
            Some(_) => {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", NS, "cat", "/proc/net/snmp"])
                    .output()
                    .ok()?;
                String::from_utf8(out.stdout).ok()?
            }
            None => std::fs::read_to_string("/proc/net/snmp").ok()?,
        };
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let names: Vec<&str> = udp.next()?.split_whitespace().collect();
        let values: Vec<&str> = udp.next()?.split_whitespace().collect();
        let at = names.iter().position(|n| *n == "RcvbufErrors")?;
        values.get(at)?.parse().ok()
    }
}

/// The WebRTC publishers' sender: SRTP-protect and send without blocking.
fn send_webrtc(
    publishers: &[Peer],
    streams: &mut [(Stream, Stream)],
    settings: &Settings,
    duration: Duration,
) -> (u64, u64) {
    send_schedule(
        publishers.len(),
        settings.schedule(),
        duration,
        |i, kind, per_frame| {
            let p = &publishers[i];
            p.try_send_raw(&p.protect_rtp(&next_packet(&mut streams[i], kind, per_frame)))
        },
    )
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

fn unprotect_failures(st: &serde_json::Value) -> u64 {
    ["auth", "replay", "malformed", "other"]
        .iter()
        .map(|k| {
            st["threads"].as_array().map_or(0, |ts| {
                ts.iter()
                    .map(|t| {
                        t["media"]["srtp_unprotect_failures"][k]
                            .as_u64()
                            .unwrap_or(0)
                    })
                    .sum()
            })
        })
        .sum()
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

fn start_gateway(mode: &str, s: &Settings, net: &Net, max_per_room: usize) -> Gateway {
    let ip = net.path.server_ip();
    let mut builder = Gateway::builder(mode, s.threads);
    // Only when asked: the default needs no flag, so the bench also runs an older
    // roomgate binary that has none (ROOMGATE_BIN, for before/after comparisons).
    if s.gso != "on" {
        builder = builder.set("--gso", s.gso.as_str());
    }
    let gw = builder
        .wrapper(net.server_wrapper())
        .set("--udp-bind", format!("{ip}:0"))
        .set("--http-bind", format!("{ip}:0"))
        .set("--public-ip", ip)
        .set("--log-level", "warn")
        .set(
            "--max-participants-per-room",
            (max_per_room + 1).max(64).to_string(),
        )
        .set(
            "--max-sessions",
            (s.rooms * (max_per_room + 1)).max(10_000).to_string(),
        )
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    gw
}

fn connect_publishers(base: &str, s: &Settings, net: &Net) -> Vec<Peer> {
    let ip = net.client_ip();
    connect_many(s.rooms, |r| {
        let mut cfg = PeerConfig::publisher();
        cfg.delivery = Delivery::Stats;
        cfg.bind_ip = ip;
        webrtc::publish(base, &format!("bench-{r}"), cfg)
    })
}

/// `per_room` more subscribers in every room.
fn connect_subscribers(base: &str, publishers: &[Peer], per_room: usize, net: &Net) -> Vec<Peer> {
    let ip = net.client_ip();
    connect_many(publishers.len() * per_room, |i| {
        let r = i % publishers.len();
        let mut cfg = PeerConfig::subscriber();
        cfg.delivery = Delivery::Stats;
        cfg.bind_ip = ip;
        webrtc::subscribe(
            base,
            &format!("bench-{r}"),
            Some(&publishers[r].participant),
            cfg,
        )
    })
}

fn wait_connected(gw: &Gateway, rooms: usize, subs: usize) {
    let all_connected = eventually(Duration::from_secs(60), || {
        (0..rooms).all(|r| {
            let (_, v) = gw.get(&format!("/api/rooms/bench-{r}"));
            v["participants"].as_array().is_some_and(|ps| {
                ps.len() == subs + 1 && ps.iter().all(|p| p["dtls_state"] == "connected")
            })
        })
    });
    assert!(all_connected, "not every session reached DTLS connected");
}

/// The subscribers and how their packets are counted: each peer's own reader decrypting
/// every packet, or one recvmmsg loop over all of them that decrypts a sample.
enum Subscribers {
    Full(Vec<Peer>),
    Counting {
        peers: Vec<DetachedPeer>,
        counter: Option<Counter>,
        sample: u64,
    },
}

impl Subscribers {
    fn new(sample: u64) -> Subscribers {
        if sample <= 1 {
            Subscribers::Full(Vec::new())
        } else {
            Subscribers::Counting {
                peers: Vec::new(),
                counter: None,
                sample,
            }
        }
    }

    fn add(&mut self, new: Vec<Peer>) {
        match self {
            Subscribers::Full(peers) => peers.extend(new),
            Subscribers::Counting {
                peers,
                counter,
                sample,
            } => {
                // One loop for every socket: stop it, add the new ones, start it again.
                counter.take();
                let added: Vec<DetachedPeer> = new.into_iter().map(Peer::detach).collect();
                unregister_everywhere(&added.iter().map(|p| p.fd).collect::<Vec<_>>());
                peers.extend(added);
                let fds = peers.iter().map(|p| p.fd).collect();
                let samplers: Vec<DatagramSampler> =
                    peers.iter().map(|p| p.sampler.clone()).collect();
                *counter = Some(
                    Counter::spawn(
                        fds,
                        *sample,
                        Box::new(move |i, d| {
                            if let Some(s) = samplers.get(i) {
                                s.handle(d)
                            }
                        }),
                    )
                    .expect("start the counting receiver"),
                );
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Subscribers::Full(p) => p.len(),
            Subscribers::Counting { peers, .. } => peers.len(),
        }
    }

    fn counters(&self) -> Vec<&webrtc::PeerCounters> {
        match self {
            Subscribers::Full(p) => p.iter().map(Peer::counters).collect(),
            Subscribers::Counting { peers, .. } => {
                peers.iter().map(|p| p.sampler.counters()).collect()
            }
        }
    }

    /// RTP packets received so far (all of them, decrypted or only counted).
    fn received(&self) -> u64 {
        match self {
            Subscribers::Full(p) => p.iter().map(Peer::rtp_received).sum(),
            Subscribers::Counting { counter, .. } => counter.as_ref().map_or(0, Counter::total),
        }
    }

    /// RTP packets decrypted and checked so far.
    fn decrypted(&self) -> u64 {
        self.counters().iter().map(|c| c.rtp.load(Relaxed)).sum()
    }

    fn srtp_failures(&self) -> u64 {
        self.counters()
            .iter()
            .map(|c| c.srtp_failures.load(Relaxed))
            .sum()
    }

    fn take_latencies(&self) -> Vec<u64> {
        match self {
            Subscribers::Full(p) => p.iter().flat_map(Peer::take_latencies).collect(),
            Subscribers::Counting { peers, .. } => peers
                .iter()
                .flat_map(|p| p.sampler.take_latencies())
                .collect(),
        }
    }
}

/// One measured window of a roomgate run.
struct Outcome {
    mode: String,
    subs: usize,
    sessions: usize,
    wall: Duration,
    sent: u64,
    send_drops: u64,
    forwarded: u64,
    received: u64,
    process_cpu_ns: u64,
    logic_cpu_ns: u64,
    client_cpu_ns: u64,
    softirq_ns: u64,
    busy: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    samples: usize,
    setup: Duration,
    handoffs: u64,
    misdelivered: u64,
    decrypted: u64,
    srtp_failures: u64,
    gateway_unprotect_failures: u64,
    rcvbuf_errors: Option<u64>,
    /// The gateway's own receive-drop and send-error counters over the window.
    gateway_drops: Option<u64>,
    send_errors: Option<u64>,
    burst: Option<Burst>,
}

impl Outcome {
    fn expected(&self) -> u64 {
        self.sent * self.subs as u64
    }
    fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.expected().max(1) as f64
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
        cores(self.process_cpu_ns, self.wall)
    }
    fn client_cores(&self) -> f64 {
        cores(self.client_cpu_ns, self.wall)
    }
    fn softirq_cores(&self) -> f64 {
        cores(self.softirq_ns, self.wall)
    }
    fn passes(&self, s: &Settings) -> bool {
        self.loss() <= s.max_loss && self.p99_us <= s.max_p99_ms * 1000.0
    }
}

struct Burst {
    sent: u64,
    send_drops: u64,
    /// Datagrams of the burst the gateway did not forward (`sent - forwarded / subs`).
    lost_at_gateway: i64,
    copies_expected: u64,
    copies_received: u64,
    rcvbuf_errors: Option<u64>,
    gateway_drops: Option<u64>,
}

/// Sum over the threads of a per-thread counter of /api/status that is a number or an
/// object of numbers (e.g. `socket_receive_drops: {group, connected}`, `send_errors: {errno:
/// n}`); `None` when the gateway does not report it.
fn thread_sum(st: &serde_json::Value, key: &str) -> Option<u64> {
    let ts = st["threads"].as_array()?;
    let mut found = false;
    let mut sum = 0;
    for v in ts.iter().map(|t| &t[key]) {
        let values: Vec<&serde_json::Value> = match v.as_object() {
            Some(m) => m.values().collect(),
            None => vec![v],
        };
        for n in values.iter().filter_map(|v| v.as_u64()) {
            found = true;
            sum += n;
        }
    }
    found.then_some(sum)
}

fn delta(after: Option<u64>, before: Option<u64>) -> Option<u64> {
    after.zip(before).map(|(a, b)| a.saturating_sub(b))
}

fn opt(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |n| n.to_string())
}

fn status_drops(st: &serde_json::Value) -> Option<u64> {
    thread_sum(st, "socket_receive_drops")
}

/// `total` datagrams, split across the publishers and sent back to back (pre-protected,
/// so the sender is as fast as it can be), after the steady traffic stopped.
fn run_burst(
    gw: &Gateway,
    publishers: &[Peer],
    streams: &mut [(Stream, Stream)],
    subscribers: &Subscribers,
    total: u64,
    net: &Net,
) -> Burst {
    let subs = subscribers.len() / publishers.len().max(1);
    let per = (total / publishers.len().max(1) as u64).max(1);
    let per_frame = per.min(u64::from(u32::MAX)) as u32;
    let packets: Vec<Vec<Vec<u8>>> = publishers
        .iter()
        .zip(streams.iter_mut())
        .map(|(p, st)| {
            (0..per)
                .map(|_| p.protect_rtp(&next_packet(st, Kind::Video, per_frame)))
                .collect()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = gw.status();
    let rcv0 = net.udp_rcvbuf_errors();
    let received0 = subscribers.received();
    let (mut sent, mut send_drops) = (0u64, 0u64);
    for (p, ds) in publishers.iter().zip(&packets) {
        for d in ds {
            // A full client socket blocks, as a blocking sender would; it is not retried.
            if p.try_send_raw(d) {
                sent += 1;
            } else {
                send_drops += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    let after = settled_status(gw);
    let forwarded = media_sum(&after, "rtp_forwarded") - media_sum(&before, "rtp_forwarded");
    Burst {
        sent,
        send_drops,
        lost_at_gateway: sent as i64 - (forwarded / subs.max(1) as u64) as i64,
        copies_expected: sent * subs as u64,
        copies_received: subscribers.received() - received0,
        rcvbuf_errors: net
            .udp_rcvbuf_errors()
            .zip(rcv0)
            .map(|(a, b)| a.saturating_sub(b)),
        gateway_drops: status_drops(&after)
            .zip(status_drops(&before))
            .map(|(a, b)| a.saturating_sub(b)),
    }
}

/// /api/status once the threads' counters stopped moving: they are folded every ~500 ms,
/// later when a logic thread is busy, and a window must not miss its last packets.
fn settled_status(gw: &Gateway) -> serde_json::Value {
    let mut last = gw.status();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(700));
        let now = gw.status();
        if media_sum(&now, "rtp_forwarded") == media_sum(&last, "rtp_forwarded") {
            return now;
        }
        last = now;
    }
    last
}

/// Warm up, then measure one window of `s.secs` at the current subscriber count.
#[allow(clippy::too_many_arguments)]
fn measure(
    mode: &str,
    gw: &Gateway,
    publishers: &[Peer],
    streams: &mut [(Stream, Stream)],
    subscribers: &Subscribers,
    s: &Settings,
    net: &Net,
    setup: Duration,
) -> Outcome {
    send_webrtc(publishers, streams, s, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(600));
    subscribers.take_latencies();
    let (decrypted0, failures0) = (subscribers.decrypted(), subscribers.srtp_failures());
    let pid = gw.pid();
    let pid_s = pid.to_string();
    let logic = threads_named(pid, "roomgate-logic");
    let before = gw.status();
    let rcv0 = net.udp_rcvbuf_errors();
    let received0 = subscribers.received();
    let (cpu0, logic0, client0) = (
        process_cpu_ns(&pid_s),
        cpu_ns(pid, &logic),
        process_cpu_ns("self"),
    );
    let softirqd = ksoftirqd_pids();
    let softirq0 = ksoftirqd_ns(&softirqd);
    let jiffies0 = cpu_jiffies();
    let started = Instant::now();
    let (sent, send_drops) = send_webrtc(publishers, streams, s, Duration::from_secs(s.secs));
    let wall = started.elapsed();
    // Let in-flight packets land, then the counters fold (~500 ms).
    std::thread::sleep(Duration::from_millis(300));
    let received = subscribers.received() - received0;
    let cpu = process_cpu_ns(&pid_s) - cpu0;
    let logic_cpu = cpu_ns(pid, &logic) - logic0;
    let client_cpu = process_cpu_ns("self") - client0;
    let softirq = ksoftirqd_ns(&softirqd) - softirq0;
    let busy = busy_between(&jiffies0, &cpu_jiffies());
    let after = settled_status(gw);
    let forwarded = media_sum(&after, "rtp_forwarded") - media_sum(&before, "rtp_forwarded");
    let mut lat = subscribers.take_latencies();
    lat.sort_unstable();
    Outcome {
        mode: mode.to_owned(),
        subs: subscribers.len() / publishers.len().max(1),
        sessions: publishers.len() + subscribers.len(),
        wall,
        sent,
        send_drops,
        forwarded,
        received,
        process_cpu_ns: cpu,
        logic_cpu_ns: logic_cpu,
        client_cpu_ns: client_cpu,
        softirq_ns: softirq,
        busy,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        max_us: percentile(&lat, 1.0),
        samples: lat.len(),
        setup,
        handoffs: sum_threads(&after, "handoffs"),
        misdelivered: sum_threads(&after, "misdelivered"),
        decrypted: subscribers.decrypted() - decrypted0,
        srtp_failures: subscribers.srtp_failures() - failures0,
        gateway_unprotect_failures: unprotect_failures(&after) - unprotect_failures(&before),
        rcvbuf_errors: net
            .udp_rcvbuf_errors()
            .zip(rcv0)
            .map(|(a, b)| a.saturating_sub(b)),
        gateway_drops: delta(status_drops(&after), status_drops(&before)),
        send_errors: delta(
            thread_sum(&after, "send_errors"),
            thread_sum(&before, "send_errors"),
        ),
        burst: None,
    }
}

fn new_streams(publishers: &[Peer]) -> Vec<(Stream, Stream)> {
    publishers
        .iter()
        .map(|p| {
            (
                Stream::for_peer(p, Kind::Video),
                Stream::for_peer(p, Kind::Audio),
            )
        })
        .collect()
}

/// The fixed-load run: `s.rooms` x (1 + `s.subs`), one window, then the burst.
fn run_roomgate(mode: &str, s: &Settings, net: &Net) -> Outcome {
    let gw = start_gateway(mode, s, net, s.subs);
    let base = format!("http://{}", gw.http);
    let t0 = Instant::now();
    let publishers = connect_publishers(&base, s, net);
    let mut subscribers = Subscribers::new(s.sample);
    subscribers.add(connect_subscribers(&base, &publishers, s.subs, net));
    wait_connected(&gw, s.rooms, s.subs);
    let setup = t0.elapsed();
    let mut streams = new_streams(&publishers);
    let mut o = measure(
        mode,
        &gw,
        &publishers,
        &mut streams,
        &subscribers,
        s,
        net,
        setup,
    );
    if s.burst > 0 {
        o.burst = Some(run_burst(
            &gw,
            &publishers,
            &mut streams,
            &subscribers,
            s.burst,
            net,
        ));
    }
    drop(subscribers);
    drop(publishers);
    o
}

/// Capacity: more subscribers per room each step (x `s.growth`) on one gateway, until a
/// step fails the loss or latency bound or `s.max_steps` ran. Returns every step.
fn run_capacity(mode: &str, s: &Settings, net: &Net) -> Vec<Outcome> {
    let mut target = s.subs.max(1);
    let mut max_per_room = target;
    for _ in 1..s.max_steps {
        max_per_room = ((max_per_room as f64 * s.growth).ceil() as usize).max(max_per_room + 1);
    }
    let gw = start_gateway(mode, s, net, max_per_room);
    let base = format!("http://{}", gw.http);
    let publishers = connect_publishers(&base, s, net);
    let mut streams = new_streams(&publishers);
    let mut subscribers = Subscribers::new(s.sample);
    let mut steps = Vec::new();
    for step in 0..s.max_steps {
        let have = subscribers.len() / s.rooms.max(1);
        let t0 = Instant::now();
        subscribers.add(connect_subscribers(&base, &publishers, target - have, net));
        wait_connected(&gw, s.rooms, target);
        let setup = t0.elapsed();
        let o = measure(
            mode,
            &gw,
            &publishers,
            &mut streams,
            &subscribers,
            s,
            net,
            setup,
        );
        let pass = o.passes(s);
        eprintln!(
            "capacity {mode} step {step}: {} subscribers/room, loss {:.3}%, p99 {:.1} ms, gateway {:.2} cores, load generator {:.2} cores: {}",
            o.subs,
            o.loss() * 100.0,
            o.p99_us / 1000.0,
            o.gateway_cores(),
            o.client_cores(),
            if pass { "pass" } else { "fail" }
        );
        steps.push(o);
        if !pass {
            break;
        }
        target = ((target as f64 * s.growth).ceil() as usize).max(target + 1);
    }
    steps
}

/// A relay run: what the load generator saw plus the relay's own counters.
struct RelayRun {
    outcome: BaselineOutcome,
    subs: usize,
    send_drops: u64,
    send_errors: u64,
    relay_copies: u64,
    client_cpu_ns: u64,
    softirq_ns: u64,
    busy: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
    rcvbuf_errors: Option<u64>,
}

impl RelayRun {
    fn passes(&self, s: &Settings) -> bool {
        self.outcome.loss() <= s.max_loss && self.p99_us <= s.max_p99_ms * 1000.0
    }
}

/// The relay's capacity on the same steps as roomgate's (a fresh relay per step, which
/// costs nothing to set up), until a step fails the same bounds.
fn run_relay_capacity(send: SendMode, s: &Settings, net: &Net) -> Vec<RelayRun> {
    let mut subs = s.subs.max(1);
    let mut steps = Vec::new();
    for step in 0..s.max_steps {
        let rr = run_relay(send, s, net, subs);
        let pass = rr.passes(s);
        eprintln!(
            "capacity relay ({}) step {step}: {subs} subscribers/room, loss {:.3}%, p99 {:.1} ms, relay {:.2} cores: {}",
            send.name(),
            rr.outcome.loss() * 100.0,
            rr.p99_us / 1000.0,
            rr.outcome.cores(),
            if pass { "pass" } else { "fail" }
        );
        steps.push(rr);
        if !pass {
            break;
        }
        subs = ((subs as f64 * s.growth).ceil() as usize).max(subs + 1);
    }
    steps
}

/// Baseline (a): the same rooms, schedule and packet sizes through the plain relay.
fn run_relay(send: SendMode, s: &Settings, net: &Net, subs: usize) -> RelayRun {
    let ip = net.client_ip();
    let bind = |nonblocking: bool| {
        let u = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a load-generator socket");
        u.set_nonblocking(nonblocking).expect("nonblocking");
        u
    };
    let publishers: Vec<UdpSocket> = (0..s.rooms).map(|_| bind(true)).collect();
    let subscribers: Vec<UdpSocket> = (0..s.rooms * subs).map(|_| bind(true)).collect();
    let local = |u: &UdpSocket| u.local_addr().expect("local addr");
    let rooms: Vec<(SocketAddr, Vec<SocketAddr>)> = publishers
        .iter()
        .enumerate()
        .map(|(r, p)| {
            (
                local(p),
                subscribers[r * subs..(r + 1) * subs]
                    .iter()
                    .map(local)
                    .collect(),
            )
        })
        .collect();
    let relay = Relay::start(&net.server_wrapper(), net.path.server_ip(), send, &rooms)
        .expect("start the relay");
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let counter = {
        let latencies = latencies.clone();
        Counter::spawn(
            subscribers.iter().map(AsRawFd::as_raw_fd).collect(),
            s.sample,
            Box::new(move |_, d| {
                if let Some((sent, _)) =
                    webrtc::RtpPacket::parse(d).and_then(|p| payload_stamp(&p.payload))
                {
                    if let Ok(mut l) = latencies.lock() {
                        l.push(now_ns().saturating_sub(sent));
                    }
                }
            }),
        )
        .expect("start the counting receiver")
    };
    let mut streams: Vec<(Stream, Stream)> = (0..s.rooms)
        .map(|_| {
            (
                Stream::new(Kind::Video, random_u32(), 96),
                Stream::new(Kind::Audio, random_u32(), 111),
            )
        })
        .collect();
    let to = relay.addr;
    let mut send_for = |d: Duration| {
        send_schedule(s.rooms, s.schedule(), d, |i, kind, per_frame| {
            let mut pkt = next_packet(&mut streams[i], kind, per_frame);
            pkt.resize(pkt.len() + SRTP_TAG, 0);
            publishers[i].send_to(&pkt, to).is_ok()
        })
    };
    send_for(Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(600));
    latencies.lock().expect("latency lock").clear();
    let pid = relay.pid().to_string();
    let rcv0 = net.udp_rcvbuf_errors();
    let received0 = counter.total();
    let (cpu0, client0) = (process_cpu_ns(&pid), process_cpu_ns("self"));
    let softirqd = ksoftirqd_pids();
    let softirq0 = ksoftirqd_ns(&softirqd);
    let jiffies0 = cpu_jiffies();
    let started = Instant::now();
    let (sent, send_drops) = send_for(Duration::from_secs(s.secs));
    let wall = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let received = counter.total() - received0;
    let cpu = process_cpu_ns(&pid) - cpu0;
    let client_cpu = process_cpu_ns("self") - client0;
    let softirq = ksoftirqd_ns(&softirqd) - softirq0;
    let busy = busy_between(&jiffies0, &cpu_jiffies());
    let rcvbuf_errors = net
        .udp_rcvbuf_errors()
        .zip(rcv0)
        .map(|(a, b)| a.saturating_sub(b));
    drop(counter);
    let stats = relay.finish().expect("relay counters");
    let mut lat = std::mem::take(&mut *latencies.lock().expect("latency lock"));
    lat.sort_unstable();
    RelayRun {
        outcome: BaselineOutcome {
            name: format!("plain UDP relay ({})", send.name()),
            sent,
            copies_expected: sent * subs as u64,
            received,
            cpu_ns: cpu,
            wall,
        },
        subs,
        send_drops,
        send_errors: stats.send_errors,
        relay_copies: stats.copies,
        client_cpu_ns: client_cpu,
        softirq_ns: softirq,
        busy,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        rcvbuf_errors,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == relay::CHILD_FLAG) {
        if let Err(e) = relay::child_main(&args) {
            eprintln!("relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let s = Settings::from_env_and_args();
    raise_nofile_limit();
    if s.pin {
        // Before any other thread exists: every thread of the load generator (client
        // runtime, counting receiver, connectors) inherits this CPU.
        pin_current_thread(LOADGEN_CPU).expect("pin the load generator to CPU 0");
    }
    if (s.path == Path::Veth || s.modes.iter().any(|m| m == "ebpf")) && !require_root() {
        return;
    }
    eprintln!("media bench: {s:?}");
    let net = Net::new(&s);
    if args.iter().any(|a| a == "--simulcast") {
        let report = simulcast::run(&s, &net);
        drop(net);
        println!("{report}");
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bench-media-simulcast.md");
        std::fs::write(&out, &report).expect("write target/bench-media-simulcast.md");
        return;
    }
    let mut results = Vec::new();
    let mut capacity = Vec::new();
    for mode in &s.modes {
        if s.capacity {
            capacity.push(run_capacity(mode, &s, &net));
        } else {
            results.push(run_roomgate(mode, &s, &net));
        }
    }
    let (relays, relay_capacity): (Vec<RelayRun>, Vec<RelayRun>) = if s.capacity {
        let first = s.relay_send.first();
        (
            Vec::new(),
            first.map_or_else(Vec::new, |m| run_relay_capacity(*m, &s, &net)),
        )
    } else {
        (
            s.relay_send
                .iter()
                .map(|m| run_relay(*m, &s, &net, s.subs))
                .collect(),
            Vec::new(),
        )
    };
    drop(net);
    // Janus creates its own `rgb-gw` (same names and addresses), so it runs after `net`
    // is gone; its load generator inherits this thread's CPU pinning.
    let janus: Option<Result<janus::JanusOutcome, String>> =
        (s.janus && !s.capacity && s.path == Path::Veth).then(|| {
            eprintln!("media bench: janus baseline");
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                if let Some(cpu) = s.server_cpu() {
                    // janus::run starts Janus without a CPU option; it would inherit the
                    // load generator's.
                    let stop = &stop;
                    scope.spawn(move || keep_pinned("janus", cpu, stop));
                }
                let r = janus::run(s.rooms, s.subs, s.secs, s.kbps).map_err(|e| e.to_string());
                stop.store(true, Relaxed);
                r
            })
        });
    let own = report(
        &s,
        &results,
        &capacity,
        &relays,
        &relay_capacity,
        janus.as_ref(),
    );
    println!("{own}");
    let report = merged_report(&s, &own);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-media.md");
    std::fs::write(&out, &report).expect("write target/bench-media.md");
}

const HEADING: &str = "## Media forwarding (`cargo xtask bench media`)";
/// Starts the capacity part of the section, so that a steady run and a capacity run, each
/// recorded by `cargo xtask bench media [--capacity]`, keep each other in BENCHMARKS.md.
const CAPACITY_MARKER: &str = "<!-- media capacity -->";

/// The report this run writes: its own part, plus the other kind's part as recorded in
/// BENCHMARKS.md (xtask replaces the whole `## Media forwarding` section with it).
fn merged_report(s: &Settings, own: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let recorded = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap_or_default();
    let section = recorded.find(HEADING).map_or("", |start| {
        let rest = &recorded[start..];
        rest[1..].find("\n## ").map_or(rest, |end| &rest[..end + 1])
    });
    // xtask appends this line to every section it records; it is added again.
    let section: String = section
        .lines()
        .filter(|l| !l.starts_with("Run as root (eBPF steering"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (steady, capacity) = match section.find(CAPACITY_MARKER) {
        Some(i) => (&section[..i], &section[i..]),
        None => (section.as_str(), ""),
    };
    if s.capacity {
        let steady = if steady.trim().is_empty() {
            format!("{HEADING}\n\n")
        } else {
            format!("{}\n\n", steady.trim_end())
        };
        format!("{steady}{own}")
    } else if capacity.is_empty() {
        own.to_owned()
    } else {
        format!("{}\n\n{}", own.trim_end(), capacity.trim_end())
    }
}

fn command_line() -> String {
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if extra.is_empty() {
        "cargo xtask bench media".into()
    } else {
        format!("cargo xtask bench media {}", extra.join(" "))
    }
}

fn busy_text(busy: &[f64]) -> String {
    busy.iter()
        .enumerate()
        .map(|(i, b)| format!("cpu{i} {:.0}%", b * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    s: &Settings,
    results: &[Outcome],
    capacity: &[Vec<Outcome>],
    relays: &[RelayRun],
    relay_capacity: &[RelayRun],
    janus: Option<&Result<janus::JanusOutcome, String>>,
) -> String {
    let mut r = String::new();
    let stream_pps = s.stream_pps();
    if s.capacity {
        let _ = writeln!(
            r,
            "{CAPACITY_MARKER}\n### Capacity (`cargo xtask bench media --capacity`)\n"
        );
    } else {
        let _ = writeln!(r, "{HEADING}\n");
    }
    let _ = writeln!(
        r,
        "Machine: {}. Command: `{}` (release build, as root).\n",
        machine(),
        command_line()
    );
    let path = match s.path {
        Path::Veth => {
            "across a veth pair: the server (gateway, relay) in namespace `rgb-gw` on \
                       198.51.100.2, the load generator in the root namespace on 198.51.100.1"
        }
        Path::Loopback => "on loopback (127.0.0.1, one namespace)",
    };
    let pin = if s.pin {
        format!("pinned: server on CPU {SERVER_CPU} (`taskset`), load generator on CPU {LOADGEN_CPU} (`sched_setaffinity`)")
    } else {
        "not pinned".into()
    };
    let frames = if s.frame_bursts {
        "each video frame's packets sent back to back (`--frames burst`)"
    } else {
        "video packets spread evenly (`--frames paced`)"
    };
    let receive = if s.sample > 1 {
        format!("subscribers count every datagram with recvmmsg and decrypt 1 in {} (latency, integrity)", s.sample)
    } else {
        "subscribers decrypt every packet".into()
    };
    let _ = writeln!(
        r,
        "Load: {} rooms x (1 publisher + {} subscribers{}), {} logic threads; each publisher sends \
         {} kbit/s of video ({:.0} packets/s of {VIDEO_PAYLOAD}-byte payloads, {FPS:.0} frames/s) + \
         {AUDIO_PPS:.0} packets/s of {AUDIO_PAYLOAD}-byte audio = {stream_pps:.0} packets/s per \
         stream, {} s per window, over WHIP/WHEP + ICE + DTLS + SRTP (AEAD-AES-128-GCM), {path}; {pin}; \
         {receive}; {frames}; gateway `--gso {}`. CPU is the on-CPU time of the server's own process (schedstat of all its threads); cpuN columns are each CPU's \
         busy share (user+system+irq+softirq) from /proc/stat, the whole machine.\n",
        s.rooms,
        s.subs,
        if s.capacity { ", raised per step" } else { "" },
        s.threads,
        s.kbps,
        s.video_pps(),
        s.secs,
        s.gso,
    );
    if !results.is_empty() {
        steady_table(&mut r, results);
        baselines(&mut r, s, results, relays, janus);
        bursts(&mut r, results);
        anchors(&mut r, s, results);
    }
    for steps in capacity {
        capacity_section(&mut r, s, steps, relay_capacity);
    }
    if !relay_capacity.is_empty() {
        relay_capacity_section(&mut r, s, relay_capacity);
    }
    let _ = writeln!(
        r,
        "\nLatency is receive time minus the send time embedded in each payload (same host, same \
         clock), taken after the subscriber decrypted the packet: it includes the load \
         generator's own SRTP and scheduling, so it bounds what the gateway adds from above. \
         Across veth, the kernel delivers a sent datagram to the receiving socket in softirq on \
         the sending CPU, so the server's CPU includes the enqueue on the subscribers' sockets \
         (the same for roomgate and the relay); when softirq work piles up the kernel hands it to \
         `ksoftirqd`, whose CPU the ksoftirqd column shows and no process figure includes. With \
         `--pin`, the server's CPU busy share (cpu1) is the saturation figure."
    );
    if s.sample > 1 {
        let _ = writeln!(
            r,
            "\nThe receiver's behaviour moves the server's cost: waking a thread that waits on a \
             socket is work done in the sender's softirq, on the server's CPU. The counting loop \
             wakes at most every 0.5 ms, so the servers here pay fewer wake-ups per copy than \
             towards one reader per datagram (smoke run: the relay's CPU per copy at 160k \
             copies/s rose from ~4.4 to ~7.0 µs with --sample 1). roomgate and the relay are \
             measured with the same receiver."
        );
    }
    r
}

fn steady_table(r: &mut String, results: &[Outcome]) {
    let _ = writeln!(
        r,
        "| mode | sessions | sent pkt/s | forwarded pkt/s (gateway) | received pkt/s (subscribers) | loss | \
         gateway CPU (cores) | gateway CPU ns/fwd pkt | logic threads ns/fwd pkt | fwd pkt/s per core | \
         latency p50 / p99 / max | load-generator CPU (cores) | ksoftirqd (cores) | CPU busy |"
    );
    let _ = writeln!(
        r,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in results {
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2}% | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} µs | {:.2} | {:.2} | {} |",
            o.mode,
            o.sessions,
            o.sent as f64 / o.wall.as_secs_f64(),
            o.forwarded_per_sec(),
            o.received_per_sec(),
            o.loss() * 100.0,
            o.gateway_cores(),
            o.ns_per_forwarded(),
            o.logic_ns_per_forwarded(),
            o.per_core_pps(),
            o.p50_us,
            o.p99_us,
            o.max_us,
            o.client_cores(),
            o.softirq_cores(),
            busy_text(&o.busy),
        );
    }
    let _ = writeln!(r);
    for o in results {
        let _ = writeln!(
            r,
            "- {}: setup of {} sessions took {:.2} s; sent {} packets ({} send drops), expected \
             {} deliveries, forwarded {} (gateway counter), received {} (subscribers, {} \
             decrypted, {} latency samples); handoffs {}, misdelivered {}, SRTP unprotect failures: gateway {}, \
             subscribers {}; receive drops during the window: kernel UdpRcvbufErrors in the \
             gateway's namespace {}, gateway counter {}; gateway send errors {}.",
            o.mode,
            o.sessions,
            o.setup.as_secs_f64(),
            o.sent,
            o.send_drops,
            o.expected(),
            o.forwarded,
            o.received,
            o.decrypted,
            o.samples,
            o.handoffs,
            o.misdelivered,
            o.gateway_unprotect_failures,
            o.srtp_failures,
            opt(o.rcvbuf_errors),
            opt(o.gateway_drops),
            opt(o.send_errors),
        );
    }
}

fn baselines(
    r: &mut String,
    s: &Settings,
    results: &[Outcome],
    relays: &[RelayRun],
    janus: Option<&Result<janus::JanusOutcome, String>>,
) {
    let _ = writeln!(
        r,
        "\n### Baselines in the same run (same load generator, schedule, packet sizes and path)\n"
    );
    let _ = writeln!(
        r,
        "| server | sent | copies expected | received | loss | server CPU (cores) | CPU ns per delivered copy | latency p50 / p99 | load-generator CPU (cores) | ksoftirqd (cores) | CPU busy |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for o in results {
        let _ = writeln!(
            r,
            "| roomgate {} | {} | {} | {} | {:.2}% | {:.2} | {:.0} (per forwarded) | {:.0} / {:.0} µs | {:.2} | {:.2} | {} |",
            o.mode,
            o.sent,
            o.expected(),
            o.received,
            o.loss() * 100.0,
            o.gateway_cores(),
            o.ns_per_forwarded(),
            o.p50_us,
            o.p99_us,
            o.client_cores(),
            o.softirq_cores(),
            busy_text(&o.busy)
        );
    }
    for rr in relays {
        let b = &rr.outcome;
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {:.2}% | {:.2} | {:.0} | {:.0} / {:.0} µs | {:.2} | {:.2} | {} |",
            b.name,
            b.sent,
            b.copies_expected,
            b.received,
            b.loss() * 100.0,
            b.cores(),
            b.ns_per_copy(),
            rr.p50_us,
            rr.p99_us,
            cores(rr.client_cpu_ns, b.wall),
            cores(rr.softirq_ns, b.wall),
            busy_text(&rr.busy)
        );
    }
    match janus {
        Some(Ok(o)) => {
            let j = o.baseline();
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {:.2}% | {:.2} | {:.0} | {:.0} / {:.0} µs | {:.2} | {:.2} | {} |",
                j.name,
                j.sent,
                j.copies_expected,
                j.received,
                j.loss() * 100.0,
                j.cores(),
                j.ns_per_copy(),
                o.p50_us,
                o.p99_us,
                cores(o.client_cpu_ns, o.wall),
                cores(o.softirq_ns, o.wall),
                busy_text(&o.busy)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(
                r,
                "| Janus | | | | | | failed: {} | | | | |",
                e.replace(['\n', '|'], " ")
            );
        }
        None => {
            let _ = writeln!(
                r,
                "| Janus | | | | | | not run ({}) | | | | |",
                if s.path != Path::Veth {
                    "needs --path veth"
                } else {
                    "--janus no, or no `janus` binary"
                }
            );
        }
    }
    let _ = writeln!(r);
    if let Some(Ok(o)) = janus {
        let _ = writeln!(
            r,
            "- {}: {} rooms x (1 + {}), setup {:.1} s, {} threads while media flowed, SRTP {}; \
             {} send drops, {} SRTP failures at the subscribers, {} of Janus's connectivity \
             checks answered by the clients. With `--pin`, Janus is kept on the server CPU like the others.",
            o.name,
            o.rooms,
            o.subs,
            o.setup.as_secs_f64(),
            o.threads,
            o.srtp_profile,
            o.send_drops,
            o.srtp_failures,
            o.checks_answered
        );
    }
    for rr in relays {
        let _ = writeln!(
            r,
            "- {}: {} publisher send drops; the relay itself sent {} copies ({} send errors); kernel UdpRcvbufErrors in its namespace: {}.",
            rr.outcome.name,
            rr.send_drops,
            rr.relay_copies,
            rr.send_errors,
            rr.rcvbuf_errors.map_or("n/a".into(), |n| n.to_string()),
        );
    }
    let _ = writeln!(r, "\nRatios (same path, same load):\n");
    for o in results {
        for rr in relays {
            let ratio = o.ns_per_forwarded() / rr.outcome.ns_per_copy();
            let _ = writeln!(
                r,
                "- roomgate {} CPU per forwarded packet ÷ {} CPU per copy = {:.0} / {:.0} ns = **{ratio:.2}** (target ≤ 1.3: {}).",
                o.mode,
                rr.outcome.name,
                o.ns_per_forwarded(),
                rr.outcome.ns_per_copy(),
                if ratio <= 1.3 { "met" } else { "missed" }
            );
        }
        if let Some(j) = janus
            .and_then(|j| j.as_ref().ok())
            .map(janus::JanusOutcome::baseline)
        {
            let ratio = j.ns_per_copy() / o.ns_per_forwarded();
            let _ = writeln!(
                r,
                "- {} CPU per forwarded packet ÷ roomgate {}'s = {:.0} / {:.0} ns = **{ratio:.2}** (target ≥ 7.5: {}).",
                j.name,
                o.mode,
                j.ns_per_copy(),
                o.ns_per_forwarded(),
                if ratio >= 7.5 { "met" } else { "missed" }
            );
        }
    }
    if relays.len() == 2 {
        let _ = writeln!(
            r,
            "- relay sendmmsg ÷ relay sendto, CPU per copy: {:.2}.",
            relays[0].outcome.ns_per_copy() / relays[1].outcome.ns_per_copy()
        );
    }
}

fn bursts(r: &mut String, results: &[Outcome]) {
    let with: Vec<&Outcome> = results.iter().filter(|o| o.burst.is_some()).collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(
        r,
        "\n### Burst (after the steady window, the publishers send their share back to back, as fast as the sender can)\n"
    );
    let _ = writeln!(
        r,
        "| mode | datagrams sent | sender drops | **burst datagrams lost** (not forwarded) | copies expected / received | kernel UdpRcvbufErrors (gateway ns) | gateway receive-drop counter |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|");
    for o in with {
        let Some(b) = &o.burst else { continue };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} / {} | {} | {} |",
            o.mode,
            b.sent,
            b.send_drops,
            b.lost_at_gateway,
            b.copies_expected,
            b.copies_received,
            b.rcvbuf_errors.map_or("n/a".into(), |n| n.to_string()),
            b.gateway_drops
                .map_or("not reported".into(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        r,
        "\nCopies received can fall short because the load generator's own subscriber sockets \
         overflow during a burst; the target (0) is about datagrams the gateway did not forward."
    );
}

fn anchors(r: &mut String, s: &Settings, results: &[Outcome]) {
    let stream_pps = s.stream_pps();
    let srs = SRS_PLAYERS_PER_CORE * stream_pps;
    let ms = MEDIASOUP_CONSUMERS_PER_WORKER * stream_pps;
    let _ = writeln!(
        r,
        "\nComparison (NOT the same hardware, workload or measurement; published figures converted at \
         {stream_pps:.0} packets/s per {} kbit/s stream): SRS ~{SRS_PLAYERS_PER_CORE:.0} players per core \
         ≈ {srs:.0} packets/s per core; mediasoup ~{MEDIASOUP_CONSUMERS_PER_WORKER:.0} consumers per \
         worker (one core) ≈ {ms:.0} packets/s per core. The steady run's figures below are \
         extrapolated to a full core; `--capacity` measures at saturation.",
        s.kbps
    );
    for o in results {
        let per_core = o.per_core_pps();
        let _ = writeln!(
            r,
            "- roomgate {}: {per_core:.0} forwarded packets/s per gateway core ≈ {:.0} subscribers per core \
             at this bitrate, extrapolated ({:.2}x the SRS figure, {:.2}x the mediasoup figure).",
            o.mode,
            per_core / stream_pps,
            per_core / srs,
            per_core / ms
        );
    }
}

fn saturated_side(o: &Outcome) -> String {
    let at = |c: usize| o.busy.get(c).copied().unwrap_or(0.0);
    let (server, loadgen) = (at(SERVER_CPU), at(LOADGEN_CPU));
    match (server >= SATURATED, loadgen >= SATURATED) {
        (true, false) => format!("the gateway's CPU {SERVER_CPU} ({:.0}% busy; load generator's CPU {LOADGEN_CPU} {:.0}%)", server * 100.0, loadgen * 100.0),
        (false, true) => format!("the load generator's CPU {LOADGEN_CPU} ({:.0}% busy; gateway's CPU {SERVER_CPU} {:.0}%): the generator, not the gateway, was the limit", loadgen * 100.0, server * 100.0),
        (true, true) => format!("both CPUs ({:.0}% / {:.0}% busy)", server * 100.0, loadgen * 100.0),
        (false, false) => format!("neither CPU above {:.0}% (gateway CPU {SERVER_CPU} {:.0}%, load generator CPU {LOADGEN_CPU} {:.0}%): the bound was hit by something else (buffers, scheduling)", SATURATED * 100.0, server * 100.0, loadgen * 100.0),
    }
}

fn capacity_section(r: &mut String, s: &Settings, steps: &[Outcome], relay: &[RelayRun]) {
    let Some(first) = steps.first() else { return };
    let mode = &first.mode;
    let _ = writeln!(
        r,
        "\n#### roomgate, {mode} mode ({} logic thread{}; steps x{} subscribers per room until loss > {:.2}% or p99 > {:.0} ms)\n",
        s.threads,
        if s.threads == 1 { "" } else { "s" },
        s.growth,
        s.max_loss * 100.0,
        s.max_p99_ms
    );
    let _ = writeln!(
        r,
        "| subscribers/room | subscribers | setup (s) | sent pkt/s | forwarded pkt/s (gateway) | received pkt/s | loss | p50 / p99 | gateway CPU (cores) | ns/fwd pkt | load-generator CPU (cores) | ksoftirqd (cores) | CPU busy | receive drops (kernel / gateway) | result |"
    );
    let _ = writeln!(
        r,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
    );
    for o in steps {
        let _ = writeln!(
            r,
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.3}% | {:.1} / {:.1} ms | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} / {} | {} |",
            o.subs,
            o.subs * s.rooms,
            o.setup.as_secs_f64(),
            o.sent as f64 / o.wall.as_secs_f64(),
            o.forwarded_per_sec(),
            o.received_per_sec(),
            o.loss() * 100.0,
            o.p50_us / 1000.0,
            o.p99_us / 1000.0,
            o.gateway_cores(),
            o.ns_per_forwarded(),
            o.client_cores(),
            o.softirq_cores(),
            busy_text(&o.busy),
            opt(o.rcvbuf_errors),
            opt(o.gateway_drops),
            if o.passes(s) { "pass" } else { "**fail**" }
        );
    }
    let best = steps.iter().rfind(|o| o.passes(s));
    let _ = writeln!(r);
    match best {
        Some(b) => {
            let _ = writeln!(
                r,
                "- Largest passing step: **{} subscribers** ({} rooms x {}) at {} kbit/s, {:.0} forwarded \
                 packets/s = **{:.0} per logic thread**; gateway process {:.2} cores, ksoftirqd {:.2} \
                 cores, {} → {:.0} subscribers per gateway-process core.",
                b.subs * s.rooms,
                s.rooms,
                b.subs,
                s.kbps,
                b.forwarded_per_sec(),
                b.forwarded_per_sec() / s.threads.max(1) as f64,
                b.gateway_cores(),
                b.softirq_cores(),
                busy_text(&b.busy),
                (b.subs * s.rooms) as f64 / b.gateway_cores().max(0.01),
            );
            if b.gateway_cores() < SATURATED {
                let _ = writeln!(
                    r,
                    "- At that step the gateway used {:.2} cores, below saturation: the per-core \
                     figure is extrapolated, and the subscriber count is a lower bound.",
                    b.gateway_cores()
                );
            }
        }
        None => {
            let _ = writeln!(r, "- No step passed.");
        }
    }
    if let Some(b) = best {
        if let Some(rr) = relay.iter().find(|rr| rr.subs == b.subs) {
            let ratio = b.ns_per_forwarded() / rr.outcome.ns_per_copy();
            let _ = writeln!(
                r,
                "- At that load, roomgate CPU per forwarded packet ÷ {} CPU per copy = {:.0} / {:.0} ns = **{ratio:.2}** (target ≤ 1.3: {}).",
                rr.outcome.name,
                b.ns_per_forwarded(),
                rr.outcome.ns_per_copy(),
                if ratio <= 1.3 { "met" } else { "missed" }
            );
        }
    }
    match steps.last().filter(|o| !o.passes(s)) {
        Some(f) => {
            let _ = writeln!(
                r,
                "- The first failing step ({} subscribers/room: loss {:.3}%, p99 {:.1} ms) saturated {}. \
                 (On an overloaded step the gateway folds its counters late, so its forwarded \
                 figure and ns/fwd mean little there; the received column is the load generator's.)",
                f.subs,
                f.loss() * 100.0,
                f.p99_us / 1000.0,
                saturated_side(f)
            );
        }
        None => {
            let _ = writeln!(
                r,
                "- Every step passed (--max-steps {} reached): raise --max-steps or --subs.",
                s.max_steps
            );
        }
    }
}

fn relay_capacity_section(r: &mut String, s: &Settings, steps: &[RelayRun]) {
    let Some(first) = steps.first() else { return };
    let _ = writeln!(
        r,
        "\n#### {} (same steps, bounds, pinning and load generator)\n",
        first.outcome.name
    );
    let _ = writeln!(
        r,
        "| subscribers/room | subscribers | sent pkt/s | received copies/s | loss | p50 / p99 | relay CPU (cores) | ns/copy | load-generator CPU (cores) | ksoftirqd (cores) | CPU busy | result |"
    );
    let _ = writeln!(
        r,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for rr in steps {
        let o = &rr.outcome;
        let secs = o.wall.as_secs_f64();
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} | {:.0} | {:.3}% | {:.1} / {:.1} ms | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} |",
            rr.subs,
            rr.subs * s.rooms,
            o.sent as f64 / secs,
            o.received as f64 / secs,
            o.loss() * 100.0,
            rr.p50_us / 1000.0,
            rr.p99_us / 1000.0,
            o.cores(),
            o.ns_per_copy(),
            cores(rr.client_cpu_ns, o.wall),
            cores(rr.softirq_ns, o.wall),
            busy_text(&rr.busy),
            if rr.passes(s) { "pass" } else { "**fail**" }
        );
    }
    let _ = writeln!(r);
    match steps.iter().rfind(|rr| rr.passes(s)) {
        Some(b) => {
            let _ = writeln!(
                r,
                "- Largest passing step: **{} subscribers** at {} kbit/s, {:.0} copies/s; relay process {:.2} cores, ksoftirqd {:.2} cores, {} → {:.0} subscribers per relay-process core.",
                b.subs * s.rooms,
                s.kbps,
                b.outcome.received as f64 / b.outcome.wall.as_secs_f64(),
                b.outcome.cores(),
                cores(b.softirq_ns, b.outcome.wall),
                busy_text(&b.busy),
                (b.subs * s.rooms) as f64 / b.outcome.cores().max(0.01),
            );
        }
        None => {
            let _ = writeln!(r, "- No step passed.");
        }
    }
}
