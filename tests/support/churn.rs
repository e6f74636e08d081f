//! Churn: WHIP publishers and WHEP viewers that join, exchange media and leave, over and
//! over, from several threads at once. Every cycle is one room: a publisher, two viewers
//! of it, 25 Opus packets (20 ms apart, as a real sender paces them), then a way of
//! leaving. Every third cycle also sends malformed traffic from the connected peers,
//! after the first media packet.
//!
//! Everything the clients did is tallied ([`Tally`]) so the test can reconcile it
//! against the gateway's counters: nothing here retries or hides a failure; a connect
//! that fails is recorded and fails the test.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::webrtc::{connect, rtcp, Kind, Peer, PeerConfig, Stream};

/// Viewers per publisher.
pub const VIEWERS: usize = 2;
/// Media packets a publisher sends per cycle.
pub const PACKETS: u64 = 25;
/// Malformed datagrams of each kind per malformed cycle.
pub const MALFORMED: u64 = 3;
/// How long a vanished peer keeps its socket open: past consent expiry (30 s after its
/// last check, which came at most 3 s before it vanished), so what the gateway still
/// sends it is received, not refused.
pub const VANISH_HOLD: Duration = Duration::from_secs(40);

/// How the peers of a cycle leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Everyone DELETEs their WHIP/WHEP resource.
    Delete,
    /// Everyone sends a DTLS close_notify and goes.
    CloseNotify,
    /// Everyone stops sending anything (consent expires after 30 s).
    Vanish,
    /// The publisher DELETEs; its viewers vanish.
    PublisherDeletes,
}

pub const ALL_LEAVES: [Leave; 4] = [
    Leave::Delete,
    Leave::CloseNotify,
    Leave::Vanish,
    Leave::PublisherDeletes,
];

/// What the clients did.
#[derive(Default)]
pub struct Tally {
    pub cycles: AtomicU64,
    /// Sessions whose ICE, DTLS and SRTP setup completed.
    pub connected: AtomicU64,
    /// Sessions ended by DELETE (answered 200/204), by close_notify, by vanishing.
    pub deleted: AtomicU64,
    pub closed: AtomicU64,
    pub vanished: AtomicU64,
    /// Well-formed SRTP packets publishers sent, and RTP packets viewers decrypted.
    pub rtp_sent: AtomicU64,
    pub rtp_received: AtomicU64,
    /// Malformed traffic sent: SRTP with a broken tag, datagrams of no RFC 7983 type,
    /// SRTCP whose (correctly protected) RTCP does not parse.
    pub bad_tag_sent: AtomicU64,
    pub unknown_type_sent: AtomicU64,
    pub bad_rtcp_sent: AtomicU64,
    /// What went wrong (connect failures, unexpected DELETE answers); empty in a good run.
    pub failures: Mutex<Vec<String>>,
    /// Vanished peers, kept open until [`VANISH_HOLD`] has passed.
    held: Mutex<Vec<(Instant, Peer)>>,
}

impl Tally {
    fn fail(&self, what: String) {
        if let Ok(mut f) = self.failures.lock() {
            f.push(what);
        }
    }

    fn hold(&self, peer: Peer) {
        peer.stop_consent();
        self.vanished.fetch_add(1, Relaxed);
        if let Ok(mut h) = self.held.lock() {
            h.push((Instant::now(), peer));
        }
    }

    /// Close the vanished peers held for at least [`VANISH_HOLD`] (all with `all`),
    /// counting what they received.
    pub fn release_held(&self, all: bool) {
        let released: Vec<Peer> = {
            let Ok(mut h) = self.held.lock() else {
                return;
            };
            let (old, keep) = std::mem::take(&mut *h)
                .into_iter()
                .partition(|(at, _)| all || at.elapsed() >= VANISH_HOLD);
            *h = keep;
            old.into_iter().map(|(_, p)| p).collect()
        };
        for p in released {
            self.rtp_received.fetch_add(p.rtp_received(), Relaxed);
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// Run `workers` threads of cycles until `until`; rooms are named `{prefix}-{worker}-{n}`.
/// Cycle `n` (counted over all workers) leaves by `leaves[n % leaves.len()]`.
pub fn run(base: &str, prefix: &str, workers: usize, until: Instant, leaves: &[Leave], t: &Tally) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..workers {
            let next = &next;
            s.spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    let k = next.fetch_add(1, Relaxed);
                    let leave = leaves[(k % leaves.len() as u64) as usize];
                    cycle(
                        base,
                        &format!("{prefix}-{w}-{n}"),
                        leave,
                        k.is_multiple_of(3),
                        t,
                    );
                    t.release_held(false);
                    n += 1;
                }
            });
        }
    });
}

fn join(base: &str, path: &str, cfg: PeerConfig, t: &Tally) -> Option<Peer> {
    match connect(base, path, cfg) {
        Ok(p) => {
            t.connected.fetch_add(1, Relaxed);
            Some(p)
        }
        Err(e) => {
            t.fail(format!("{path}: {e}"));
            None
        }
    }
}

/// One room's life: join, media, maybe malformed traffic, leave.
pub fn cycle(base: &str, room: &str, leave: Leave, malformed: bool, t: &Tally) {
    t.cycles.fetch_add(1, Relaxed);
    let Some(publisher) = join(base, &format!("/whip/{room}"), PeerConfig::publisher(), t) else {
        return;
    };
    let viewers: Vec<Peer> = (0..VIEWERS)
        .filter_map(|_| join(base, &format!("/whep/{room}"), PeerConfig::subscriber(), t))
        .collect();
    let mut audio = Stream::for_peer(&publisher, Kind::Audio);
    for i in 0..PACKETS {
        publisher.send_rtp(&audio.next(160, 1));
        t.rtp_sent.fetch_add(1, Relaxed);
        // Malformed traffic goes out early, never just before leaving: UDP and the HTTP
        // DELETE are not ordered, and a session deleted first would see none of it. The
        // publisher's later media queues behind its own malformed datagrams, so a viewer
        // that receives that media proves they were handled.
        if malformed && i == 0 {
            send_malformed(&publisher, &mut audio, &viewers, t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for v in &viewers {
        // Wait for what was forwarded; a shortfall shows up in the reconciliation.
        let _ = v.recv_rtp_n(PACKETS as usize, Duration::from_secs(2));
    }
    match leave {
        Leave::Delete => {
            delete(&publisher, t);
            for v in &viewers {
                delete(v, t);
            }
        }
        Leave::CloseNotify => {
            for p in std::iter::once(&publisher).chain(&viewers) {
                p.close_dtls();
                t.closed.fetch_add(1, Relaxed);
            }
        }
        Leave::Vanish => {
            t.hold(publisher);
            for v in viewers {
                t.hold(v);
            }
            return;
        }
        Leave::PublisherDeletes => {
            delete(&publisher, t);
            for v in viewers {
                t.hold(v);
            }
            return;
        }
    }
    for v in &viewers {
        t.rtp_received.fetch_add(v.rtp_received(), Relaxed);
    }
}

fn delete(p: &Peer, t: &Tally) {
    match p.delete() {
        200 | 204 => {
            t.deleted.fetch_add(1, Relaxed);
        }
        other => t.fail(format!("DELETE {}: {other}", p.location)),
    }
}

/// From the connected peers' own addresses: SRTP whose tag is broken, datagrams whose
/// first byte is in no RFC 7983 range, and SRTCP whose plaintext is not RTCP.
fn send_malformed(publisher: &Peer, audio: &mut Stream, viewers: &[Peer], t: &Tally) {
    for _ in 0..MALFORMED {
        let mut d = publisher.protect_rtp(&audio.next(160, 1).to_bytes());
        if let Some(last) = d.last_mut() {
            *last ^= 0x01;
        }
        publisher.send_raw(&d);
        t.bad_tag_sent.fetch_add(1, Relaxed);
        publisher.send_raw(&[0xff; 48]);
        t.unknown_type_sent.fetch_add(1, Relaxed);
    }
    if let Some(v) = viewers.first() {
        for _ in 0..MALFORMED {
            // A receiver report whose length field claims 11 words after 2 were sent.
            let mut plain = rtcp::empty_rr(v.rtcp_ssrc());
            plain[2..4].copy_from_slice(&10u16.to_be_bytes());
            v.send_rtcp(&plain);
            t.bad_rtcp_sent.fetch_add(1, Relaxed);
        }
    }
}
