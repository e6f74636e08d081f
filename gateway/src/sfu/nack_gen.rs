//! Which packets of a publisher's stream roomgate never received, and when to ask the
//! publisher for them (RFC 4585 generic NACK). A packet lost between the publisher and
//! roomgate is lost for every subscriber, so it is repaired once, here, before any
//! subscriber has to ask.
//!
//! A gap is not always a loss: a path that reorders delivers the packet a little later on
//! its own, and a NACK sent at once costs the publisher a retransmission that arrives as a
//! duplicate. Where the publisher repairs on an RTX stream, a missing packet that still
//! arrives on the media stream was reordered, not repaired; the longest such delay is the
//! wait the next gaps get before their first NACK. A path that stops reordering for a
//! while gets immediate NACKs again.

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
/// The longest a first NACK waits for reordered packets: beyond this the repair itself
/// would come too late to be worth the saved duplicate.
const MAX_REORDER_WAIT: Duration = Duration::from_millis(40);
/// Reordering not seen again for this long is forgotten: gaps are asked for at once.
const REORDER_MEMORY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Missing {
    seq: u16,
    noticed: Instant,
    /// When the first request is due (later than `noticed` on a path that reorders).
    due: Instant,
    first_asked: Option<Instant>,
    last_asked: Option<Instant>,
    tries: u8,
}

/// How a packet reached roomgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// On the media stream of a layer whose repairs come on an RTX stream: a missing
    /// packet arriving this way was reordered.
    Original,
    /// Unwrapped from the layer's RTX stream: a repair.
    Rtx,
    /// On the media stream of a layer without an RTX stream, where repairs arrive too:
    /// a missing packet that was asked for counts as repaired.
    Media,
}

/// What happened to a packet that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// In order, or a packet nobody was missing.
    Normal,
    /// A packet roomgate had asked for, this long after the first request.
    Repaired(Duration),
    /// A missing packet that came late on its own; `asked` if a NACK had already gone out.
    Reordered { asked: bool },
}

#[derive(Debug, Default)]
pub(crate) struct NackGenerator {
    newest: Option<u16>,
    missing: VecDeque<Missing>,
    /// Seqs given up on (too old, asked too often, or pushed out), since the last take.
    gave_up: u64,
    /// How long new gaps wait before their first NACK, and when reordering last set it.
    reorder_wait: Duration,
    last_reorder: Option<Instant>,
}

impl NackGenerator {
    pub fn on_packet(&mut self, seq: u16, via: Via, now: Instant) -> Arrival {
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
                let due = now + self.wait(now);
                for s in 1..ahead {
                    if self.missing.len() == MAX_MISSING {
                        self.missing.pop_front();
                        self.gave_up += 1;
                    }
                    self.missing.push_back(Missing {
                        seq: newest.wrapping_add(s),
                        noticed: now,
                        due,
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
        let Some(m) = self.missing.remove(i) else {
            return Arrival::Normal;
        };
        match (via, m.first_asked) {
            (Via::Rtx, Some(asked)) | (Via::Media, Some(asked)) => {
                Arrival::Repaired(now.saturating_duration_since(asked))
            }
            (Via::Rtx, None) => Arrival::Normal,
            (Via::Original | Via::Media, first_asked) => {
                let late = now.saturating_duration_since(m.noticed);
                self.reorder_wait = self.wait(now).max(late).min(MAX_REORDER_WAIT);
                self.last_reorder = Some(now);
                Arrival::Reordered {
                    asked: first_asked.is_some(),
                }
            }
        }
    }

    /// How long a gap noticed now waits before its first NACK.
    fn wait(&self, now: Instant) -> Duration {
        match self.last_reorder {
            Some(t) if now.saturating_duration_since(t) < REORDER_MEMORY => self.reorder_wait,
            _ => Duration::ZERO,
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
            let due = match m.last_asked {
                None => now >= m.due,
                Some(t) => now.saturating_duration_since(t) >= RETRY,
            };
            if due {
                m.first_asked.get_or_insert(now);
                m.last_asked = Some(now);
                m.tries += 1;
                out.push(m.seq);
            }
        }
    }

    /// The earliest first request still waiting out the reorder window.
    pub fn next_first_request(&self) -> Option<Instant> {
        self.missing
            .iter()
            .filter(|m| m.first_asked.is_none())
            .map(|m| m.due)
            .min()
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
            assert_eq!(g.on_packet(seq, Via::Media, t0), Arrival::Normal);
        }
        g.poll_nack(t0, &mut out);
        assert_eq!(out, [12, 13]);
        g.poll_nack(t0 + 50 * MS, &mut out);
        assert!(out.is_empty(), "not before the retry interval");
        assert_eq!(
            g.on_packet(12, Via::Media, t0 + 60 * MS),
            Arrival::Repaired(60 * MS)
        );
        g.poll_nack(t0 + 100 * MS, &mut out);
        assert_eq!(out, [13], "only what is still missing");
        g.poll_nack(t0 + 200 * MS, &mut out);
        assert_eq!(out, [13]);
        g.poll_nack(t0 + 300 * MS, &mut out);
        assert!(out.is_empty(), "three tries, then it gives up");
        assert_eq!(g.take_gave_up(), 1);
        // A missing packet that comes before anyone asked for it is not a repair.
        g.on_packet(16, Via::Media, t0 + 300 * MS);
        assert_eq!(
            g.on_packet(15, Via::Media, t0 + 301 * MS),
            Arrival::Reordered { asked: false }
        );
        // Nor is a packet nobody was missing.
        assert_eq!(g.on_packet(15, Via::Media, t0 + 302 * MS), Arrival::Normal);
    }

    #[test]
    fn reordering_seen_on_the_media_stream_delays_the_next_first_nacks() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        let mut out = Vec::new();
        // No reordering seen yet: a gap is asked for at once.
        g.on_packet(10, Via::Original, t0);
        g.on_packet(12, Via::Original, t0);
        assert_eq!(g.next_first_request(), Some(t0));
        g.poll_nack(t0, &mut out);
        assert_eq!(out, [11]);
        // 11 comes 7 ms late on the media stream: reordered, and the NACK was needless.
        assert_eq!(
            g.on_packet(11, Via::Original, t0 + 7 * MS),
            Arrival::Reordered { asked: true }
        );
        // The next gap waits 7 ms for its first NACK ...
        let t1 = t0 + 100 * MS;
        g.on_packet(13, Via::Original, t1);
        g.on_packet(15, Via::Original, t1);
        assert_eq!(g.next_first_request(), Some(t1 + 7 * MS));
        g.poll_nack(t1 + 6 * MS, &mut out);
        assert!(out.is_empty(), "still inside the reorder window");
        // ... and a packet that comes within it costs no NACK at all.
        assert_eq!(
            g.on_packet(14, Via::Original, t1 + 5 * MS),
            Arrival::Reordered { asked: false }
        );
        g.poll_nack(t1 + 7 * MS, &mut out);
        assert!(out.is_empty());
        // A real loss is asked for once the window is over, and its repair on the RTX
        // stream is a repair, which teaches nothing about reordering.
        let t2 = t0 + 200 * MS;
        g.on_packet(16, Via::Original, t2);
        g.on_packet(18, Via::Original, t2);
        g.poll_nack(t2 + 6 * MS, &mut out);
        assert!(out.is_empty());
        g.poll_nack(t2 + 7 * MS, &mut out);
        assert_eq!(out, [17]);
        assert_eq!(
            g.on_packet(17, Via::Rtx, t2 + 57 * MS),
            Arrival::Repaired(50 * MS)
        );
        assert_eq!(g.wait(t2 + 57 * MS), 7 * MS);
        // An RTX copy of a packet nobody asked for repairs nothing.
        g.on_packet(20, Via::Original, t2 + 60 * MS);
        assert_eq!(g.on_packet(19, Via::Rtx, t2 + 61 * MS), Arrival::Normal);
    }

    #[test]
    fn the_reorder_wait_is_bounded_and_forgotten() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        let mut out = Vec::new();
        g.on_packet(1, Via::Original, t0);
        g.on_packet(3, Via::Original, t0);
        g.poll_nack(t0, &mut out);
        // 300 ms late: the wait grows only to its bound.
        g.on_packet(2, Via::Original, t0 + 300 * MS);
        assert_eq!(g.wait(t0 + 300 * MS), MAX_REORDER_WAIT);
        // Ten seconds without reordering: gaps are asked for at once again.
        let later = t0 + 300 * MS + REORDER_MEMORY;
        assert_eq!(g.wait(later), Duration::ZERO);
        g.on_packet(5, Via::Original, later);
        g.poll_nack(later, &mut out);
        assert_eq!(out, [4]);
        // Without an RTX stream a late packet that was asked for counts as repaired
        // (repairs come on the media stream too), and the wait stays at zero.
        let mut plain = NackGenerator::default();
        plain.on_packet(1, Via::Media, t0);
        plain.on_packet(3, Via::Media, t0);
        plain.poll_nack(t0, &mut out);
        assert_eq!(
            plain.on_packet(2, Via::Media, t0 + 3 * MS),
            Arrival::Repaired(3 * MS)
        );
        assert_eq!(plain.wait(t0 + 3 * MS), Duration::ZERO);
    }

    #[test]
    fn wraps_restarts_and_bounds() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        let mut out = Vec::new();
        g.on_packet(65534, Via::Media, t0);
        g.on_packet(1, Via::Media, t0);
        g.poll_nack(t0, &mut out);
        assert_eq!(out, [65535, 0]);
        // A jump past the gap bound is a restart: nothing to repair.
        g.on_packet(5000, Via::Media, t0);
        g.poll_nack(t0 + 200 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.take_gave_up(), 2);
        // Old requests age out.
        g.on_packet(5003, Via::Media, t0);
        g.poll_nack(t0 + 2000 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.take_gave_up(), 2);
        // Many small gaps never hold more than the bound.
        let mut seq = 6000u16;
        g.on_packet(seq, Via::Media, t0);
        for _ in 0..200 {
            seq = seq.wrapping_add(3);
            g.on_packet(seq, Via::Media, t0);
        }
        assert_eq!(g.missing.len(), MAX_MISSING);
    }
}
