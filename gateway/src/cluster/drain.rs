//! Draining, for rolling upgrades: no new rooms, existing rooms keep running, and the
//! node exits when its last session has gone or the drain timeout expires.
use std::time::{Duration, Instant};

use tracing::info;

use super::{placement::NodeState, Cluster};

impl Cluster {
    /// Enter draining (idempotent): no new rooms here from now on; the heartbeat tells
    /// the cluster and fires [`Cluster::drained`] when the node is empty or out of time.
    /// Returns the time left.
    pub fn drain(&self) -> Duration {
        let now = Instant::now();
        let (deadline, started) = {
            let mut local = self.lock();
            match local.drain_deadline {
                Some(deadline) => (deadline, false),
                None => {
                    let deadline = now + self.config.drain_timeout;
                    local.drain_deadline = Some(deadline);
                    (deadline, true)
                }
            }
        };
        if started {
            info!(
                timeout_secs = self.config.drain_timeout.as_secs(),
                "draining: no new rooms; existing rooms keep running until they empty"
            );
            self.metrics.set_state(NodeState::Draining);
            // Publish the new state now rather than at the next beat.
            self.wake.notify_one();
        }
        deadline.saturating_duration_since(now)
    }

    /// Called on every beat: publish the time left and fire [`Cluster::drained`] once
    /// the node is empty or out of time.
    pub(super) fn check_drain(&self) {
        let Some(deadline) = self.lock().drain_deadline else {
            return;
        };
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        self.metrics.set_drain_seconds_left(left.as_secs());
        let sessions: u64 = self.threads.iter().map(|h| h.stats.sessions.get()).sum();
        if sessions == 0 {
            info!("drained: no sessions left, exiting");
            self.drained.notify_one();
        } else if left.is_zero() {
            info!(
                sessions,
                "drained: drain timeout reached, exiting with sessions left"
            );
            self.drained.notify_one();
        }
    }
}
