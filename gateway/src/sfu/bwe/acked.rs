//! Acknowledged bitrate: what the receiver actually got over the last half second, on
//! the receiver's clock. Fixed buckets, so it never allocates.

use std::time::Duration;

const BUCKET_MS: u64 = 10;
const BUCKETS: usize = 50;
/// Less history than this gives a rate too noisy to cap or cut the estimate with.
const MIN_SPAN_BUCKETS: u64 = 10;

#[derive(Debug)]
pub(crate) struct AckedBitrate {
    bytes: [u64; BUCKETS],
    /// Absolute bucket index (arrival ms / BUCKET_MS) of the newest bucket.
    head: Option<u64>,
    /// First bucket with data since the last (re)start.
    first: u64,
}

impl Default for AckedBitrate {
    fn default() -> Self {
        Self {
            bytes: [0; BUCKETS],
            head: None,
            first: 0,
        }
    }
}

impl AckedBitrate {
    pub fn add(&mut self, arrival: Duration, size: usize) {
        let slot = u64::try_from(arrival.as_millis() / u128::from(BUCKET_MS)).unwrap_or(u64::MAX);
        let head = match self.head {
            None => {
                self.head = Some(slot);
                self.first = slot;
                slot
            }
            Some(h) => h,
        };
        if slot > head {
            if slot - head >= BUCKETS as u64 {
                // A gap longer than the window: nothing old is still relevant.
                self.bytes = [0; BUCKETS];
                self.first = slot;
            } else {
                for s in head + 1..=slot {
                    self.bytes[(s % BUCKETS as u64) as usize] = 0;
                }
            }
            self.head = Some(slot);
        } else if head - slot >= BUCKETS as u64 {
            return; // older than the window (or garbage from the past)
        }
        self.first = self.first.min(slot);
        let i = (slot % BUCKETS as u64) as usize;
        self.bytes[i] = self.bytes[i].saturating_add(size as u64);
    }

    /// Delivered bit/s over the window, once enough history exists.
    pub fn bps(&self) -> Option<f64> {
        let head = self.head?;
        let span = (head - self.first + 1).min(BUCKETS as u64);
        if span < MIN_SPAN_BUCKETS {
            return None;
        }
        let bytes: u64 = (0..span)
            .map(|k| self.bytes[((head - k) % BUCKETS as u64) as usize])
            .sum();
        Some(bytes as f64 * 8.0 * 1000.0 / (span * BUCKET_MS) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_arrivals_give_their_rate_and_old_data_ages_out() {
        let mut a = AckedBitrate::default();
        // 1250 bytes every 10 ms = 1 Mbit/s.
        for i in 0..100u64 {
            a.add(Duration::from_millis(5_000 + i * 10), 1250);
        }
        let r = a.bps().expect("rate");
        assert!((r - 1_000_000.0).abs() < 30_000.0, "{r}");
        a.add(Duration::from_millis(60_000), 1250);
        assert_eq!(a.bps(), None, "a long gap restarts the window");
        a.add(Duration::from_millis(1), 1250); // from the past: ignored
    }
}
