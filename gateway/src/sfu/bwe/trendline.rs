//! Trendline filter: the slope of the smoothed accumulated queueing delay over arrival
//! time. A positive slope means the bottleneck queue is growing, i.e. we send faster
//! than the path drains.

/// Number of group deltas in the regression window.
const WINDOW: usize = 20;
/// Exponential smoothing of the accumulated delay before the fit; damps jitter.
const SMOOTHING: f64 = 0.9;

#[derive(Debug)]
pub(crate) struct Trendline {
    /// Ring of (arrival time since the first sample, smoothed accumulated delay), ms.
    points: [(f64, f64); WINDOW],
    len: usize,
    head: usize,
    first_arrival_ms: Option<f64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// Deltas seen since the last reset, capped: the detector scales the slope by it.
    num_deltas: u32,
    slope: f64,
}

impl Default for Trendline {
    fn default() -> Self {
        Self {
            points: [(0.0, 0.0); WINDOW],
            len: 0,
            head: 0,
            first_arrival_ms: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            num_deltas: 0,
            slope: 0.0,
        }
    }
}

impl Trendline {
    /// Adds one group delta and returns the current slope (ms of delay per ms).
    pub fn update(&mut self, send_delta_ms: f64, arrival_delta_ms: f64, arrival_ms: f64) -> f64 {
        let delta = arrival_delta_ms - send_delta_ms;
        self.num_deltas = self.num_deltas.saturating_add(1).min(1000);
        let first = *self.first_arrival_ms.get_or_insert(arrival_ms);
        self.accumulated_ms += delta;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        self.points[self.head] = (arrival_ms - first, self.smoothed_ms);
        self.head = (self.head + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
        if self.len == WINDOW {
            if let Some(slope) = self.fit() {
                self.slope = slope;
            }
        }
        self.slope
    }

    pub fn num_deltas(&self) -> u32 {
        self.num_deltas
    }

    /// Least-squares slope; `None` when all x are equal (no arrival spread).
    fn fit(&self) -> Option<f64> {
        let n = self.len as f64;
        let pts = &self.points[..self.len];
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
        let (mx, my) = (sx / n, sy / n);
        let (mut num, mut den) = (0.0, 0.0);
        for &(x, y) in pts {
            num += (x - mx) * (y - my);
            den += (x - mx) * (x - mx);
        }
        (den > 0.0 && num.is_finite()).then(|| num / den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_queue_gives_positive_slope_and_steady_gives_zero() {
        let mut t = Trendline::default();
        for i in 0..40 {
            t.update(10.0, 10.0, f64::from(i) * 10.0);
        }
        assert!(t.slope.abs() < 1e-9, "{}", t.slope);
        for i in 40..80 {
            t.update(10.0, 12.0, f64::from(i) * 12.0);
        }
        assert!(t.slope > 0.05, "{}", t.slope);
    }
}
