//! Janus baseline for the media benchmark: the same load as roomgate's (R rooms x (1
//! publisher + S subscribers), video at K kbit/s of ~1100-byte packets at 30 frames/s plus
//! 50 packets/s of 160-byte audio) through Janus 1.1.2's videoroom plugin, so that Janus's
//! CPU per forwarded packet can be compared with roomgate's in the same run.
//!
//! Janus runs in the namespace `rgb-gw` behind a veth (it gathers no loopback candidates),
//! ICE-lite, only the HTTP transport and the videoroom plugin, default event loops (one
//! thread per handle). The load generator runs in the root namespace on 198.51.100.1 and
//! is a browser-like client per peer (see `client.rs`). Needs root and Debian's `janus`.
//!
//! Include next to `support` and `webrtc` at the bench's crate root:
//! `#[path = "../tests/support/mod.rs"] mod support; #[path = "../tests/support/webrtc.rs"]
//! mod webrtc; mod janus;`.
mod api;
mod client;
mod config;
mod process;
mod schedule;
mod sdp;
mod signal;
mod stun;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use api::{Api, Session};
use signal::Publisher;

use crate::util::{
    baseline::BaselineOutcome,
    cpu::{busy_between, cpu_jiffies, ksoftirqd_ns, ksoftirqd_pids, process_cpu_ns},
    netns::{self, VethNs},
};

#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("Janus API: {0}")]
    Api(String),
    #[error("SDP: {0}")]
    Sdp(String),
    #[error("ICE: {0}")]
    Ice(String),
    #[error("DTLS: {0}")]
    Dtls(String),
}

fn parse_ip(s: &str) -> Result<std::net::Ipv4Addr, JanusError> {
    s.parse()
        .map_err(|e| JanusError::Setup(format!("bench address {s:?}: {e}")))
}

fn ns_ip() -> Result<std::net::Ipv4Addr, JanusError> {
    parse_ip(netns::NS_IP)
}

pub(crate) fn host_ip() -> Result<std::net::IpAddr, JanusError> {
    parse_ip(netns::HOST_IP).map(Into::into)
}

/// One Janus run. "Forwarded" is what the subscribers decrypted: Janus's own counters
/// are behind its admin API, which this configuration leaves off.
#[derive(Clone, Debug)]
pub struct JanusOutcome {
    pub name: String,
    pub rooms: usize,
    pub subs: usize,
    pub wall: Duration,
    /// RTP packets the publishers sent in the measured window.
    pub sent: u64,
    /// Sends refused by a full client socket (counted, never retried).
    pub send_drops: u64,
    /// `sent` x subscribers per room.
    pub copies_expected: u64,
    pub copies_received: u64,
    /// On-CPU ns of the whole Janus process over the window.
    pub cpu_ns: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub setup: Duration,
    /// Janus's thread count while media flowed, and the SRTP profile negotiated.
    pub threads: usize,
    pub srtp_profile: String,
    pub srtp_failures: u64,
    /// Janus's own connectivity checks (libnice sends them even when lite) that the
    /// clients answered, over the whole run.
    pub checks_answered: u64,
    /// Over the window, measured as the media bench measures its roomgate runs: the load
    /// generator's own CPU (this process), the ksoftirqd threads' CPU (softirq work no
    /// process figure includes) and each CPU's busy share from /proc/stat.
    pub client_cpu_ns: u64,
    pub softirq_ns: u64,
    pub busy: Vec<f64>,
}

impl JanusOutcome {
    /// The row the media bench reports next to roomgate and the relay.
    pub fn baseline(&self) -> BaselineOutcome {
        BaselineOutcome {
            name: self.name.clone(),
            sent: self.sent,
            copies_expected: self.copies_expected,
            received: self.copies_received,
            cpu_ns: self.cpu_ns,
            wall: self.wall,
        }
    }
}

const ROOM_BASE: u64 = 4200;
/// Signalling and ICE/DTLS run on this many threads at once, each with its own Janus
/// session (so every long-poll event belongs to the thread that waits for it).
const CONNECTORS: usize = 4;

/// Connect `count` items with up to CONNECTORS threads; the first error wins.
fn connect_many<T: Send>(
    api: &Api,
    count: usize,
    make: impl Fn(&Session, usize) -> Result<T, JanusError> + Sync,
) -> Result<Vec<T>, JanusError> {
    let slots: Vec<Mutex<Option<Result<T, JanusError>>>> =
        (0..count).map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..CONNECTORS.min(count.max(1)) {
            s.spawn(|| {
                let session = match api.create_session() {
                    Ok(s) => s,
                    Err(e) => {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(slot) = slots.get(i) {
                            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e));
                        }
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(slot) = slots.get(i) else { break };
                    let r = make(&session, i);
                    let failed = r.is_err();
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    if failed {
                        break;
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(JanusError::Setup(format!("peer {i} never connected"))))
        })
        .collect()
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// `ROOMGATE_JANUS_EVENT_LOOPS=N`: a static pool of N loops instead of Janus's default.
fn event_loops() -> Option<usize> {
    std::env::var("ROOMGATE_JANUS_EVENT_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
}

fn debug_level() -> u8 {
    std::env::var("ROOMGATE_JANUS_DEBUG_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Run the Janus baseline: set up the namespace and Janus, connect every peer, warm up for
/// a second, then send for `secs` and measure. Everything is torn down on return or panic.
pub fn run(rooms: usize, subs: usize, secs: u64, kbps: u64) -> Result<JanusOutcome, JanusError> {
    // Drop order is the reverse: peers, then Janus, then its config, then the namespace.
    let ns = VethNs::create().map_err(|e| JanusError::Setup(e.to_string()))?;
    let loops = event_loops();
    let cfg = config::ConfigDir::write(debug_level(), loops)?;
    let api = Api::new(ns_ip()?, config::HTTP_PORT);
    let janus = process::Janus::start(&ns.wrapper(None), &cfg, &api)?;
    let with_log = |e: JanusError| match e {
        JanusError::Setup(m) => JanusError::Setup(m),
        other => JanusError::Setup(format!("{other}\n--- janus log ---\n{}", janus.log_tail())),
    };

    let t0 = Instant::now();
    let admin = api.create_session().map_err(with_log)?;
    for r in 0..rooms {
        signal::create_room(&admin, ROOM_BASE + r as u64).map_err(with_log)?;
    }
    let publishers: Vec<Publisher> =
        connect_many(&api, rooms, |s, r| signal::publish(s, ROOM_BASE + r as u64))
            .map_err(with_log)?;
    let subscribers = connect_many(&api, rooms * subs, |s, i| {
        let r = i / subs.max(1);
        signal::subscribe(s, ROOM_BASE + r as u64, publishers[r].feed)
    })
    .map_err(with_log)?;
    let setup = t0.elapsed();

    let mut streams = schedule::streams(&publishers);
    schedule::send_for(&publishers, &mut streams, kbps, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    for s in &subscribers {
        s.take_latencies();
    }

    let received0: u64 = subscribers.iter().map(|s| s.rtp_received()).sum();
    let cpu0 = janus.cpu_ns();
    let client0 = process_cpu_ns("self");
    let softirqd = ksoftirqd_pids();
    let softirq0 = ksoftirqd_ns(&softirqd);
    let jiffies0 = cpu_jiffies();
    let started = Instant::now();
    let (sent, send_drops) =
        schedule::send_for(&publishers, &mut streams, kbps, Duration::from_secs(secs));
    let wall = started.elapsed();
    let threads = janus.threads();
    // Let in-flight copies land; Janus's CPU is read at the same moment.
    std::thread::sleep(Duration::from_millis(300));
    let cpu_ns = janus.cpu_ns().saturating_sub(cpu0);
    let client_cpu_ns = process_cpu_ns("self").saturating_sub(client0);
    let softirq_ns = ksoftirqd_ns(&softirqd).saturating_sub(softirq0);
    let busy = busy_between(&jiffies0, &cpu_jiffies());
    let copies_received = subscribers.iter().map(|s| s.rtp_received()).sum::<u64>() - received0;

    let mut lat: Vec<u64> = subscribers
        .iter()
        .flat_map(|s| s.take_latencies())
        .collect();
    lat.sort_unstable();
    let srtp_failures = subscribers
        .iter()
        .map(|s| {
            s.counters()
                .srtp_failures
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let checks_answered = subscribers
        .iter()
        .chain(publishers.iter().map(|p| &p.peer))
        .map(|s| {
            s.counters()
                .stun_answered
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let srtp_profile = subscribers
        .first()
        .or(publishers.first().map(|p| &p.peer))
        .map(|p| format!("{:?}", p.profile))
        .unwrap_or_default();
    Ok(JanusOutcome {
        name: match loops {
            Some(n) => format!("janus 1.1.2 (event_loops = {n})"),
            None => "janus 1.1.2".into(),
        },
        rooms,
        subs,
        wall,
        sent,
        send_drops,
        copies_expected: sent * subs as u64,
        copies_received,
        cpu_ns,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        setup,
        threads,
        srtp_profile,
        srtp_failures,
        checks_answered,
        client_cpu_ns,
        softirq_ns,
        busy,
    })
}
