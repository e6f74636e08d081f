//! A join storm and what watches it: many WHEP viewers joining rooms on a schedule, a
//! probe pair per logic thread whose media latency is sampled throughout, and a poller
//! of `GET /healthz`. Used by tests/storm.rs (completeness) and `cargo xtask bench storm`
//! (the same code at 2,000 sessions, for the numbers).
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::webrtc::{connect, Delivery, DetachedPeer, Kind, Peer, PeerConfig, Stream};

/// One viewer's join, timed from the start of its WHEP POST.
pub struct Join {
    /// When the POST started, after the storm's start.
    pub started: Duration,
    /// POST to SRTP keys (signalling, ICE, DTLS).
    pub connected: Duration,
    /// POST to the first decrypted RTP packet.
    pub first_media: Duration,
}

/// What the storm produced: the joins that completed, the failures (with their
/// reasons), and the viewers, still connected (their queued RTP drained by
/// [`Storm::drain`], as a player consumes it).
#[derive(Default)]
pub struct Storm {
    pub joins: Mutex<Vec<Join>>,
    pub failures: Mutex<Vec<String>>,
    pub viewers: Mutex<Vec<Peer>>,
}

impl Storm {
    pub fn drain(&self) {
        if let Ok(v) = self.viewers.lock() {
            for p in v.iter() {
                p.drain();
            }
        }
    }

    fn fail(&self, what: String) {
        if let Ok(mut f) = self.failures.lock() {
            f.push(what);
        }
    }
}

/// Viewer `i` joins room `rooms[i % rooms.len()]` at `window * i / sessions` after
/// `start`, from one of `joiners` threads. A join that starts late (every joiner busy)
/// is still counted: `Join::started` says when it really began.
pub fn run(
    base: &str,
    rooms: &[String],
    sessions: usize,
    window: Duration,
    joiners: usize,
    storm: &Storm,
) {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..joiners {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= sessions {
                    return;
                }
                let due = start + window.mul_f64(i as f64 / sessions as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                join(base, &rooms[i % rooms.len()], start, storm);
            });
        }
    });
}

fn join(base: &str, room: &str, start: Instant, storm: &Storm) {
    let mut cfg = PeerConfig::subscriber();
    // Generous: completeness is asserted, speed is measured.
    cfg.ice_timeout = Duration::from_secs(20);
    cfg.handshake_timeout = Duration::from_secs(30);
    let t0 = Instant::now();
    let peer = match connect(base, &format!("/whep/{room}"), cfg) {
        Ok(p) => p,
        Err(e) => return storm.fail(format!("{room}: {e}")),
    };
    let connected = t0.elapsed();
    let Some(first) = peer.recv_rtp(Duration::from_secs(20)) else {
        return storm.fail(format!("{room}: no media within 20 s of connecting"));
    };
    peer.drain();
    if let Ok(mut j) = storm.joins.lock() {
        j.push(Join {
            started: t0.duration_since(start),
            connected,
            first_media: first.at.duration_since(t0),
        });
    }
    if let Ok(mut v) = storm.viewers.lock() {
        v.push(peer);
    }
}

/// Publishers that each send one stamped Opus packet every `every` until stopped.
pub struct Publishers {
    pub peers: Vec<Peer>,
    pub sent: AtomicU64,
}

impl Publishers {
    pub fn send_until(&self, every: Duration, stop: &AtomicBool) {
        let mut streams: Vec<Stream> = self
            .peers
            .iter()
            .map(|p| Stream::for_peer(p, Kind::Audio))
            .collect();
        let mut next = Instant::now();
        while !stop.load(Relaxed) {
            for (p, s) in self.peers.iter().zip(&mut streams) {
                p.send_rtp(&s.next(160, 1));
                self.sent.fetch_add(1, Relaxed);
            }
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
}

/// A publisher and a viewer in a room of one logic thread. The viewer's socket is read
/// by a thread of its own ([`Probe::read_until`]), not by the client runtime the storm's
/// handshakes keep busy, so its latencies (stamp to receive) show the gateway's delay.
pub struct Probe {
    pub thread: u64,
    pub publisher: Publishers,
    pub viewer: DetachedPeer,
}

impl Probe {
    pub fn new(base: &str, room: &str, thread: u64, publisher: Peer) -> Probe {
        let mut cfg = PeerConfig::subscriber();
        cfg.delivery = Delivery::Stats;
        let viewer = connect(base, &format!("/whep/{room}"), cfg)
            .unwrap_or_else(|e| panic!("probe viewer in {room}: {e}"))
            .detach();
        Probe {
            thread,
            publisher: Publishers {
                peers: vec![publisher],
                sent: AtomicU64::new(0),
            },
            viewer,
        }
    }

    /// Read and account the viewer's datagrams until `stop`.
    pub fn read_until(&self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        let mut pfd = libc::pollfd {
            fd: self.viewer.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        while !stop.load(Relaxed) {
            // SAFETY: one valid pollfd for the peer's open socket.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            loop {
                // SAFETY: `buf` is writable for its length; the socket stays open while
                // `self.viewer` lives.
                let n = unsafe {
                    libc::recv(
                        self.viewer.fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let Ok(n) = usize::try_from(n) else { break };
                self.viewer.sampler.handle(&buf[..n]);
            }
        }
    }

    pub fn received(&self) -> u64 {
        self.viewer.sampler.counters().rtp.load(Relaxed)
    }
}

/// `GET /healthz` every `every` until stopped: each one's latency, and any failure.
pub fn poll_health(url: &str, every: Duration, stop: &AtomicBool) -> (Vec<Duration>, Vec<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let (mut times, mut failures) = (Vec::new(), Vec::new());
    while !stop.load(Relaxed) {
        let t0 = Instant::now();
        match agent.get(url).call() {
            Ok(r) if r.status() == 200 => times.push(t0.elapsed()),
            Ok(r) => failures.push(format!("status {}", r.status())),
            Err(e) => failures.push(e.to_string()),
        }
        std::thread::sleep(every.saturating_sub(t0.elapsed()));
    }
    (times, failures)
}

/// The `q` quantile (0..=1) of `v` by nearest rank; zero for no samples.
pub fn quantile<T: Copy + Ord + Default>(v: &mut [T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
