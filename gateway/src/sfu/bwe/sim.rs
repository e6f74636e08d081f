//! A synthetic bottleneck link and a sender that follows an [`Estimator`], on a virtual
//! clock: the estimator's tests and the convergence benchmark share it.
//!
//! The link is one FIFO of `capacity_bps` with a drop-tail buffer holding
//! `buffer` worth of bytes at the current capacity, then `propagation` delay, then
//! independent random loss. The receiver reports every 50 ms (transport-cc style: all
//! packets up to the newest arrival, the missing ones as lost); the report reaches the
//! sender one propagation delay later over an uncongested return path. The sender
//! paces 1200-byte packets at the estimate (or an application limit), and runs the
//! estimator's probe policy when probing is on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{BweConfig, Estimator, ProbeOutcome};
use crate::sfu::transport_feedback::PacketResult;

pub const PACKET_SIZE: usize = 1200;
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(1);
/// A probe lasts at least this long and this many packets, like a short padding burst.
const PROBE_DURATION: Duration = Duration::from_millis(20);
const PROBE_MIN_PACKETS: u64 = 5;
/// The receiver's clock starts at an arbitrary epoch, as in real feedback.
const RECEIVER_EPOCH: Duration = Duration::from_secs(12_345);

#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    pub capacity_bps: u64,
    pub propagation: Duration,
    /// Drop-tail buffer, expressed as queueing time at the current capacity.
    pub buffer: Duration,
    /// Independent random loss after the queue, 0.0..1.0.
    pub random_loss: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    sent_at: Duration,
    arrival: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct ActiveProbe {
    target_bps: u64,
    first_seq: u64,
    until: Duration,
}

/// Sender + link + receiver around one estimator. Times are virtual, since `start`.
pub struct Sim {
    pub est: Estimator,
    pub link: LinkConfig,
    /// The application never sends more than this (besides probes).
    pub app_limit_bps: Option<u64>,
    pub probing: bool,
    /// (time, estimate) every 10 ms.
    pub trace: Vec<(Duration, u64)>,
    pub outcomes: Vec<(Duration, ProbeOutcome)>,
    /// Packets sent, and lost (drop-tail or random).
    pub sent: u64,
    pub lost: u64,
    start: Instant,
    now: Duration,
    link_free_at: Duration,
    next_send: Duration,
    next_seq: u64,
    in_flight: VecDeque<Sent>,
    next_report: Duration,
    feedback: VecDeque<(Duration, Vec<PacketResult>)>,
    probe: Option<ActiveProbe>,
    rng: u64,
}

impl Sim {
    pub fn new(config: BweConfig, link: LinkConfig, seed: u64) -> Self {
        Self {
            est: Estimator::new(config),
            link,
            app_limit_bps: None,
            probing: true,
            trace: Vec::new(),
            outcomes: Vec::new(),
            sent: 0,
            lost: 0,
            start: Instant::now(),
            now: Duration::ZERO,
            link_free_at: Duration::ZERO,
            next_send: Duration::ZERO,
            next_seq: 0,
            in_flight: VecDeque::new(),
            next_report: FEEDBACK_INTERVAL,
            feedback: VecDeque::new(),
            probe: None,
            rng: seed | 1,
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Changes the bottleneck; packets already queued keep their schedule.
    pub fn set_capacity(&mut self, bps: u64) {
        self.link.capacity_bps = bps.max(1);
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += TICK;
            self.tick();
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64: deterministic per seed, good enough for loss decisions.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn tick(&mut self) {
        let at = self.start + self.now;
        while self.feedback.front().is_some_and(|(t, _)| *t <= self.now) {
            if let Some((_, results)) = self.feedback.pop_front() {
                self.est.handle_feedback(&results, at);
            }
            while let Some(o) = self.est.poll_probe_result() {
                self.outcomes.push((self.now, o));
            }
        }
        if self.now >= self.next_report {
            self.report();
            self.next_report += FEEDBACK_INTERVAL;
        }
        if self.probing && self.probe.is_none() {
            if let Some(target_bps) = self.est.poll_probe_request(at) {
                self.est.start_probe(self.next_seq, target_bps);
                self.probe = Some(ActiveProbe {
                    target_bps,
                    first_seq: self.next_seq,
                    until: self.now + PROBE_DURATION,
                });
            }
        }
        let rate = match self.probe {
            Some(p) => p.target_bps,
            None => self
                .est
                .estimate_bps()
                .min(self.app_limit_bps.unwrap_or(u64::MAX)),
        }
        .max(1);
        if self.next_send + Duration::from_millis(10) < self.now {
            self.next_send = self.now; // no catch-up burst after a rate change
        }
        while self.next_send <= self.now {
            let t = self.next_send;
            self.send(t);
            self.next_send += Duration::from_secs_f64((PACKET_SIZE * 8) as f64 / rate as f64);
        }
        if let Some(p) = self.probe {
            if self.now >= p.until && self.next_seq >= p.first_seq + PROBE_MIN_PACKETS {
                self.est.end_probe(self.next_seq - 1);
                self.probe = None;
            }
        }
        if self.now.as_millis().is_multiple_of(10) {
            self.trace.push((self.now, self.est.estimate_bps()));
        }
    }

    fn send(&mut self, t: Duration) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let cap = self.link.capacity_bps as f64;
        let backlog_s = self.link_free_at.saturating_sub(t).as_secs_f64();
        let serialize_s = (PACKET_SIZE * 8) as f64 / cap;
        let arrival = if backlog_s + serialize_s > self.link.buffer.as_secs_f64() {
            None // drop-tail
        } else {
            self.link_free_at = self.link_free_at.max(t) + Duration::from_secs_f64(serialize_s);
            let lost = self.random() < self.link.random_loss;
            (!lost).then_some(self.link_free_at + self.link.propagation)
        };
        self.sent += 1;
        self.lost += u64::from(arrival.is_none());
        self.in_flight.push_back(Sent {
            seq,
            sent_at: t,
            arrival,
        });
    }

    /// The receiver's report at `now`: everything up to the newest arrival so far.
    fn report(&mut self) {
        let now = self.now;
        let Some(last) = self
            .in_flight
            .iter()
            .rposition(|p| p.arrival.is_some_and(|a| a <= now))
        else {
            return;
        };
        let results: Vec<PacketResult> = self
            .in_flight
            .drain(..=last)
            .map(|p| PacketResult {
                seq: p.seq,
                size: PACKET_SIZE,
                sent: self.start + p.sent_at,
                received: p.arrival.map(|a| a + RECEIVER_EPOCH),
            })
            .collect();
        self.feedback
            .push_back((now + self.link.propagation, results));
    }
}

/// Time from `step_at` until the estimate first gets within 10 % of `capacity_bps`
/// (or past it in the direction of travel: at least 90 % after a step up, at most
/// 110 % after a step down). `None` if it never does within the trace.
pub fn converge_time(
    trace: &[(Duration, u64)],
    step_at: Duration,
    capacity_bps: u64,
) -> Option<Duration> {
    let cap = capacity_bps as f64;
    let start = trace.iter().find(|(t, _)| *t >= step_at)?.1 as f64;
    let up = start < cap;
    trace
        .iter()
        .filter(|(t, _)| *t >= step_at)
        .find_map(|&(t, e)| {
            let e = e as f64;
            let reached = if up { e >= 0.9 * cap } else { e <= 1.1 * cap };
            reached.then(|| t - step_at)
        })
}

/// The benchmark's scenario: converge on `before_bps` for `warmup`, step the capacity
/// to `after_bps`, and return [`converge_time`] within `observe` (default link: 25 ms
/// propagation, 200 ms drop-tail buffer, no random loss; probing on).
pub fn step_convergence(
    before_bps: u64,
    after_bps: u64,
    warmup: Duration,
    observe: Duration,
    seed: u64,
) -> Option<Duration> {
    step_convergence_with_loss(before_bps, after_bps, warmup, observe, 0.0, seed)
}

/// [`step_convergence`] on a link that also loses `random_loss` of its packets at
/// random (the seed drives the losses).
pub fn step_convergence_with_loss(
    before_bps: u64,
    after_bps: u64,
    warmup: Duration,
    observe: Duration,
    random_loss: f64,
    seed: u64,
) -> Option<Duration> {
    let config = BweConfig {
        initial_bps: 300_000,
        min_bps: 50_000,
        max_bps: before_bps.max(after_bps).saturating_mul(5),
    };
    let link = LinkConfig {
        capacity_bps: before_bps,
        propagation: Duration::from_millis(25),
        buffer: Duration::from_millis(200),
        random_loss,
    };
    let mut sim = Sim::new(config, link, seed);
    sim.run_for(warmup);
    let step = sim.now();
    sim.set_capacity(after_bps);
    sim.run_for(observe);
    converge_time(&sim.trace, step, after_bps)
}
