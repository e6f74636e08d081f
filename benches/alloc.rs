//! `cargo xtask bench alloc`: heap allocations per forwarded packet on the logic threads.
//!
//! The gateway runs inside this bench process (`gateway::app::run`, real sockets, real
//! eBPF program, real WHIP/WHEP + ICE + DTLS + SRTP), so the bench's global allocator sees
//! every allocation it makes. The allocator counts per OS thread; at the end the counts of
//! the threads named `roomgate-logic-*` are summed, so the load generator (publisher and
//! subscribers in the same process) does not count. Each steering mode runs in a child
//! process of its own, because a gateway only stops on SIGTERM.
#[path = "../tests/support/mod.rs"]
mod support;
mod util;
#[path = "../tests/support/webrtc.rs"]
mod webrtc;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fmt::Write as _,
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use clap::Parser;
use support::{eventually, require_root};
use webrtc::{Delivery, Kind, Peer, PeerConfig, Stream};

const SLOTS: usize = 1024;
const VIDEO_PAYLOAD: usize = 1100;
const AUDIO_PAYLOAD: usize = 160;
const SUBS: usize = 25;
/// Long enough for every slot of the 512-packet retransmission rings to be written once
/// (audio at 50 packets/s takes ~10 s): until then each new slot gets its buffer.
const WARMUP: Duration = Duration::from_secs(12);
/// Measured window (ROOMGATE_BENCH_SECS overrides it, e.g. to attach a profiler).
fn measure() -> Duration {
    Duration::from_secs(
        std::env::var("ROOMGATE_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

/// Per-thread allocation counts in fixed slots: a thread claims a slot on its first
/// allocation and records its tid, so no allocation is needed to count one.
struct Slot {
    tid: AtomicU32,
    allocations: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    tid: AtomicU32::new(0),
    allocations: AtomicU64::new(0),
};
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Allocations of threads that found the table full.
static OVERFLOW: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

struct Counting;

fn count_one() {
    let _ = MY_SLOT.try_with(|slot| {
        let mut i = slot.get();
        if i == usize::MAX {
            i = SLOTS_USED.fetch_add(1, Relaxed);
            slot.set(i);
            if let Some(s) = TABLE.get(i) {
                // SAFETY: gettid has no preconditions.
                s.tid.store(unsafe { libc::gettid() } as u32, Relaxed);
            }
        }
        match TABLE.get(i) {
            Some(s) => s.allocations.fetch_add(1, Relaxed),
            None => OVERFLOW.fetch_add(1, Relaxed),
        };
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches
// only atomics and a const-initialised thread local (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations so far by the threads whose name starts with `roomgate-logic`.
fn logic_allocations() -> u64 {
    let used = SLOTS_USED.load(Relaxed).min(SLOTS);
    TABLE[..used]
        .iter()
        .filter(|s| {
            let tid = s.tid.load(Relaxed);
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.starts_with("roomgate-logic"))
        })
        .map(|s| s.allocations.load(Relaxed))
        .sum()
}

fn forwarded(base: &str) -> u64 {
    let (_, v) = support::http("GET", &format!("{base}/api/status"));
    v["threads"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["media"]["rtp_forwarded"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Binding requests answered with success (ICE consent checks).
fn checks(base: &str) -> u64 {
    let (_, v) = support::http("GET", &format!("{base}/api/status"));
    v["threads"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["stun"]["success"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Paced like the media bench: 600 kbit/s of video in 30 frames/s plus 50 audio packets/s.
fn send(publisher: &Peer, video: &mut Stream, audio: &mut Stream, for_: Duration) -> u64 {
    let video_pps = 600_000.0 / 8.0 / VIDEO_PAYLOAD as f64;
    let per_frame = (video_pps / 30.0).ceil() as u32;
    let (v_every, a_every) = (
        Duration::from_secs_f64(1.0 / video_pps),
        Duration::from_millis(20),
    );
    let start = Instant::now();
    let (mut next_v, mut next_a, mut sent) = (start, start, 0);
    while start.elapsed() < for_ {
        let now = Instant::now();
        while next_v <= now {
            let p = video.next(VIDEO_PAYLOAD, per_frame);
            publisher.send_raw(&publisher.protect_rtp(&p.to_bytes()));
            next_v += v_every;
            sent += 1;
        }
        while next_a <= now {
            let p = audio.next(AUDIO_PAYLOAD, 1);
            publisher.send_raw(&publisher.protect_rtp(&p.to_bytes()));
            next_a += a_every;
            sent += 1;
        }
        std::thread::sleep(next_v.min(next_a).saturating_duration_since(Instant::now()));
    }
    sent
}

/// One mode, in this (child) process: prints `RESULT mode sent forwarded allocations`.
fn child(mode: &str) {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let cli = gateway::config::Cli::parse_from([
        "roomgate",
        "--steering",
        mode,
        "--threads",
        "2",
        "--udp-bind",
        "127.0.0.1:0",
        "--http-bind",
        &http.to_string(),
        "--public-ip",
        "127.0.0.1",
    ]);
    let config = gateway::config::Config::from_cli(cli).expect("config");
    std::thread::spawn(move || gateway::app::run(config).expect("gateway runs"));
    let base = format!("http://{http}");
    assert!(
        eventually(Duration::from_secs(20), || support::try_get(&format!(
            "{base}/healthz"
        ))
        .is_some()),
        "gateway did not start"
    );
    let mut cfg = PeerConfig::publisher();
    cfg.delivery = Delivery::Stats;
    let publisher = webrtc::publish(&base, "alloc", cfg);
    let subscribers: Vec<Peer> = (0..SUBS)
        .map(|_| {
            let mut cfg = PeerConfig::subscriber();
            cfg.delivery = Delivery::Stats;
            webrtc::subscribe(&base, "alloc", Some(&publisher.participant), cfg)
        })
        .collect();
    let mut video = Stream::for_peer(&publisher, Kind::Video);
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    // Warm-up fills the retransmission rings, the buffer pools and every table.
    send(&publisher, &mut video, &mut audio, WARMUP);
    // Two windows: as clients behave (consent checks every 3 s from every client), and
    // media alone, which isolates the forwarding path from the STUN library's allocations.
    for window in ["with-consent", "media-only"] {
        if window == "media-only" {
            for p in subscribers.iter().chain(std::iter::once(&publisher)) {
                p.stop_consent();
            }
        }
        std::thread::sleep(Duration::from_millis(700));
        let (a0, f0, c0) = (logic_allocations(), forwarded(&base), checks(&base));
        let sent = send(&publisher, &mut video, &mut audio, measure());
        std::thread::sleep(Duration::from_millis(700));
        let (a1, f1, c1) = (logic_allocations(), forwarded(&base), checks(&base));
        println!(
            "RESULT {mode}/{window} {sent} {} {} {} {}",
            f1 - f0,
            a1 - a0,
            c1 - c0,
            OVERFLOW.load(Relaxed)
        );
    }
    drop(subscribers);
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args.get(i + 1).map_or("connected", String::as_str));
        return;
    }
    let mut rows = Vec::new();
    for mode in ["ebpf", "connected"] {
        if mode == "ebpf" && !require_root() {
            continue;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--child", mode])
            .output()
            .expect("run the bench child");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(str::to_owned)
            .collect();
        assert!(
            lines.len() == 2,
            "{mode}: no result\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in lines {
            eprintln!("alloc bench: {line}");
            rows.push(line);
        }
    }
    let mut r = String::new();
    let _ = writeln!(
        r,
        "## Heap allocations per forwarded packet (`cargo xtask bench alloc`)\n"
    );
    let _ = writeln!(
        r,
        "Machine: {}. Command: `cargo xtask bench alloc` (release build, as root).\n",
        util::machine()
    );
    let _ = writeln!(
        r,
        "The gateway runs inside the bench process with a counting global allocator that \
         keeps one counter per OS thread; only the `roomgate-logic-*` threads are summed. \
         Load: 1 room, 1 publisher (600 kbit/s video + 50 packets/s audio, SRTP) and {SUBS} \
         subscribers over WHIP/WHEP, ICE, DTLS and SRTP on loopback, {} s warm-up, then {} s \
         measured twice: first as the clients behave (each sends an ICE consent check every \
         3 s), then with consent checks stopped, which leaves the forwarding path alone \
         (RTP in, SRTP unprotect, fan-out, SRTP protect, send, plus receiver reports, timers \
         and counter publication). Answering a STUN check allocates inside the STUN library \
         (stun-rs: message decode, short-term HMAC key, encode); that is per check, not per \
         forwarded packet.\n",
        WARMUP.as_secs(),
        measure().as_secs()
    );
    let _ = writeln!(
        r,
        "| mode / window | packets sent | copies forwarded | consent checks answered | allocations (logic threads) | allocations per forwarded packet |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let f: Vec<&str> = row.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (fwd, allocs) = (num(2), num(3));
        let _ = writeln!(
            r,
            "| {} | {} | {fwd} | {} | {allocs} | {:.4} |",
            f.first().unwrap_or(&"?"),
            num(1),
            num(4),
            allocs as f64 / fwd.max(1) as f64
        );
    }
    twcc_history_memory(&mut r);
    println!("{r}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-alloc.md");
    std::fs::write(&out, &r).expect("write target/bench-alloc.md");
}

/// The transport-wide CC send history each viewer with transport-cc holds: its ring after
/// 10 s of sends at a steady rate, against the fixed ring it replaced.
fn twcc_history_memory(r: &mut String) {
    use gateway::sfu::twcc::TwccHistory;
    // The replaced layout: 4,096 entries of 24 bytes (i64 seq, u64 send time, u32 size,
    // a status byte, padding), whatever the viewer's rate.
    const FIXED_RING_BYTES: usize = 4096 * 24;
    let _ = writeln!(
        r,
        "\n### Transport-wide CC send history per viewer\n\n\
         Every viewer with transport-cc has a history of its recent sends, which its feedback \
         is matched against. The ring grows only while it would overwrite a send younger than \
         2 s, so its size follows the viewer's packet rate. Measured here: the ring's heap \
         bytes (`TwccHistory::heap_bytes`) after 10 s of steady sends at each rate, in this \
         run, against the fixed ring of 4,096 entries of 24 bytes that every viewer held \
         before ({FIXED_RING_BYTES} B).\n"
    );
    let _ = writeln!(
        r,
        "| packets/s (about Mbit/s at 1,200 B) | ring entries | heap bytes | fixed ring / this |"
    );
    let _ = writeln!(r, "|---:|---:|---:|---:|");
    let t0 = Instant::now();
    for rate in [50u32, 100, 300, 1_000, 2_000, 5_000] {
        let mut history = TwccHistory::new();
        let gap = Duration::from_secs(1) / rate;
        for i in 0..rate * 10 {
            let seq = history.next_seq();
            history.on_sent(seq, 1_200, t0 + gap * i);
        }
        let bytes = history.heap_bytes();
        let _ = writeln!(
            r,
            "| {rate} ({:.1}) | {} | {bytes} | {:.0}x |",
            f64::from(rate) * 1_200.0 * 8.0 / 1e6,
            history.capacity(),
            FIXED_RING_BYTES as f64 / bytes as f64
        );
    }
}
