//! Groups packets into send-time bursts and yields the delay change between consecutive
//! groups: how much later (or earlier) a group arrived than its send spacing predicts.
//!
//! Grouping matters because a pacer or an SFU forwards several packets back to back;
//! comparing single packets would turn scheduler jitter into false delay trends.

/// Packets sent within this span of a group's first packet belong to that group.
const BURST_MS: f64 = 5.0;
/// An arrival gap this much larger than the send gap is not queueing but a clock jump,
/// a long outage or garbage: start over instead of feeding a huge sample to the trend.
const RESET_GAP_MS: f64 = 3000.0;
/// Consecutive groups arriving "before" their predecessor before we give up on the
/// current reference and restart.
const MAX_REORDERED: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_ms: f64,
    last_send_ms: f64,
    last_arrival_ms: f64,
}

/// Delay change between two complete groups, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GroupDelta {
    pub send_delta_ms: f64,
    pub arrival_delta_ms: f64,
    /// Arrival time of the newer group on the receiver's clock.
    pub arrival_ms: f64,
}

#[derive(Debug, Default)]
pub(crate) struct InterArrival {
    current: Option<Group>,
    previous: Option<Group>,
    reordered: u32,
    /// Restarts so far, so that the caller can restart what depends on the clocks too.
    resets: u64,
}

impl InterArrival {
    /// Feeds one received packet; returns a delta when it closes a group.
    /// `send_ms` is on the sender's clock, `arrival_ms` on the receiver's.
    pub fn add(&mut self, send_ms: f64, arrival_ms: f64) -> Option<GroupDelta> {
        let Some(mut cur) = self.current else {
            self.current = Some(Group {
                first_send_ms: send_ms,
                last_send_ms: send_ms,
                last_arrival_ms: arrival_ms,
            });
            return None;
        };
        if send_ms < cur.first_send_ms {
            // Sent before the group we are building (a retransmission or reordered
            // feedback): it says nothing about the current queue.
            return None;
        }
        if send_ms - cur.first_send_ms <= BURST_MS {
            cur.last_send_ms = cur.last_send_ms.max(send_ms);
            cur.last_arrival_ms = cur.last_arrival_ms.max(arrival_ms);
            self.current = Some(cur);
            return None;
        }
        let mut out = None;
        if let Some(prev) = self.previous {
            let send_delta_ms = cur.last_send_ms - prev.last_send_ms;
            let arrival_delta_ms = cur.last_arrival_ms - prev.last_arrival_ms;
            if arrival_delta_ms - send_delta_ms > RESET_GAP_MS || arrival_delta_ms < -RESET_GAP_MS {
                self.reset();
                self.current = Some(Group {
                    first_send_ms: send_ms,
                    last_send_ms: send_ms,
                    last_arrival_ms: arrival_ms,
                });
                return None;
            }
            if arrival_delta_ms < 0.0 {
                self.reordered += 1;
                if self.reordered >= MAX_REORDERED {
                    self.reset();
                    self.current = Some(Group {
                        first_send_ms: send_ms,
                        last_send_ms: send_ms,
                        last_arrival_ms: arrival_ms,
                    });
                    return None;
                }
                // Keep the older reference; the reordered group is skipped.
                self.current = Some(Group {
                    first_send_ms: send_ms,
                    last_send_ms: send_ms,
                    last_arrival_ms: arrival_ms,
                });
                return None;
            }
            self.reordered = 0;
            out = Some(GroupDelta {
                send_delta_ms,
                arrival_delta_ms,
                arrival_ms: cur.last_arrival_ms,
            });
        }
        self.previous = Some(cur);
        self.current = Some(Group {
            first_send_ms: send_ms,
            last_send_ms: send_ms,
            last_arrival_ms: arrival_ms,
        });
        out
    }

    pub fn reset(&mut self) {
        let resets = self.resets + 1;
        *self = Self {
            resets,
            ..Self::default()
        };
    }

    pub fn resets(&self) -> u64 {
        self.resets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_form_one_group_and_spacing_yields_deltas() {
        let mut ia = InterArrival::default();
        assert_eq!(ia.add(0.0, 100.0), None);
        assert_eq!(ia.add(2.0, 101.0), None); // same burst
        assert_eq!(ia.add(10.0, 110.0), None); // closes group 1, no predecessor
        let d = ia.add(20.0, 125.0).expect("group 2 closes with a delta");
        assert_eq!(d.send_delta_ms, 8.0);
        assert_eq!(d.arrival_delta_ms, 9.0);
        assert_eq!(d.arrival_ms, 110.0);
    }

    #[test]
    fn huge_arrival_jump_resets_instead_of_reporting() {
        let mut ia = InterArrival::default();
        let mut deltas = Vec::new();
        for (send, arrival) in [
            (0.0, 0.0),
            (10.0, 10.0),
            (20.0, 20.0),
            (30.0, 1e6),
            (40.0, 1e6 + 10.0),
            (50.0, 1e6 + 20.0),
            (60.0, 1e6 + 30.0),
        ] {
            deltas.extend(ia.add(send, arrival));
        }
        assert!(
            deltas.iter().all(|d| d.arrival_delta_ms < 100.0),
            "{deltas:?}"
        );
        assert!(!deltas.is_empty());
    }
}
