//! `cargo xtask bench steering`: datagrams/s and CPU time per datagram for
//!
//! (a) roomgate, eBPF steering          (real binary, real program in the kernel)
//! (b) roomgate, connected fallback     (real binary)
//! (c) single reader + channel handoff  (baseline: one socket, one reader thread that
//!     hands every datagram to the owning worker over a channel)
//! (d) plain SO_REUSEPORT, no steering  (baseline: kernel hash; share on the wrong thread)
//!
//! All four see the same load: the same clients, rooms and datagrams from one sender
//! thread on loopback, for the same time. CPU is the on-CPU time of the receiving
//! threads from /proc/<pid>/task/<tid>/schedstat (ns). The program's own cost comes from
//! the kernel's BPF statistics (run_time_ns / run_cnt in the program's fdinfo).
//!
//! Then the scaling run (`steering/scaling.rs`): 128 to 16,384 pinned clients, both modes.
//! Flags (after `--`): `--scaling` runs only the scaling part; `--clients 128,1024`,
//! `--modes ebpf,connected`, `--secs 4` shape it; `--label TEXT` names the kernel it runs
//! on in the report's heading (the QEMU runs of `cargo xtask bench steering --kernel 5.10`).
#[path = "steering/scaling.rs"]
mod scaling;
#[path = "../tests/support/mod.rs"]
mod support;
mod util;

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::IoSliceMut,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState, BATCH_SIZE};
use socket2::{Domain, Protocol, Socket, Type};
use support::*;
use util::*;

const THREADS: usize = 2;

struct Result_ {
    name: &'static str,
    received: u64,
    wall: Duration,
    cpu_ns: u64,
    wrong_thread: Option<f64>,
    note: String,
}

impl Result_ {
    fn per_sec(&self) -> f64 {
        self.received as f64 / self.wall.as_secs_f64()
    }
    fn ns_per_datagram(&self) -> f64 {
        self.cpu_ns as f64 / self.received.max(1) as f64
    }
    fn per_cpu_sec(&self) -> f64 {
        self.received as f64 / (self.cpu_ns.max(1) as f64 / 1e9)
    }
}

/// Program cost from fdinfo of the gateway's sk_reuseport program (type 21).
fn program_stats(pid: u32) -> Option<(u64, u64, Option<u64>)> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(21) {
            return Some((
                field("run_time_ns:")?,
                field("run_cnt:")?,
                field("verified_insns:"),
            ));
        }
    }
    None
}

fn gateway_run(
    steering: &'static str,
    name: &'static str,
) -> (Result_, Option<(u64, u64, Option<u64>)>) {
    let gw = Gateway::builder(steering, THREADS)
        .set("--log-level", "warn")
        .start();
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    let clients = client_sockets();
    let mut i = 0;
    for r in 0..ROOMS {
        for _ in 0..PER_ROOM {
            let p = gw.create(&format!("bench-{r}"));
            let c = Client {
                socket: clients[i].try_clone().expect("clone"),
            };
            c.socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .ok();
            assert!(matches!(c.ice_check(gw.udp, &p), StunReply::Success { .. }));
            i += 1;
        }
    }
    let pid = gw_pid(&gw);
    let tids = threads_named(pid, "roomgate-logic");
    let before = gw.status();
    let cpu0 = cpu_ns(pid, &tids);
    let t0 = Instant::now();
    let sent = blast(&clients, gw.udp);
    std::thread::sleep(Duration::from_millis(200));
    let wall = t0.elapsed();
    let cpu = cpu_ns(pid, &tids) - cpu0;
    let after = gw.status();
    let received =
        sum_threads(&after, "session_datagrams") - sum_threads(&before, "session_datagrams");
    let misdelivered = sum_threads(&after, "misdelivered") + sum_threads(&after, "no_session");
    let prog = program_stats(pid);
    (
        Result_ {
            name,
            received,
            wall,
            cpu_ns: cpu,
            wrong_thread: Some(misdelivered as f64 / received.max(1) as f64),
            note: format!("sent {sent}, handoffs {}", sum_threads(&after, "handoffs")),
        },
        prog,
    )
}

/// Same load against a gateway running the `stats-floor` program (one counter bump, one
/// select): what the kernel's BPF statistics report for the cheapest useful program here.
fn floor_run(object: &str) -> Option<(u64, u64, Option<u64>)> {
    let gw = Gateway::builder("ebpf", THREADS)
        .set("--log-level", "warn")
        .args(["--ebpf-object", object])
        .start();
    let clients = client_sockets();
    blast(&clients, gw.udp);
    program_stats(gw_pid(&gw))
}

fn gw_pid(gw: &Gateway) -> u32 {
    gw.pid()
}

/// Receive loop shared by the baselines: recvmmsg batches via quinn-udp, like roomgate.
fn recv_loop(socket: &UdpSocket, stop: &AtomicBool, mut on: impl FnMut(&[u8], SocketAddr)) {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let state = UdpSocketState::new(UdpSockRef::from(socket)).expect("state");
    let mut buf = vec![0u8; 2048 * BATCH_SIZE];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    while !stop.load(Ordering::Relaxed) {
        let mut chunks = buf.chunks_mut(2048).map(IoSliceMut::new);
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        let Ok(n) = state.recv(UdpSockRef::from(socket), &mut iovs, &mut meta) else {
            continue;
        };
        for (i, m) in meta.iter().enumerate().take(n) {
            on(&buf[i * 2048..i * 2048 + m.len.min(2048)], m.addr);
        }
    }
}

/// (c): one reader, owner lookup, copy into a channel, worker counts per session.
fn handoff_baseline(clients: &[UdpSocket], owners: &HashMap<SocketAddr, usize>) -> Result_ {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = socket.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut tids = Vec::new();
    let (tid_tx, tid_rx) = mpsc::channel();
    let mut workers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, SocketAddr)>(65536);
        senders.push(tx);
        let received = received.clone();
        let tid_tx = tid_tx.clone();
        workers.push(std::thread::spawn(move || {
            let _ = tid_tx.send(gettid());
            let mut sessions: HashMap<SocketAddr, u64> = HashMap::new();
            while let Ok((d, from)) = rx.recv() {
                *sessions.entry(from).or_default() += d.len() as u64;
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let reader = {
        let stop = stop.clone();
        let owners = owners.clone();
        let tid_tx = tid_tx.clone();
        std::thread::spawn(move || {
            let _ = tid_tx.send(gettid());
            recv_loop(&socket, &stop, |d, from| {
                if let Some(&o) = owners.get(&from) {
                    let _ = senders[o].try_send((d.to_vec(), from));
                }
            });
        })
    };
    for _ in 0..=THREADS {
        tids.push(tid_rx.recv().expect("tid"));
    }
    let pid = std::process::id();
    let cpu0 = cpu_ns(pid, &tids);
    let r0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let sent = blast(clients, to);
    std::thread::sleep(Duration::from_millis(200));
    let wall = t0.elapsed();
    let cpu = cpu_ns(pid, &tids) - cpu0;
    let got = received.load(Ordering::Relaxed) - r0;
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    for w in workers {
        let _ = w.join();
    }
    Result_ {
        name: "(c) single reader + channel handoff",
        received: got,
        wall,
        cpu_ns: cpu,
        wrong_thread: None,
        note: format!("sent {sent}; every datagram crosses threads"),
    }
}

/// (d): THREADS sockets in one SO_REUSEPORT group, no program: the kernel's 4-tuple hash.
fn plain_reuseport_baseline(clients: &[UdpSocket], owners: &HashMap<SocketAddr, usize>) -> Result_ {
    let first = reuseport_socket("127.0.0.1:0".parse().expect("addr"));
    let to = first.local_addr().expect("addr");
    let mut sockets = vec![first];
    for _ in 1..THREADS {
        sockets.push(reuseport_socket(to));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let right = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let (tid_tx, tid_rx) = mpsc::channel();
    let mut joins = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let (stop, right, wrong, owners, tid_tx) = (
            stop.clone(),
            right.clone(),
            wrong.clone(),
            owners.clone(),
            tid_tx.clone(),
        );
        joins.push(std::thread::spawn(move || {
            let _ = tid_tx.send(gettid());
            let mut sessions: HashMap<SocketAddr, u64> = HashMap::new();
            recv_loop(&socket, &stop, |d, from| {
                if owners.get(&from) == Some(&index) {
                    *sessions.entry(from).or_default() += d.len() as u64;
                    right.fetch_add(1, Ordering::Relaxed);
                } else {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            });
        }));
    }
    let tids: Vec<u32> = (0..THREADS).map(|_| tid_rx.recv().expect("tid")).collect();
    let pid = std::process::id();
    let cpu0 = cpu_ns(pid, &tids);
    let t0 = Instant::now();
    let sent = blast(clients, to);
    std::thread::sleep(Duration::from_millis(200));
    let wall = t0.elapsed();
    let cpu = cpu_ns(pid, &tids) - cpu0;
    stop.store(true, Ordering::Relaxed);
    for j in joins {
        let _ = j.join();
    }
    let (r, w) = (right.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
    Result_ {
        name: "(d) plain SO_REUSEPORT, no steering",
        received: r + w,
        wall,
        cpu_ns: cpu,
        wrong_thread: Some(w as f64 / (r + w).max(1) as f64),
        note: format!("sent {sent}; wrong-thread datagrams would need a handoff"),
    }
}

fn reuseport_socket(addr: SocketAddr) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_port(true).expect("reuseport");
    s.bind(&addr.into()).expect("bind");
    UdpSocket::from(s)
}

/// Marker lines around the scaling report on stdout: a run inside a QEMU guest can only
/// hand its report back through the console.
pub const REPORT_BEGIN: &str = "----- steering scaling report begin -----";
pub const REPORT_END: &str = "----- steering scaling report end -----";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !require_root() {
        return;
    }
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats = std::fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(stats_path, "1");
    if !args.iter().any(|a| a == "--scaling") {
        comparison();
    }
    let opts = scaling::Options::from_args(&args, THREADS);
    let rows = scaling::run(&opts);
    let _ = std::fs::write(stats_path, old_stats.trim());
    let label = args
        .iter()
        .position(|a| a == "--label")
        .and_then(|i| args.get(i + 1));
    let heading = match label {
        Some(l) => format!("## Steering scaling, {l}"),
        None => "## Steering scaling".to_owned(),
    };
    let report = scaling::report(&rows, &opts, &machine(), &heading);
    println!("{REPORT_BEGIN}\n{report}{REPORT_END}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-steering-scaling.md");
    let _ = std::fs::write(&out, &report);
    println!("written to {}", out.display());
}

/// The four designs under one load (the table of the "Steering" section).
fn comparison() {
    let (ebpf, prog) = gateway_run("ebpf", "(a) roomgate, eBPF steering");
    let floor = std::env::var("ROOMGATE_EBPF_FLOOR_OBJECT")
        .ok()
        .and_then(|o| floor_run(&o));
    let (connected, _) = gateway_run("connected", "(b) roomgate, connected fallback");
    let clients = client_sockets();
    // Owners for the baselines: room r -> thread r % THREADS, participants spread evenly.
    let owners: HashMap<SocketAddr, usize> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.local_addr().expect("addr"), (i / PER_ROOM) % THREADS))
        .collect();
    let handoff = handoff_baseline(&clients, &owners);
    let plain = plain_reuseport_baseline(&clients, &owners);

    let results = [&ebpf, &connected, &handoff, &plain];
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| design | datagrams/s | receiver CPU ns/datagram | datagrams per CPU-second | vs (c) per CPU-s | wrong thread | notes |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---|");
    for r in results {
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2}x | {} | {} |",
            r.name,
            r.per_sec(),
            r.ns_per_datagram(),
            r.per_cpu_sec(),
            r.per_cpu_sec() / handoff.per_cpu_sec(),
            r.wrong_thread
                .map_or("n/a".into(), |w| format!("{:.1}%", w * 100.0)),
            r.note
        );
    }
    let prog_line = match prog {
        Some((ns, cnt, insns)) => format!(
            "eBPF program: {} runs, {:.0} ns per packet (kernel bpf stats run_time_ns/run_cnt){}",
            cnt,
            ns as f64 / cnt.max(1) as f64,
            insns.map_or(String::new(), |i| format!(", {i} instructions verified"))
        ),
        None => "eBPF program: stats unavailable".into(),
    };
    let per_run = |(ns, cnt, _): (u64, u64, Option<u64>)| ns as f64 / cnt.max(1) as f64;
    let floor_line = match (prog, floor) {
        (Some(p), Some(f)) => format!(
            "\nCalibration: a floor program (one counter bump + one select, `--features stats-floor`) under the \
             same load reports {:.0} ns per packet; roomgate's parsing and flow lookup add {:.0} ns on top of it.",
            per_run(f),
            per_run(p) - per_run(f)
        ),
        _ => String::new(),
    };
    let prog_line = format!("{prog_line}{floor_line}");
    let report = format!(
        "## Steering (`cargo xtask bench steering`)\n\nMachine: {}. {} logic threads, {} rooms x {} participants, \
         one sender thread on loopback for {} s per design, RTP-sized (200 B) datagrams.\n\n{}\n{}\n",
        machine(),
        THREADS,
        ROOMS,
        PER_ROOM,
        RUN_FOR.as_secs(),
        table,
        prog_line
    );
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-steering.md");
    let _ = std::fs::write(&out, &report);
    println!("written to {}", out.display());
}
