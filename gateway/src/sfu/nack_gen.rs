//! Which packets of a publisher's stream roomgate never received, and when to ask the
//! publisher for them (RFC 4585 generic NACK). A packet lost between the publisher and
//! roomgate is lost for every subscriber, so it is repaired once, here, before any
//! subscriber has to ask.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A forward jump larger than this is a sender restart or a long outage, not loss worth
/// repairing packet by packet.
const MAX_GAP: u16 = 128;
/// Seqs tracked at once; the oldest go first.
const MAX_MISSING: usize = 256;
/// Requests per missing packet.
const MAX_TRIES: u8 = 3;
/// A request is repeated after this long without the packet (about one round trip
/// on the paths WebRTC serves, where a NACK is still worth it).
const RETRY: Duration = Duration::from_millis(100);
/// Past this age a repair would arrive after the subscribers' jitter buffers gave up.
const MAX_AGE: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy)]
struct Missing {
    seq: u16,
    noticed: Instant,
    first_asked: Option<Instant>,
    last_asked: Option<Instant>,
    tries: u8,
}

/// What happened to a packet that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// In order, or a packet nobody asked for.
    Normal,
    /// A packet roomgate had asked for, this long after the first request.
    Repaired(Duration),
}

#[derive(Debug, Default)]
pub(crate) struct NackGenerator {
    newest: Option<u16>,
    missing: VecDeque<Missing>,
    /// Seqs given up on (too old, asked too often, or pushed out), since the last take.
    gave_up: u64,
}

impl NackGenerator {
    pub fn on_packet(&mut self, seq: u16, now: Instant) -> Arrival {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            return Arrival::Normal;
        };
        let ahead = seq.wrapping_sub(newest);
        if ahead == 0 {
            return Arrival::Normal;
        }
        if ahead < 0x8000 {
            if ahead > MAX_GAP {
                self.gave_up += self.missing.len() as u64;
                self.missing.clear();
            } else {
                for s in 1..ahead {
                    if self.missing.len() == MAX_MISSING {
                        self.missing.pop_front();
                        self.gave_up += 1;
                    }
                    self.missing.push_back(Missing {
                        seq: newest.wrapping_add(s),
                        noticed: now,
                        first_asked: None,
                        last_asked: None,
                        tries: 0,
                    });
                }
            }
            self.newest = Some(seq);
            return Arrival::Normal;
        }
        // Older than the newest: a reordered or repaired packet.
        let Some(i) = self.missing.iter().position(|m| m.seq == seq) else {
            return Arrival::Normal;
        };
        let m = self.missing.remove(i);
        match m.and_then(|m| m.first_asked) {
            Some(asked) => Arrival::Repaired(now.saturating_duration_since(asked)),
            None => Arrival::Normal,
        }
    }

    /// Seqs to request now, in ascending order, into `out` (cleared first).
    pub fn poll_nack(&mut self, now: Instant, out: &mut Vec<u16>) {
        out.clear();
        let before = self.missing.len();
        self.missing
            .retain(|m| m.tries < MAX_TRIES && now.saturating_duration_since(m.noticed) < MAX_AGE);
        self.gave_up += (before - self.missing.len()) as u64;
        for m in &mut self.missing {
            let due = m
                .last_asked
                .is_none_or(|t| now.saturating_duration_since(t) >= RETRY);
            if due {
                m.first_asked.get_or_insert(now);
                m.last_asked = Some(now);
                m.tries += 1;
                out.push(m.seq);
            }
        }
    }

    /// Packets still missing (asked for or about to be).
    pub fn has_missing(&self) -> bool {
        !self.missing.is_empty()
    }

    pub fn take_gave_up(&mut self) -> u64 {
        std::mem::take(&mut self.gave_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn gaps_are_requested_retried_and_repaired() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        let mut out = Vec::new();
        for seq in [10u16, 11, 14] {
            assert_eq!(g.on_packet(seq, t0), Arrival::Normal);
        }
        g.poll_nack(t0, &mut out);
        assert_eq!(out, [12, 13]);
        g.poll_nack(t0 + 50 * MS, &mut out);
        assert!(out.is_empty(), "not before the retry interval");
        assert_eq!(g.on_packet(12, t0 + 60 * MS), Arrival::Repaired(60 * MS));
        g.poll_nack(t0 + 100 * MS, &mut out);
        assert_eq!(out, [13], "only what is still missing");
        g.poll_nack(t0 + 200 * MS, &mut out);
        assert_eq!(out, [13]);
        g.poll_nack(t0 + 300 * MS, &mut out);
        assert!(out.is_empty(), "three tries, then it gives up");
        assert_eq!(g.take_gave_up(), 1);
        // A reordered packet nobody asked for is not a repair.
        g.on_packet(16, t0 + 300 * MS);
        assert_eq!(g.on_packet(15, t0 + 301 * MS), Arrival::Normal);
    }

    #[test]
    fn wraps_restarts_and_bounds() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        let mut out = Vec::new();
        g.on_packet(65534, t0);
        g.on_packet(1, t0);
        g.poll_nack(t0, &mut out);
        assert_eq!(out, [65535, 0]);
        // A jump past the gap bound is a restart: nothing to repair.
        g.on_packet(5000, t0);
        g.poll_nack(t0 + 200 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.take_gave_up(), 2);
        // Old requests age out.
        g.on_packet(5003, t0);
        g.poll_nack(t0 + 2000 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.take_gave_up(), 2);
        // Many small gaps never hold more than the bound.
        let mut seq = 6000u16;
        g.on_packet(seq, t0);
        for _ in 0..200 {
            seq = seq.wrapping_add(3);
            g.on_packet(seq, t0);
        }
        assert_eq!(g.missing.len(), MAX_MISSING);
    }
}
