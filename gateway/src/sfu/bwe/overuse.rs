//! Overuse detector with an adaptive threshold: compares the (scaled) delay trend with
//! a threshold that follows the trend's own magnitude, so that a path with jittery
//! delay does not look congested and a competing TCP flow does not starve us.

/// What the delay trend says about the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Usage {
    /// Queue stable: we may increase.
    #[default]
    Normal,
    /// Queue growing: we send more than the path carries.
    Overusing,
    /// Queue draining: hold so that it empties.
    Underusing,
}

const INITIAL_THRESHOLD: f64 = 12.5;
const MIN_THRESHOLD: f64 = 6.0;
const MAX_THRESHOLD: f64 = 600.0;
/// The threshold rises slowly when the trend exceeds it (k_up) and falls fast when
/// the trend is below it (k_down).
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// Trends this far above the threshold are spikes (e.g. a route change): they must not
/// drag the threshold up with them.
const MAX_ADAPT_OFFSET: f64 = 15.0;
/// The slope is multiplied by min(deltas, this) and a gain so that it is comparable to
/// a threshold in milliseconds.
const MAX_SCALE_DELTAS: f64 = 60.0;
const THRESHOLD_GAIN: f64 = 4.0;
/// Overuse must persist this long (and over two samples) before it is declared.
const OVERUSE_TIME_MS: f64 = 10.0;

#[derive(Debug)]
pub(crate) struct OveruseDetector {
    threshold: f64,
    last_update_ms: Option<f64>,
    time_over_using_ms: Option<f64>,
    overuse_count: u32,
    prev_trend: f64,
    usage: Usage,
}

impl Default for OveruseDetector {
    fn default() -> Self {
        Self {
            threshold: INITIAL_THRESHOLD,
            last_update_ms: None,
            time_over_using_ms: None,
            overuse_count: 0,
            prev_trend: 0.0,
            usage: Usage::Normal,
        }
    }
}

impl OveruseDetector {
    pub fn detect(
        &mut self,
        trend: f64,
        num_deltas: u32,
        send_delta_ms: f64,
        now_ms: f64,
    ) -> Usage {
        if num_deltas < 2 {
            return Usage::Normal;
        }
        let modified = f64::from(num_deltas).min(MAX_SCALE_DELTAS) * trend * THRESHOLD_GAIN;
        if modified > self.threshold {
            let t = match self.time_over_using_ms {
                None => send_delta_ms / 2.0,
                Some(t) => t + send_delta_ms,
            };
            self.time_over_using_ms = Some(t);
            self.overuse_count += 1;
            if t > OVERUSE_TIME_MS && self.overuse_count > 1 && trend >= self.prev_trend {
                self.time_over_using_ms = Some(0.0);
                self.overuse_count = 0;
                self.usage = Usage::Overusing;
            }
        } else if modified < -self.threshold {
            self.time_over_using_ms = None;
            self.overuse_count = 0;
            self.usage = Usage::Underusing;
        } else {
            self.time_over_using_ms = None;
            self.overuse_count = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = trend;
        self.adapt_threshold(modified, now_ms);
        self.usage
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn adapt_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_update_ms.get_or_insert(now_ms);
        let abs = modified.abs();
        if abs > self.threshold + MAX_ADAPT_OFFSET {
            self.last_update_ms = Some(now_ms);
            return;
        }
        let k = if abs < self.threshold { K_DOWN } else { K_UP };
        let dt = (now_ms - last).clamp(0.0, 100.0);
        self.threshold += k * (abs - self.threshold) * dt;
        self.threshold = self.threshold.clamp(MIN_THRESHOLD, MAX_THRESHOLD);
        self.last_update_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_rising_trend_becomes_overuse_and_falling_underuse() {
        let mut d = OveruseDetector::default();
        let mut now = 0.0;
        let mut usage = Usage::Normal;
        for _ in 0..5 {
            now += 5.0;
            usage = d.detect(0.2, 60, 5.0, now);
        }
        assert_eq!(usage, Usage::Overusing);
        for _ in 0..2 {
            now += 5.0;
            usage = d.detect(-0.2, 60, 5.0, now);
        }
        assert_eq!(usage, Usage::Underusing);
        now += 5.0;
        assert_eq!(d.detect(0.0, 60, 5.0, now), Usage::Normal);
    }
}
