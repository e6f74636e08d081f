//! Send-side bandwidth estimation for one subscriber, GCC-like, sans-IO.
//!
//! Input is what the subscriber's transport-cc feedback says about packets we sent
//! ([`PacketResult`]); output is an estimate in bit/s that drives layer selection.
//! No clock and no I/O inside: every call takes `now`, so tests run on a virtual clock
//! and the room's thread owns one [`Estimator`] per subscriber.
//!
//! Two controllers run side by side and the lower one wins:
//! - delay-based: packets are grouped into send bursts (`inter_arrival`), the
//!   growth of queueing delay is fitted over a window (`trendline`) and compared with
//!   an adaptive threshold (`overuse`); an AIMD controller (`aimd`) increases while
//!   the queue is stable, cuts to 85 % of the delivered rate (`acked`) on overuse, and
//!   never increases beyond 1.5x the delivered rate + 10 kbit/s, so an
//!   application-limited sender does not inflate its estimate;
//! - loss-based (`loss`): grow below 2 % loss, hold up to 10 %, cut above;
//! - and one addition to GCC (`queue_delay`): loss above 2 % while the one-way delay
//!   sits 40 ms above its recent floor is a full drop-tail buffer, not random loss, and
//!   counts as overuse. The trendline only sees a queue while it grows, so a slow
//!   creep into a full buffer would otherwise settle in the 2-10 % hold band.
//!
//! Growing past what the sender actually sends takes a probe (`probe`): the SFU
//! sends padding at a target rate between [`Estimator::start_probe`] and
//! [`Estimator::end_probe`]; once feedback covers those packets the delivered rate
//! (bytes over the receive span) becomes the estimate, unless the probe caused overuse
//! or 10 % loss; a probe that saturated the path below the estimate lowers it. [`Estimator::poll_probe_request`] offers a simple policy for when.
//!
//! Nothing allocates: windows and rings are fixed-size arrays.
//!
//! Learned from libwebrtc's goog_cc and str0m's bwe (structure and constants of the
//! trendline filter, adaptive threshold, AIMD and loss rules); written from scratch.
//! No crate fit: str0m's estimator is internal to str0m, `goog_cc` (0.1) ports the
//! whole libwebrtc controller with its field-trial and pacing surface, and the
//! interceptor crates wrap theirs in their own RTCP pipelines.

mod acked;
mod aimd;
mod inter_arrival;
mod loss;
mod overuse;
mod probe;
mod queue_delay;
pub mod sim;
#[cfg(test)]
mod tests;
mod trendline;

use std::time::{Duration, Instant};

use crate::sfu::transport_feedback::PacketResult;

pub use aimd::RateControl;
pub use overuse::Usage;
pub use probe::{ProbeOutcome, ProbeRejection};

use acked::AckedBitrate;
use aimd::Aimd;
use inter_arrival::InterArrival;
use loss::LossBased;
use overuse::OveruseDetector;
use probe::{Probe, ProbePolicy};
use queue_delay::QueueDelay;
use trendline::Trendline;

/// Limits and starting point, in bit/s. `max_bps` below `min_bps` is raised to it;
/// `initial_bps` is clamped into the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BweConfig {
    pub initial_bps: u64,
    pub min_bps: u64,
    pub max_bps: u64,
}

/// A snapshot for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BweState {
    /// The AIMD controller's phase.
    pub control: RateControl,
    /// The delay detector's latest verdict.
    pub usage: Usage,
    pub delay_based_bps: u64,
    pub loss_based_bps: u64,
    /// Delivered rate over the last 500 ms of arrivals, once known.
    pub acked_bps: Option<u64>,
    /// Latest loss fraction (over at least 20 packets), once known.
    pub loss_fraction: Option<f64>,
    pub probe_in_progress: bool,
}

/// Until feedback gives a round-trip sample.
const DEFAULT_RTT: Duration = Duration::from_millis(200);
const MAX_RTT: Duration = Duration::from_secs(5);
/// How long a probe result counts as a measure of the path, about the acked-rate
/// window plus a feedback round trip.
const PROBE_RESULT_VALIDITY: Duration = Duration::from_secs(1);
/// Loss above this over a standing queue of more than `STANDING_QUEUE_MS` is treated
/// as overuse.
const CONGESTION_LOSS: f64 = 0.02;
const STANDING_QUEUE_MS: f64 = 40.0;
/// The policy does not probe while the loss-based controller is not growing.
const PROBE_MAX_LOSS: f64 = 0.02;

/// One subscriber's estimator. See the module docs.
#[derive(Debug)]
pub struct Estimator {
    min: f64,
    max: f64,
    /// Send times are turned into milliseconds since the first packet seen.
    origin: Option<Instant>,
    inter_arrival: InterArrival,
    trendline: Trendline,
    detector: OveruseDetector,
    aimd: Aimd,
    acked: AckedBitrate,
    queue: QueueDelay,
    loss: LossBased,
    rtt: Option<Duration>,
    probe: Option<Probe>,
    outcome: Option<ProbeOutcome>,
    policy: ProbePolicy,
    last_now: Option<Instant>,
    /// The latest successful probe's rate and when: right after a probe the acked
    /// rate still reflects the old sending rate.
    probed: Option<(Instant, f64)>,
}

impl Estimator {
    pub fn new(config: BweConfig) -> Self {
        let min = config.min_bps as f64;
        let max = (config.max_bps.max(config.min_bps)) as f64;
        let initial = (config.initial_bps as f64).clamp(min, max);
        Self {
            min,
            max,
            origin: None,
            inter_arrival: InterArrival::default(),
            trendline: Trendline::default(),
            detector: OveruseDetector::default(),
            aimd: Aimd::new(initial, min, max),
            acked: AckedBitrate::default(),
            queue: QueueDelay::default(),
            loss: LossBased::new(initial, min, max),
            rtt: None,
            probe: None,
            outcome: None,
            policy: ProbePolicy::default(),
            last_now: None,
            probed: None,
        }
    }

    /// One transport-cc feedback's packets, in sequence order; `now` is when it
    /// arrived. Any content is accepted: lost-only, reordered or absurd arrival times
    /// only make the delay-based part restart its measurement.
    pub fn handle_feedback(&mut self, results: &[PacketResult], now: Instant) {
        self.last_now = Some(now);
        let mut lost = 0u32;
        let mut received = 0u32;
        let mut overuse_seen = false;
        let mut newest_sent: Option<Instant> = None;
        for r in results {
            if let Some(p) = self.probe.as_mut() {
                p.add(r.seq, r.size, r.sent, r.received);
            }
            let Some(arrival) = r.received else {
                lost = lost.saturating_add(1);
                continue;
            };
            received = received.saturating_add(1);
            if newest_sent.is_none_or(|s| r.sent > s) {
                newest_sent = Some(r.sent);
            }
            self.acked.add(arrival, r.size);
            let origin = *self.origin.get_or_insert(r.sent);
            let send_ms = r.sent.saturating_duration_since(origin).as_secs_f64() * 1000.0;
            let arrival_ms = arrival.as_secs_f64() * 1000.0;
            let resets = self.inter_arrival.resets();
            let delta = self.inter_arrival.add(send_ms, arrival_ms);
            if self.inter_arrival.resets() != resets {
                self.queue.reset(); // the clocks jumped: the old floor means nothing
            }
            self.queue.add(arrival_ms - send_ms, send_ms);
            let Some(d) = delta else {
                continue;
            };
            let trend = self
                .trendline
                .update(d.send_delta_ms, d.arrival_delta_ms, d.arrival_ms);
            let usage = self.detector.detect(
                trend,
                self.trendline.num_deltas(),
                d.send_delta_ms,
                d.arrival_ms,
            );
            if usage == Usage::Overusing {
                overuse_seen = true;
                if let Some(p) = self.probe.as_mut() {
                    if p.contains(r.seq) {
                        p.overuse = true;
                    }
                }
            }
        }
        if let Some(sent) = newest_sent {
            // Feedback delay counts too: it is part of how late we learn of congestion.
            let sample = now.saturating_duration_since(sent).min(MAX_RTT);
            self.rtt = Some(match self.rtt {
                None => sample,
                Some(r) => (r * 7 + sample) / 8,
            });
        }
        let rtt = self.rtt.unwrap_or(DEFAULT_RTT);
        let fresh_loss = if lost > 0 || received > 0 {
            self.loss.update(lost, received, self.aimd.rate(), rtt, now)
        } else {
            None
        };
        // Loss over a standing queue: a full drop-tail buffer that the delay trend no
        // longer sees. Random loss (no queue) stays in the loss controller's hold band.
        let congestion_loss = fresh_loss.is_some_and(|f| f > CONGESTION_LOSS)
            && self.queue.queue_ms().is_some_and(|q| q > STANDING_QUEUE_MS);
        if received > 0 || congestion_loss {
            let usage = if overuse_seen || congestion_loss {
                Usage::Overusing
            } else {
                self.detector.usage()
            };
            let acked = self.acked.bps();
            let probed = self
                .probed
                .filter(|(t, _)| now.saturating_duration_since(*t) < PROBE_RESULT_VALIDITY)
                .map(|(_, r)| r);
            let measured = match (acked, probed) {
                (Some(a), Some(p)) => Some(a.max(p)),
                (a, p) => a.or(p),
            };
            self.aimd.update(usage, acked, measured, rtt, now);
            if let (Some(a), Usage::Normal) = (acked, usage) {
                self.loss.floor(a);
            }
        }
        self.loss.cap(self.aimd.rate());
        self.finish_probe(now);
    }

    fn finish_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.as_mut() else { return };
        p.note_time(now);
        let target_bps = p.target_bps;
        let outcome = if p.covered() {
            if p.overuse {
                ProbeOutcome::Rejected {
                    target_bps,
                    reason: ProbeRejection::Overuse,
                }
            } else {
                match p.measure() {
                    Err(reason) => ProbeOutcome::Rejected { target_bps, reason },
                    Ok((delivered, saturated)) => {
                        let rate = delivered.min(target_bps as f64);
                        self.probed = Some((now, rate));
                        // A saturated probe measured the capacity itself: an estimate
                        // above it (say, the initial guess on a slow link, with an
                        // app-limited sender that never filled it) is simply wrong.
                        let current = self.estimate();
                        if rate > current || (saturated && rate < current) {
                            self.aimd.set_rate(rate, now);
                            self.loss.set_rate(rate);
                        }
                        ProbeOutcome::Success {
                            target_bps,
                            delivered_bps: delivered as u64,
                            estimate_bps: self.estimate_bps(),
                        }
                    }
                }
            }
        } else if p.timed_out(now) {
            ProbeOutcome::Rejected {
                target_bps,
                reason: ProbeRejection::Abandoned,
            }
        } else {
            return;
        };
        self.probe = None;
        self.policy.on_outcome(&outcome);
        self.outcome = Some(outcome);
    }

    fn estimate(&self) -> f64 {
        self.aimd
            .rate()
            .min(self.loss.rate())
            .clamp(self.min, self.max)
    }

    /// The estimate: the lower of the delay-based and loss-based rates, within
    /// `[min_bps, max_bps]`.
    pub fn estimate_bps(&self) -> u64 {
        self.estimate() as u64
    }

    /// The SFU starts sending a probe at `target_bps`; `first_seq` is the first
    /// transport-wide sequence number that belongs to it. A probe still in progress
    /// is abandoned. Every packet sent until [`Self::end_probe`] counts (media and
    /// padding); send at least ~10 packets over 15 ms or more, since receive-side jitter
    /// on a shorter burst distorts the measured rate.
    pub fn start_probe(&mut self, first_seq: u64, target_bps: u64) {
        if let Some(old) = self.probe.take() {
            let outcome = ProbeOutcome::Rejected {
                target_bps: old.target_bps,
                reason: ProbeRejection::Abandoned,
            };
            self.policy.on_outcome(&outcome);
            self.outcome = Some(outcome);
        }
        self.probe = Some(Probe::new(first_seq, target_bps));
        if let Some(now) = self.last_now {
            self.policy.on_start(now);
        }
    }

    /// The probe's last packet was `last_seq`; the result comes once feedback covers it.
    pub fn end_probe(&mut self, last_seq: u64) {
        if let Some(p) = self.probe.as_mut() {
            if p.last_seq.is_none() {
                p.last_seq = Some(last_seq.max(p.first_seq));
            }
        }
    }

    pub fn probe_in_progress(&self) -> bool {
        self.probe.is_some()
    }

    /// The latest finished probe's outcome, once; an unread outcome is replaced by the
    /// next one.
    pub fn poll_probe_result(&mut self) -> Option<ProbeOutcome> {
        self.outcome.take()
    }

    /// A suggested probe target, for an SFU without a policy of its own: 3x the
    /// estimate at first, 2x again right after a probe that delivered most of its
    /// target, otherwise 2x every 5 s; never while a probe runs, while the queue is
    /// not stable, or above 2 % loss. Returning `Some` counts as a probe started now.
    pub fn poll_probe_request(&mut self, now: Instant) -> Option<u64> {
        let quiet = self.probe.is_none()
            && self.detector.usage() == Usage::Normal
            && self.aimd.state() != RateControl::Decrease
            && self.loss.fraction().is_none_or(|f| f <= PROBE_MAX_LOSS);
        let target = self
            .policy
            .next(self.estimate_bps(), self.max as u64, quiet, now)?;
        self.policy.on_start(now);
        Some(target)
    }

    pub fn state(&self) -> BweState {
        BweState {
            control: self.aimd.state(),
            usage: self.detector.usage(),
            delay_based_bps: self.aimd.rate() as u64,
            loss_based_bps: self.loss.rate() as u64,
            acked_bps: self.acked.bps().map(|b| b as u64),
            loss_fraction: self.loss.fraction(),
            probe_in_progress: self.probe.is_some(),
        }
    }
}
