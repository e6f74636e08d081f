//! What a baseline run (the plain relay, Janus) hands back to the media bench, which turns
//! it into a report row and a ratio against roomgate on the same load and path.
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BaselineOutcome {
    /// Row label, e.g. `relay (sendmmsg)` or `janus 1.1.2`.
    pub name: String,
    /// Media datagrams the load generator's publishers sent during the measured window.
    pub sent: u64,
    /// Copies the subscribers should have received: `sent` x subscribers per room.
    pub copies_expected: u64,
    /// Copies the subscribers did receive in the window.
    pub received: u64,
    /// On-CPU time of the baseline's own process(es) over the window, in ns.
    pub cpu_ns: u64,
    /// Length of the measured window.
    pub wall: Duration,
}

impl BaselineOutcome {
    /// CPU per delivered copy. Delivered, not expected: a server that drops work must not
    /// look cheaper for it.
    pub fn ns_per_copy(&self) -> f64 {
        self.cpu_ns as f64 / self.received.max(1) as f64
    }
    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.copies_expected.max(1) as f64
    }
    pub fn cores(&self) -> f64 {
        self.cpu_ns as f64 / self.wall.as_nanos().max(1) as f64
    }
}
