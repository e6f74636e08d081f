//! Loss-based control (the classic GCC rule): below 2 % loss grow about 8 % a second,
//! between 2 % and 10 % hold, above 10 % cut by half the loss fraction, at most once
//! per 300 ms + RTT so that one loss burst is not punished several times.

use std::time::{Duration, Instant};

const LOW_LOSS: f64 = 0.02;
const HIGH_LOSS: f64 = 0.10;
/// A loss fraction from fewer packets is too noisy to act on; feedbacks accumulate.
const MIN_PACKETS: u32 = 20;
const INCREASE_PER_SECOND: f64 = 1.08;
const INCREASE_BPS_PER_SECOND: f64 = 1000.0;
const DECREASE_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub(crate) struct LossBased {
    rate: f64,
    min: f64,
    max: f64,
    lost: u32,
    expected: u32,
    fraction: Option<f64>,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
}

impl LossBased {
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        Self {
            rate: initial.clamp(min, max),
            min,
            max,
            lost: 0,
            expected: 0,
            fraction: None,
            last_update: None,
            last_decrease: None,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Latest loss fraction computed over at least `MIN_PACKETS` packets.
    pub fn fraction(&self) -> Option<f64> {
        self.fraction
    }

    pub fn set_rate(&mut self, rate: f64) {
        self.rate = rate.clamp(self.min, self.max);
    }

    /// `delivered` bit/s reached the receiver: with the loss low (or not yet measured),
    /// the path carries that much, so the rate is at least that. An SFU forwards what its
    /// publishers send, which can run ahead of an estimate still growing 8 % a second.
    pub fn floor(&mut self, delivered: f64) {
        if self.fraction.is_none_or(|f| f <= LOW_LOSS) {
            self.rate = self.rate.max(delivered).clamp(self.min, self.max);
        }
    }

    /// Caps the rate at the delay-based estimate, so that a loss cut acts on the rate
    /// actually in use.
    pub fn cap(&mut self, ceiling: f64) {
        self.rate = self.rate.min(ceiling).clamp(self.min, self.max);
    }

    /// One feedback's counts; `ceiling` as in [`Self::cap`]. Returns the loss fraction
    /// when this feedback completed a new one.
    pub fn update(
        &mut self,
        lost: u32,
        received: u32,
        ceiling: f64,
        rtt: Duration,
        now: Instant,
    ) -> Option<f64> {
        self.lost = self.lost.saturating_add(lost);
        self.expected = self.expected.saturating_add(lost.saturating_add(received));
        let mut fresh = false;
        if self.expected >= MIN_PACKETS {
            self.fraction = Some(f64::from(self.lost) / f64::from(self.expected));
            self.lost = 0;
            self.expected = 0;
            fresh = true;
        }
        let dt = self
            .last_update
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        self.last_update = Some(now);
        self.rate = self.rate.min(ceiling);
        match self.fraction {
            Some(f) if f > HIGH_LOSS => {
                let due = self
                    .last_decrease
                    .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_INTERVAL + rtt);
                if fresh && due {
                    self.rate *= 1.0 - 0.5 * f;
                    self.last_decrease = Some(now);
                }
            }
            Some(f) if f > LOW_LOSS => {}
            _ => {
                let secs = dt.as_secs_f64();
                self.rate =
                    self.rate * INCREASE_PER_SECOND.powf(secs) + INCREASE_BPS_PER_SECOND * secs;
                self.rate = self.rate.min(ceiling);
            }
        }
        self.rate = self.rate.clamp(self.min, self.max);
        self.fraction.filter(|_| fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_loss_cuts_once_per_interval_and_low_loss_grows_to_ceiling() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(100);
        let mut l = LossBased::new(1_000_000.0, 50_000.0, 5_000_000.0);
        l.update(10, 10, 2_000_000.0, rtt, t0);
        assert_eq!(l.rate(), 750_000.0);
        l.update(10, 10, 2_000_000.0, rtt, t0 + Duration::from_millis(100));
        assert_eq!(l.rate(), 750_000.0, "too soon for a second cut");
        for i in 1..=200 {
            l.update(
                0,
                20,
                900_000.0,
                rtt,
                t0 + Duration::from_millis(100 + 100 * i),
            );
        }
        assert_eq!(l.rate(), 900_000.0);
    }

    #[test]
    fn what_arrived_with_low_loss_is_a_floor_and_with_high_loss_is_not() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(100);
        let mut l = LossBased::new(300_000.0, 50_000.0, 5_000_000.0);
        l.floor(600_000.0);
        assert_eq!(l.rate(), 600_000.0, "no loss measured yet");
        l.update(1, 99, 2_000_000.0, rtt, t0);
        l.floor(900_000.0);
        assert_eq!(l.rate(), 900_000.0, "1 % loss");
        l.update(20, 80, 2_000_000.0, rtt, t0 + Duration::from_secs(1));
        let cut = l.rate();
        assert!(cut < 900_000.0);
        l.floor(2_000_000.0);
        assert_eq!(
            l.rate(),
            cut,
            "20 % loss: what arrived is not what the path carries"
        );
    }
}
