//! One subscriber's congestion control: transport-wide sequence numbers on everything
//! sent to it, its transport-cc feedback turned into an estimate, and padding probes
//! that find out whether its link would carry the next simulcast layer.
//!
//! Without probes an application-limited sender never learns that more would fit: a
//! subscriber held on the low layer receives only the low layer's rate, and the
//! estimator (rightly) will not grow far beyond what it has seen delivered.

use std::time::{Duration, Instant};

use super::bwe::{BweConfig, Estimator, ProbeOutcome, Usage};
use super::transport_feedback::PacketResult;
use super::twcc::{TransportFeedback, TwccHistory};

/// A probe runs for this long. At twice the estimate, a link that carries only the
/// estimate queues for about as long as the probe lasts: 120 ms stays inside the 200 ms an
/// access link buffers, where 250 ms overflowed it and every probe cost a weak viewer a few
/// media packets and a freeze. Much shorter is no better: a token-bucket shaper lets its
/// bucket through at line rate first, and over a cluster of a few kilobytes that burst
/// reads as capacity the link does not have (at 60 ms, a 300 kbit/s link measured well
/// over 500 and the viewer was moved up to a layer it could not carry).
const PROBE_DURATION: Duration = Duration::from_millis(120);
/// Padding goes out in bursts this far apart while a probe runs.
pub(super) const PROBE_TICK: Duration = Duration::from_millis(20);
/// Padding bytes per probe packet (RTP allows 255 padding bytes per packet).
pub(super) const PADDING_BYTES: usize = 255;
/// A probe waits this long after a layer change, or after a probe that found the link's
/// limit; failures double the wait up to [`MAX_PROBE_BACKOFF`].
const MIN_PROBE_BACKOFF: Duration = Duration::from_secs(3);
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(10);
/// A viewer starts on the layer its first, low estimate allows; its first probe comes
/// this soon after that layer is bound, so a link with room climbs within seconds.
const FIRST_PROBE_DELAY: Duration = Duration::from_secs(1);
/// A probe that delivered at least this share of its target did not find the link's
/// limit: the next one, at twice the new estimate, follows after [`CLIMB_WAIT`].
const CLIMB_DELIVERED: f64 = 0.9;
const CLIMB_WAIT: Duration = Duration::from_millis(500);
/// A probe never aims above this multiple of the estimate: on a link that cannot carry
/// it, a probe is a burst of overload, and bounding it bounds the damage (a few queued
/// packets, not a tail drop); successful probes climb step by step.
const MAX_PROBE_STEP: f64 = 2.0;
/// No probe while the link shows this much loss: it is already full.
const MAX_PROBE_LOSS: f64 = 0.02;
/// Most padding packets in one burst, so one tick cannot flood a weak link.
const MAX_BURST: usize = 16;

struct ProbeRun {
    /// Extra bit/s the padding adds on top of the media.
    padding_bps: u64,
    until: Instant,
    next_tick: Instant,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

pub(super) struct SubscriberCc {
    history: TwccHistory,
    estimator: Estimator,
    results: Vec<PacketResult>,
    probe: Option<ProbeRun>,
    next_probe: Instant,
    backoff: Duration,
    /// Unwrapped transport-wide seq of the next packet (mirrors the history's counter so
    /// a probe can name its range).
    sent: u64,
}

impl SubscriberCc {
    pub fn new(initial_bps: u64, now: Instant) -> Self {
        Self {
            history: TwccHistory::new(),
            estimator: Estimator::new(BweConfig {
                initial_bps,
                min_bps: 30_000,
                max_bps: 20_000_000,
            }),
            results: Vec::new(),
            probe: None,
            next_probe: now + MIN_PROBE_BACKOFF,
            backoff: MIN_PROBE_BACKOFF,
            sent: 0,
        }
    }

    /// The transport-wide seq to stamp on the next packet, recorded as sent now.
    pub fn stamp(&mut self, size: usize, now: Instant) -> u16 {
        let seq = self.history.next_seq();
        self.history.on_sent(seq, size, now);
        self.sent += 1;
        seq
    }

    /// Like [`Self::stamp`], for a padding packet of the running probe.
    pub fn stamp_probe(&mut self, size: usize, now: Instant) -> u16 {
        let unwrapped = self.sent;
        if let Some(p) = self.probe.as_mut() {
            if p.first_seq.is_none() {
                p.first_seq = Some(unwrapped);
            }
            p.last_seq = Some(unwrapped);
        }
        self.stamp(size, now)
    }

    pub fn handle_feedback(&mut self, feedback: &TransportFeedback<'_>, now: Instant) {
        self.results.clear();
        self.history.on_feedback(feedback, &mut self.results);
        if self.results.is_empty() {
            return;
        }
        self.estimator.handle_feedback(&self.results, now);
        if let Some(outcome) = self.estimator.poll_probe_result() {
            let wait = match outcome {
                ProbeOutcome::Success {
                    target_bps,
                    delivered_bps,
                    ..
                } => {
                    self.backoff = MIN_PROBE_BACKOFF;
                    if delivered_bps as f64 >= target_bps as f64 * CLIMB_DELIVERED {
                        CLIMB_WAIT
                    } else {
                        MIN_PROBE_BACKOFF
                    }
                }
                _ => {
                    self.backoff = (self.backoff * 2).min(MAX_PROBE_BACKOFF);
                    self.backoff
                }
            };
            self.next_probe = now + wait;
        }
    }

    pub fn estimate_bps(&self) -> u64 {
        self.estimator.estimate_bps()
    }

    /// The subscriber's layer changed (`first`: its first layer was bound): a probe now
    /// would measure the wrong thing, and the next one starts from the short wait again.
    pub fn layer_changed(&mut self, first: bool, now: Instant) {
        self.backoff = MIN_PROBE_BACKOFF;
        self.next_probe = now
            + if first {
                FIRST_PROBE_DELAY
            } else {
                MIN_PROBE_BACKOFF
            };
    }

    /// Start a probe towards `target_bps` when one is due. `media_bps` is what the
    /// subscriber already receives; the padding makes up the difference.
    pub fn maybe_start_probe(&mut self, target_bps: u64, media_bps: u64, now: Instant) -> bool {
        if self.probe.is_some() || self.estimator.probe_in_progress() || now < self.next_probe {
            return false;
        }
        let estimate = self.estimate_bps();
        if target_bps <= estimate {
            return false;
        }
        let state = self.estimator.state();
        let calm =
            state.usage == Usage::Normal && state.loss_fraction.is_none_or(|l| l < MAX_PROBE_LOSS);
        if !calm {
            return false;
        }
        let target_bps = target_bps.min((estimate as f64 * MAX_PROBE_STEP) as u64);
        let padding_bps = target_bps.saturating_sub(media_bps);
        if padding_bps == 0 {
            return false;
        }
        self.estimator.start_probe(self.sent, target_bps);
        self.probe = Some(ProbeRun {
            padding_bps,
            until: now + PROBE_DURATION,
            next_tick: now,
            first_seq: None,
            last_seq: None,
        });
        // If feedback never answers, the next probe still waits.
        self.backoff = (self.backoff * 2).min(MAX_PROBE_BACKOFF);
        self.next_probe = now + PROBE_DURATION + self.backoff;
        true
    }

    /// Padding packets to send now for the running probe (each [`PADDING_BYTES`]).
    pub fn padding_due(&mut self, now: Instant) -> usize {
        let Some(p) = self.probe.as_mut() else {
            return 0;
        };
        if now >= p.until {
            if let Some(last) = p.last_seq {
                self.estimator.end_probe(last);
            } else {
                self.estimator.end_probe(self.sent.saturating_sub(1));
            }
            self.probe = None;
            return 0;
        }
        if now < p.next_tick {
            return 0;
        }
        let elapsed = now.saturating_duration_since(p.next_tick) + PROBE_TICK;
        p.next_tick = now + PROBE_TICK;
        let bytes = p.padding_bps as u128 * elapsed.as_micros() / 8 / 1_000_000;
        ((bytes as usize).div_ceil(PADDING_BYTES)).min(MAX_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest queue (as time at the estimate's rate) a probe builds on a link that
    /// carries exactly the estimate, with the media steady at `media_bps`.
    fn probe_queue(estimate_bps: u64, media_bps: u64) -> Duration {
        let t0 = Instant::now();
        let mut cc = SubscriberCc::new(estimate_bps, t0);
        let start = t0 + MIN_PROBE_BACKOFF;
        assert!(cc.maybe_start_probe(10 * estimate_bps, media_bps, start));
        let (mut sent_bits, mut worst_bits) = (0f64, 0f64);
        let step = Duration::from_millis(1);
        let mut now = start;
        while now < start + Duration::from_secs(1) {
            let padding = cc.padding_due(now);
            for _ in 0..padding {
                cc.stamp_probe(PADDING_BYTES, now);
            }
            sent_bits += (padding * PADDING_BYTES * 8) as f64;
            sent_bits += media_bps as f64 * step.as_secs_f64();
            let drained = estimate_bps as f64 * (now - start + step).as_secs_f64();
            worst_bits = worst_bits.max(sent_bits - drained);
            now += step;
        }
        Duration::from_secs_f64(worst_bits / estimate_bps as f64)
    }

    #[test]
    fn a_probe_queues_a_link_that_carries_only_the_estimate_briefly() {
        // The simulcast browser test's weak viewer: a 300 kbit/s link buffering 200 ms,
        // the low layer at about 150 kbit/s. The queue must leave room in that buffer for
        // one more frame of that layer (1.25 kB, 33 ms at 300 kbit/s).
        for (estimate, media) in [(300_000, 150_000), (300_000, 0), (2_000_000, 1_500_000)] {
            let queue = probe_queue(estimate, media);
            assert!(
                queue <= Duration::from_millis(165),
                "a probe from {estimate} bit/s with {media} bit/s of media queues {queue:?}"
            );
        }
    }
}
