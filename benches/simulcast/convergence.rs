//! The estimator's convergence after a step of capacity, on the gateway's own simulator
//! (`gateway::sfu::bwe::sim`, virtual clock, so the machine's load does not matter).
use std::time::Duration;

use gateway::sfu::bwe::sim::step_convergence_with_loss;

/// Steps measured, (before, after) in bit/s.
pub const STEPS: [(u64, u64); 2] = [(2_000_000, 300_000), (300_000, 2_000_000)];
/// Long enough on the first capacity for the estimate to settle, then how long to wait
/// for it to reach the new one.
pub const WARMUP: Duration = Duration::from_secs(20);
pub const OBSERVE: Duration = Duration::from_secs(60);
/// The second link: random loss after the queue. On the default link nothing is random,
/// so every seed gives the same trace; loss makes the seeds differ.
pub const RANDOM_LOSS: f64 = 0.01;

pub struct Step {
    pub before_bps: u64,
    pub after_bps: u64,
    pub random_loss: f64,
    /// Per seed; `None`: not within [`OBSERVE`].
    pub times: Vec<Option<Duration>>,
}

impl Step {
    pub fn converged(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.times.iter().flatten().copied().collect();
        t.sort_unstable();
        t
    }
}

pub fn run(seeds: u64) -> Vec<Step> {
    let mut out = Vec::new();
    for random_loss in [0.0, RANDOM_LOSS] {
        for (before_bps, after_bps) in STEPS {
            let times = (1..=seeds.max(1))
                .map(|seed| {
                    step_convergence_with_loss(
                        before_bps,
                        after_bps,
                        WARMUP,
                        OBSERVE,
                        random_loss,
                        seed,
                    )
                })
                .collect();
            out.push(Step {
                before_bps,
                after_bps,
                random_loss,
                times,
            });
        }
    }
    out
}
