//! AIMD rate control: the delay-based estimate. Increase while the queue is stable
//! (multiplicatively far from the last known capacity, additively near it), cut to a
//! fraction of what was actually delivered on overuse, hold while the queue drains.

use std::time::{Duration, Instant};

use super::overuse::Usage;

/// Where the rate controller is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateControl {
    #[default]
    Increase,
    Hold,
    Decrease,
}

/// On overuse the estimate becomes this fraction of the delivered rate, a bit under
/// what the path carried so that the queue built so far drains.
const BETA: f64 = 0.85;
/// Multiplicative increase per second when the capacity is unknown.
const INCREASE_PER_SECOND: f64 = 1.08;
const MIN_INCREASE_BPS: f64 = 1000.0;
/// Additive increase is about one packet per response time, never slower than this.
const MIN_ADDITIVE_BPS_PER_SECOND: f64 = 4000.0;
const ASSUMED_FPS: f64 = 30.0;
const MTU_BITS: f64 = 1200.0 * 8.0;
/// Without probing, the estimate may not run further ahead of what was delivered than
/// this, so an application-limited sender does not inflate it.
const ACKED_CAP_FACTOR: f64 = 1.5;
const ACKED_CAP_SLACK_BPS: f64 = 10_000.0;

/// Running estimate of the rate at which overuse happens, with its spread: tells
/// "near capacity, go carefully" from "far below, go fast".
#[derive(Debug, Default)]
struct LinkCapacity {
    estimate: Option<f64>,
    /// Normalised variance of the samples (bps), bounded.
    variance: f64,
}

impl LinkCapacity {
    const ALPHA: f64 = 0.05;

    fn std_dev(&self, est: f64) -> f64 {
        (self.variance * est).sqrt()
    }

    fn upper(&self) -> Option<f64> {
        self.estimate.map(|e| e + 3.0 * self.std_dev(e))
    }

    fn lower(&self) -> Option<f64> {
        self.estimate.map(|e| (e - 3.0 * self.std_dev(e)).max(0.0))
    }

    fn on_overuse(&mut self, sample: f64) {
        let est = match self.estimate {
            None => sample,
            Some(e) => (1.0 - Self::ALPHA) * e + Self::ALPHA * sample,
        };
        let norm = est.max(1.0);
        let err = est - sample;
        self.variance =
            ((1.0 - Self::ALPHA) * self.variance + Self::ALPHA * err * err / norm).clamp(0.4, 2.5);
        self.estimate = Some(est);
    }

    fn reset(&mut self) {
        self.estimate = None;
    }
}

#[derive(Debug)]
pub(crate) struct Aimd {
    rate: f64,
    min: f64,
    max: f64,
    state: RateControl,
    last_change: Option<Instant>,
    last_decrease: Option<Instant>,
    capacity: LinkCapacity,
}

impl Aimd {
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        Self {
            rate: initial.clamp(min, max),
            min,
            max,
            state: RateControl::Increase,
            last_change: None,
            last_decrease: None,
            capacity: LinkCapacity::default(),
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn state(&self) -> RateControl {
        self.state
    }

    /// One step per feedback: `usage` from the detector, `acked` the delivered rate,
    /// `measured` the best recent measure of what the path carries (the acked rate, or
    /// a fresh probe result that the acked rate has not caught up with yet).
    pub fn update(
        &mut self,
        usage: Usage,
        acked: Option<f64>,
        measured: Option<f64>,
        rtt: Duration,
        now: Instant,
    ) {
        self.state = match (usage, self.state) {
            (Usage::Normal, RateControl::Hold) => RateControl::Increase,
            (Usage::Normal, s) => s,
            (Usage::Overusing, _) => RateControl::Decrease,
            (Usage::Underusing, _) => RateControl::Hold,
        };
        let since = self
            .last_change
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        match self.state {
            RateControl::Hold => {}
            RateControl::Increase => {
                if let (Some(a), Some(up)) = (acked, self.capacity.upper()) {
                    if a > up {
                        // Delivered more than we thought the path could: the old
                        // capacity no longer holds.
                        self.capacity.reset();
                    }
                }
                // What the path delivered while its queue stayed stable, it carries: an
                // SFU forwards what its publishers send whatever the estimate says (a
                // pinned layer, a publisher ramping up), so delivery can run ahead of an
                // estimate that would otherwise take seconds of increase to catch up.
                if let Some(a) = acked {
                    self.rate = self.rate.max(a.min(self.max));
                }
                let limit = acked.map_or(f64::INFINITY, |a| {
                    ACKED_CAP_FACTOR * a + ACKED_CAP_SLACK_BPS
                });
                if self.rate < limit {
                    let inc = if self.capacity.estimate.is_some() {
                        self.additive_increase(rtt, since)
                    } else {
                        (self.rate * (INCREASE_PER_SECOND.powf(since.as_secs_f64()) - 1.0)).max(
                            if since.is_zero() {
                                0.0
                            } else {
                                MIN_INCREASE_BPS
                            },
                        )
                    };
                    self.rate = (self.rate + inc).min(limit);
                }
                self.last_change = Some(now);
            }
            RateControl::Decrease if !self.time_to_reduce(measured, rtt, now) => {
                // The last cut has not had a round trip to show its effect yet.
                self.state = RateControl::Hold;
            }
            RateControl::Decrease => {
                let base = measured.unwrap_or(self.rate);
                let mut target = BETA * base;
                if target > self.rate {
                    if let Some(c) = self.capacity.estimate {
                        target = BETA * c;
                    }
                }
                if target < self.rate {
                    self.rate = target;
                }
                if let (Some(a), Some(low)) = (acked, self.capacity.lower()) {
                    if a < low {
                        self.capacity.reset();
                    }
                }
                self.capacity.on_overuse(base);
                self.state = RateControl::Hold;
                self.last_change = Some(now);
                self.last_decrease = Some(now);
            }
        }
        self.rate = self.rate.clamp(self.min, self.max);
    }

    /// One cut per round trip (10..200 ms), unless delivery collapsed below half the
    /// estimate, in which case waiting only builds more queue.
    fn time_to_reduce(&self, measured: Option<f64>, rtt: Duration, now: Instant) -> bool {
        let interval = rtt.clamp(Duration::from_millis(10), Duration::from_millis(200));
        self.last_decrease
            .is_none_or(|t| now.saturating_duration_since(t) >= interval)
            || measured.is_some_and(|m| m < 0.5 * self.rate)
    }

    /// About one average packet per response time (RTT + 100 ms), at the rate's
    /// implied packet size for 30 frames per second.
    fn additive_increase(&self, rtt: Duration, since: Duration) -> f64 {
        let response = rtt.as_secs_f64() + 0.1;
        let bits_per_frame = self.rate / ASSUMED_FPS;
        let packets_per_frame = (bits_per_frame / MTU_BITS).ceil().max(1.0);
        let packet_bits = bits_per_frame / packets_per_frame;
        let per_second = (packet_bits / response).max(MIN_ADDITIVE_BPS_PER_SECOND);
        per_second * since.as_secs_f64()
    }

    /// A probe measured more than we estimate: jump there, and forget the capacity
    /// learned below it.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.rate = rate.clamp(self.min, self.max);
        if self.capacity.upper().is_some_and(|u| rate > u) {
            self.capacity.reset();
        }
        self.last_change = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increase_is_capped_by_acked_and_overuse_cuts_below_acked() {
        let t0 = Instant::now();
        let mut a = Aimd::new(300_000.0, 30_000.0, 10_000_000.0);
        let rtt = Duration::from_millis(50);
        for i in 1..=100 {
            let now = t0 + Duration::from_millis(100 * i);
            a.update(Usage::Normal, Some(100_000.0), Some(100_000.0), rtt, now);
        }
        // Started above the cap: never increased, never cut without overuse.
        assert_eq!(a.rate(), 300_000.0);
        let now = t0 + Duration::from_secs(11);
        a.update(Usage::Overusing, Some(100_000.0), Some(200_000.0), rtt, now);
        assert_eq!(a.rate(), 170_000.0, "cut to 85 % of the measured rate");
        assert_eq!(a.state(), RateControl::Hold);
        a.update(
            Usage::Overusing,
            Some(100_000.0),
            Some(180_000.0),
            rtt,
            now + rtt / 2,
        );
        assert_eq!(a.rate(), 170_000.0, "no second cut within a round trip");
        a.update(
            Usage::Overusing,
            Some(100_000.0),
            Some(180_000.0),
            rtt,
            now + rtt,
        );
        assert_eq!(a.rate(), 153_000.0);
    }

    #[test]
    fn a_path_that_delivers_more_than_the_estimate_without_overuse_lifts_it_at_once() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(50);
        let mut a = Aimd::new(300_000.0, 30_000.0, 10_000_000.0);
        // A viewer pinned to a 600 kbit/s layer: the path carries it with a stable queue.
        a.update(Usage::Normal, Some(600_000.0), Some(600_000.0), rtt, t0);
        assert!(a.rate() >= 600_000.0, "{}", a.rate());
        // Not while the queue drains, nor past the configured maximum.
        let mut held = Aimd::new(300_000.0, 30_000.0, 500_000.0);
        held.update(Usage::Underusing, Some(600_000.0), Some(600_000.0), rtt, t0);
        assert_eq!(held.rate(), 300_000.0);
        held.update(
            Usage::Normal,
            Some(600_000.0),
            Some(600_000.0),
            rtt,
            t0 + rtt,
        );
        assert_eq!(held.rate(), 500_000.0);
    }
}
