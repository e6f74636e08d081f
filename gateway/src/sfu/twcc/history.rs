//! Send side of transport-wide congestion control: roomgate stamps every packet to a
//! subscriber with its own transport-wide sequence number, remembers when it sent each
//! one and how big it was, and turns the subscriber's feedback into [`PacketResult`]s
//! for the bandwidth estimator.
//!
//! One history per subscriber transport. Entries live in a fixed ring, so memory is
//! bounded and recording a send allocates nothing.

use std::time::{Duration, Instant};

use super::feedback::{PacketStatus, TransportFeedback, DELTA_TICK_US, REFERENCE_TICK_US};
use crate::sfu::transport_feedback::PacketResult;

/// Sends remembered. Feedback arrives within a few hundred ms; this holds about 2 s at
/// 2,000 packets/s (around 20 Mbit/s of full-size packets), beyond any subscriber's rate.
pub const CAPACITY: usize = 4096;

/// Reference-time unwrapping starts one wrap period (2^24 × 64 ms) above zero, so the
/// reconstructed arrival times of a session never go negative.
const REFERENCE_WRAP: i64 = 1 << 24;

/// Counters for export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Feedback packets handled.
    pub feedback: u64,
    /// Results produced.
    pub reported: u64,
    /// Statuses for sequence numbers the history does not hold (never sent, or pushed
    /// out of the ring).
    pub unknown: u64,
    /// Statuses for packets already reported the same way (repeated feedback).
    pub duplicates: u64,
    /// Feedback without receive deltas (libwebrtc's timestamp-less form), not used.
    pub untimed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    No,
    Lost,
    Received,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Unwrapped sequence number; -1 marks an empty slot.
    seq: i64,
    /// µs after the history's epoch.
    sent_us: u64,
    size: u32,
    reported: Reported,
}

const EMPTY: Entry = Entry {
    seq: -1,
    sent_us: 0,
    size: 0,
    reported: Reported::No,
};

/// Transport-wide sequence numbers handed out and the sends they stamped.
#[derive(Debug)]
pub struct TwccHistory {
    entries: Box<[Entry]>,
    epoch: Option<Instant>,
    /// Next unwrapped seq [`Self::next_seq`] hands out.
    next: i64,
    /// Highest unwrapped seq recorded as sent.
    newest: Option<i64>,
    /// Last reference time seen, unwrapped (64 ms units, offset by one wrap).
    reference: Option<i64>,
    stats: HistoryStats,
}

impl Default for TwccHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl TwccHistory {
    pub fn new() -> Self {
        Self {
            entries: vec![EMPTY; CAPACITY].into_boxed_slice(),
            epoch: None,
            next: 0,
            newest: None,
            reference: None,
            stats: HistoryStats::default(),
        }
    }

    pub fn stats(&self) -> HistoryStats {
        self.stats
    }

    fn slot(seq: i64) -> usize {
        seq.rem_euclid(CAPACITY as i64) as usize
    }

    /// Nearest unwrapping against the newest seq known, so feedback for recent sends
    /// and sends slightly out of order both land on the right cycle.
    fn unwrap(&self, seq: u16) -> i64 {
        let reference = self.newest.unwrap_or(self.next - 1).max(self.next - 1);
        if reference < 0 {
            return i64::from(seq);
        }
        reference + i64::from(seq.wrapping_sub(reference as u16) as i16)
    }

    /// The transport-wide sequence number for the next packet to this subscriber.
    pub fn next_seq(&mut self) -> u16 {
        let seq = self.next as u16;
        self.next += 1;
        seq
    }

    /// Records that the packet stamped `seq` left at `now` with `size` bytes on the wire.
    pub fn on_sent(&mut self, seq: u16, size: usize, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let seq = self.unwrap(seq);
        if seq < 0 {
            return;
        }
        self.newest = Some(self.newest.map_or(seq, |n| n.max(seq)));
        self.entries[Self::slot(seq)] = Entry {
            seq,
            sent_us: now.saturating_duration_since(epoch).as_micros() as u64,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            reported: Reported::No,
        };
    }

    /// Unwraps a 24-bit reference time against the previous one (nearest, either way).
    fn unwrap_reference(&mut self, raw: u32) -> i64 {
        let raw = i64::from(raw);
        let unwrapped = match self.reference {
            None => raw + REFERENCE_WRAP,
            Some(last) => {
                let diff = (raw - last).rem_euclid(REFERENCE_WRAP);
                let diff = if diff >= REFERENCE_WRAP / 2 {
                    diff - REFERENCE_WRAP
                } else {
                    diff
                };
                last + diff
            }
        };
        self.reference = Some(unwrapped);
        unwrapped
    }

    /// Appends a [`PacketResult`] to `out` for every packet `feedback` reports that this
    /// history sent: arrival time on the subscriber's clock when received, `None` when
    /// lost. A packet is reported received at most once, and lost only while it has not
    /// been reported at all, so repeated feedback adds nothing.
    pub fn on_feedback(&mut self, feedback: &TransportFeedback<'_>, out: &mut Vec<PacketResult>) {
        self.stats.feedback += 1;
        if !feedback.has_timestamps() {
            self.stats.untimed += 1;
            return;
        }
        let Some(epoch) = self.epoch else {
            self.stats.unknown += u64::from(feedback.status_count());
            return;
        };
        let mut arrival_us = self.unwrap_reference(feedback.reference_time()) * REFERENCE_TICK_US;
        let base = self.unwrap(feedback.base_seq());
        for (this, (_, status)) in (base..).zip(feedback.packets()) {
            let received = match status {
                PacketStatus::NotReceived => None,
                PacketStatus::Received { delta_ticks } => {
                    arrival_us += i64::from(delta_ticks) * DELTA_TICK_US;
                    Some(Duration::from_micros(
                        u64::try_from(arrival_us).unwrap_or(0),
                    ))
                }
                PacketStatus::ReceivedUntimed => continue,
            };
            let entry = &mut self.entries[Self::slot(this)];
            if this < 0 || entry.seq != this {
                self.stats.unknown += 1;
                continue;
            }
            let reported = if received.is_some() {
                Reported::Received
            } else {
                Reported::Lost
            };
            if entry.reported == Reported::Received
                || (reported == Reported::Lost && entry.reported == Reported::Lost)
            {
                self.stats.duplicates += 1;
                continue;
            }
            entry.reported = reported;
            self.stats.reported += 1;
            out.push(PacketResult {
                seq: this as u64,
                size: entry.size as usize,
                sent: epoch
                    .checked_add(Duration::from_micros(entry.sent_us))
                    .unwrap_or(epoch),
                received,
            });
        }
    }
}
