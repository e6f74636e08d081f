//! The estimator's convergence after a step of capacity, on the gateway's own simulator
//! (`gateway::sfu::bwe::sim`, virtual clock, so the machine's load does not matter).
use std::time::Duration;

use gateway::sfu::bwe::{
    sim::{converge_time, step_convergence, LinkConfig, Sim},
    BweConfig,
};

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

/// [`step_convergence`] with random loss on the link; the rest as it sets it up.
fn lossy_step(before_bps: u64, after_bps: u64, seed: u64) -> Option<Duration> {
    let config = BweConfig {
        initial_bps: 300_000,
        min_bps: 50_000,
        max_bps: before_bps.max(after_bps).saturating_mul(5),
    };
    let link = LinkConfig {
        capacity_bps: before_bps,
        propagation: Duration::from_millis(25),
        buffer: Duration::from_millis(200),
        random_loss: RANDOM_LOSS,
    };
    let mut sim = Sim::new(config, link, seed);
    sim.run_for(WARMUP);
    let step = sim.now();
    sim.set_capacity(after_bps);
    sim.run_for(OBSERVE);
    converge_time(&sim.trace, step, after_bps)
}

pub fn run(seeds: u64) -> Vec<Step> {
    let mut out = Vec::new();
    for random_loss in [0.0, RANDOM_LOSS] {
        for (before_bps, after_bps) in STEPS {
            let times = (1..=seeds.max(1))
                .map(|seed| {
                    if random_loss == 0.0 {
                        step_convergence(before_bps, after_bps, WARMUP, OBSERVE, seed)
                    } else {
                        lossy_step(before_bps, after_bps, seed)
                    }
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
