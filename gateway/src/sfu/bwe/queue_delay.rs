//! Standing queue estimate: one-way delay (receiver clock minus sender clock, so with an
//! unknown constant offset) above its recent minimum. The trendline sees a queue only
//! while it grows; once a drop-tail buffer is full the delay is flat and high, and the
//! loss that follows is congestion, not the random loss GCC's 2-10 % band tolerates.

/// The minimum is taken over two rotating periods of this length, so it forgets a path
/// change within 10-20 s without storing samples.
const PERIOD_MS: f64 = 10_000.0;
/// Smoothing of the current delay, per packet.
const ALPHA: f64 = 0.1;

#[derive(Debug, Default)]
pub(crate) struct QueueDelay {
    previous_min: Option<f64>,
    current_min: Option<f64>,
    period_start_ms: Option<f64>,
    smoothed: Option<f64>,
}

impl QueueDelay {
    /// `owd_ms`: arrival minus send time; `now_ms`: the sender's clock.
    pub fn add(&mut self, owd_ms: f64, now_ms: f64) {
        let start = *self.period_start_ms.get_or_insert(now_ms);
        if now_ms - start >= PERIOD_MS {
            self.previous_min = self.current_min;
            self.current_min = None;
            self.period_start_ms = Some(now_ms);
        }
        self.current_min = Some(self.current_min.map_or(owd_ms, |m| m.min(owd_ms)));
        self.smoothed = Some(self.smoothed.map_or(owd_ms, |s| s + ALPHA * (owd_ms - s)));
    }

    /// Milliseconds of queue above the recent floor, once there are samples.
    pub fn queue_ms(&self) -> Option<f64> {
        let floor = match (self.previous_min, self.current_min) {
            (Some(p), Some(c)) => p.min(c),
            (p, c) => p.or(c)?,
        };
        self.smoothed.map(|s| (s - floor).max(0.0))
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_above_the_floor_is_queue_and_the_floor_is_forgotten() {
        let mut q = QueueDelay::default();
        assert_eq!(q.queue_ms(), None);
        for i in 0..100 {
            q.add(1000.0, f64::from(i));
        }
        assert_eq!(q.queue_ms(), Some(0.0));
        for i in 100..200 {
            q.add(1200.0, f64::from(i));
        }
        assert!(q.queue_ms().is_some_and(|d| d > 190.0));
        // Two periods later the 1000 ms floor is gone: 1200 is the new normal.
        for i in 0..40 {
            q.add(1200.0, 200.0 + f64::from(i) * 1000.0);
        }
        assert_eq!(q.queue_ms(), Some(0.0));
    }
}
