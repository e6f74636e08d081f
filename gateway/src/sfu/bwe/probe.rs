//! Probe clusters: the SFU sends padding at a target rate to learn whether the path
//! carries more than we use. Here we measure what the receiver got for those packets
//! and decide whether the estimate may jump there; plus a small policy that says when
//! to probe next.

use std::time::{Duration, Instant};

/// Above this loss among the probe's packets the measurement is not trusted.
const MAX_LOSS: f64 = 0.10;
/// Fewer received packets give no meaningful rate.
const MIN_PACKETS: u32 = 4;
/// When the receive rate is clearly below the send rate the path was saturated: the
/// receive rate is the capacity, and we settle a little under it.
const SATURATED_RATIO: f64 = 0.9;
const SATURATED_FRACTION: f64 = 0.95;
/// Feedback that never covers the probe (lost feedback, a seq that was never sent).
const ABANDON_AFTER: Duration = Duration::from_secs(2);

/// Why a probe did not raise the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeRejection {
    /// The delay detector saw overuse while the probe's packets were reported.
    Overuse,
    /// Loss among the probe's packets, as a fraction, at or above 10 %.
    Loss(f64),
    /// Too few packets arrived, or they arrived with no measurable spread.
    TooFewPackets,
    /// No feedback covered the probe within 2 s of its end, or a new probe replaced it.
    Abandoned,
}

/// The result of one probe, from [`super::Estimator::poll_probe_result`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeOutcome {
    /// The path delivered `delivered_bps`; the estimate is now `estimate_bps`: raised
    /// to the delivered rate (never above the target) if that is higher, lowered to it
    /// if the probe saturated the path below the estimate, otherwise unchanged.
    Success {
        target_bps: u64,
        delivered_bps: u64,
        estimate_bps: u64,
    },
    Rejected {
        target_bps: u64,
        reason: ProbeRejection,
    },
}

#[derive(Debug)]
pub(crate) struct Probe {
    pub first_seq: u64,
    pub last_seq: Option<u64>,
    pub target_bps: u64,
    ended_at: Option<Instant>,
    received: u32,
    lost: u32,
    bytes: u64,
    first_size: u64,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    last_size: u64,
    first_arrival: Option<Duration>,
    last_arrival: Option<Duration>,
    max_seq_seen: Option<u64>,
    pub overuse: bool,
}

impl Probe {
    pub fn new(first_seq: u64, target_bps: u64) -> Self {
        Self {
            first_seq,
            last_seq: None,
            target_bps,
            ended_at: None,
            received: 0,
            lost: 0,
            bytes: 0,
            first_size: 0,
            first_sent: None,
            last_sent: None,
            last_size: 0,
            first_arrival: None,
            last_arrival: None,
            max_seq_seen: None,
            overuse: false,
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first_seq && self.last_seq.is_none_or(|l| seq <= l)
    }

    pub fn add(&mut self, seq: u64, size: usize, sent: Instant, received: Option<Duration>) {
        self.max_seq_seen = Some(self.max_seq_seen.map_or(seq, |m| m.max(seq)));
        if !self.contains(seq) {
            return;
        }
        let size = size as u64;
        let Some(arrival) = received else {
            self.lost += 1;
            return;
        };
        self.received += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.first_sent.is_none_or(|f| sent < f) {
            self.first_sent = Some(sent);
        }
        if self.last_sent.is_none_or(|l| sent >= l) {
            self.last_sent = Some(sent);
            self.last_size = size;
        }
        if self.first_arrival.is_none_or(|f| arrival < f) {
            self.first_arrival = Some(arrival);
            self.first_size = size;
        }
        if self.last_arrival.is_none_or(|l| arrival > l) {
            self.last_arrival = Some(arrival);
        }
    }

    /// Stamps the end with the first feedback time after `end_probe`, for the timeout.
    pub fn note_time(&mut self, now: Instant) {
        if self.last_seq.is_some() && self.ended_at.is_none() {
            self.ended_at = Some(now);
        }
    }

    pub fn covered(&self) -> bool {
        matches!((self.last_seq, self.max_seq_seen), (Some(l), Some(m)) if m >= l)
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        self.ended_at
            .is_some_and(|t| now.saturating_duration_since(t) > ABANDON_AFTER)
    }

    /// The delivered rate and whether the probe saturated the path (then the rate is
    /// the path's capacity), or why there is none. Overuse is judged by the caller.
    pub fn measure(&self) -> Result<(f64, bool), ProbeRejection> {
        let total = self.received + self.lost;
        if total > 0 {
            let loss = f64::from(self.lost) / f64::from(total);
            if loss >= MAX_LOSS {
                return Err(ProbeRejection::Loss(loss));
            }
        }
        if self.received < MIN_PACKETS {
            return Err(ProbeRejection::TooFewPackets);
        }
        let (Some(fs), Some(ls), Some(fa), Some(la)) = (
            self.first_sent,
            self.last_sent,
            self.first_arrival,
            self.last_arrival,
        ) else {
            return Err(ProbeRejection::TooFewPackets);
        };
        let send_span = ls.saturating_duration_since(fs).as_secs_f64();
        let recv_span = la.saturating_sub(fa).as_secs_f64();
        if send_span <= 0.0 || recv_span <= 0.0 {
            return Err(ProbeRejection::TooFewPackets);
        }
        // N packets span N-1 gaps: leave out the last sent and the first received.
        let send_bps = (self.bytes - self.last_size) as f64 * 8.0 / send_span;
        let recv_bps = (self.bytes - self.first_size) as f64 * 8.0 / recv_span;
        Ok(if recv_bps < SATURATED_RATIO * send_bps {
            (SATURATED_FRACTION * recv_bps, true)
        } else {
            (send_bps.min(recv_bps), false)
        })
    }
}

/// When to probe next, for an SFU that has no policy of its own.
#[derive(Debug, Default)]
pub(crate) struct ProbePolicy {
    probed_once: bool,
    last_probe: Option<Instant>,
    /// Set after a probe that delivered most of its target: keep doubling.
    continue_from: Option<u64>,
}

/// First probe: this multiple of the initial estimate.
const INITIAL_FACTOR: u64 = 3;
/// Follow-up and periodic probes: this multiple of the current estimate.
const STEP_FACTOR: u64 = 2;
/// A probe that delivered this fraction of its target is worth following up at once.
const CONTINUE_RATIO: f64 = 0.7;
/// Otherwise probe again after this long, so a path that got better is found.
pub(crate) const PERIODIC: Duration = Duration::from_secs(5);

impl ProbePolicy {
    pub fn on_outcome(&mut self, outcome: &ProbeOutcome) {
        self.continue_from = match *outcome {
            ProbeOutcome::Success {
                target_bps,
                delivered_bps,
                estimate_bps,
            } if delivered_bps as f64 >= CONTINUE_RATIO * target_bps as f64 => Some(estimate_bps),
            _ => None,
        };
    }

    pub fn on_start(&mut self, now: Instant) {
        self.probed_once = true;
        self.last_probe = Some(now);
    }

    /// A target rate, or `None`. `quiet` means no overuse, no decrease and low loss.
    pub fn next(&mut self, estimate: u64, max: u64, quiet: bool, now: Instant) -> Option<u64> {
        if !quiet || estimate >= max {
            return None;
        }
        let target = if !self.probed_once {
            estimate.saturating_mul(INITIAL_FACTOR)
        } else if let Some(from) = self.continue_from.take() {
            from.max(estimate).saturating_mul(STEP_FACTOR)
        } else if self
            .last_probe
            .is_none_or(|t| now.saturating_duration_since(t) >= PERIODIC)
        {
            estimate.saturating_mul(STEP_FACTOR)
        } else {
            return None;
        };
        Some(target.min(max))
    }
}
