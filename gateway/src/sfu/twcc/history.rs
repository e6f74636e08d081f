//! Send side of transport-wide congestion control: roomgate stamps every packet to a
//! subscriber with its own transport-wide sequence number, remembers when it sent each
//! one and how big it was, and turns the subscriber's feedback into [`PacketResult`]s
//! for the bandwidth estimator.
//!
//! One history per subscriber transport. Entries live in a ring sized by time, as the
//! retransmission buffer is: it starts small and doubles whenever it would overwrite a
//! send younger than [`KEEP`], up to [`MAX_CAPACITY`]. The transport-wide sequence
//! numbers cover everything sent to the viewer: 1 Mbit/s of video with audio is about 150
//! packets/s, 512 entries of 12 bytes, 6 KiB, where a fixed ring for the fastest viewer cost
//! every viewer 96 KiB. The ring does not shrink. Recording a send allocates only when the
//! ring grows, at most four times per subscriber.

use std::time::{Duration, Instant};

use super::feedback::{PacketStatus, TransportFeedback, DELTA_TICK_US, REFERENCE_TICK_US};
use crate::sfu::transport_feedback::PacketResult;

/// Sends remembered at most: 2 s at 2,000 packets/s (around 20 Mbit/s of full-size
/// packets), beyond any subscriber's rate. A power of two, as every ring size is, so a
/// slot is the low bits of the sequence number.
pub const MAX_CAPACITY: usize = 4096;
/// A new history's ring: 2.5 s at 100 packets/s.
const INITIAL_CAPACITY: usize = 256;
/// Feedback arrives within a few hundred ms; a send younger than this is not overwritten
/// while the ring may still grow.
pub const KEEP: Duration = Duration::from_secs(2);

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
    /// The slot holds no send.
    Empty,
    No,
    Lost,
    Received,
}

/// One send, in 12 bytes: a ring holds thousands.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Low 32 bits of the unwrapped sequence number: the ring is far smaller than 2^32,
    /// so they tell the send in a slot from an earlier lap's.
    seq: u32,
    /// µs after the history's epoch, modulo 2^32 (71 minutes): feedback names sends of
    /// the last few seconds, whose full time is recovered from the newest send's.
    sent_us: u32,
    size: u16,
    reported: Reported,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 12);

const EMPTY: Entry = Entry {
    seq: 0,
    sent_us: 0,
    size: 0,
    reported: Reported::Empty,
};

/// Transport-wide sequence numbers handed out and the sends they stamped.
#[derive(Debug)]
pub struct TwccHistory {
    entries: Vec<Entry>,
    epoch: Option<Instant>,
    /// Next unwrapped seq [`Self::next_seq`] hands out.
    next: i64,
    /// Highest unwrapped seq recorded as sent.
    newest: Option<i64>,
    /// Time of the latest send, µs after the epoch.
    latest_sent_us: u64,
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
            entries: vec![EMPTY; INITIAL_CAPACITY],
            epoch: None,
            next: 0,
            newest: None,
            latest_sent_us: 0,
            reference: None,
            stats: HistoryStats::default(),
        }
    }

    pub fn stats(&self) -> HistoryStats {
        self.stats
    }

    /// Entries the ring holds now (it grows with the subscriber's packet rate).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes the ring takes.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    fn slot(&self, seq: u32) -> usize {
        seq as usize & (self.entries.len() - 1)
    }

    /// The full send time of `entry`, which is in the ring.
    fn sent_us(&self, entry: &Entry) -> u64 {
        let age = (self.latest_sent_us as u32).wrapping_sub(entry.sent_us);
        self.latest_sent_us.saturating_sub(u64::from(age))
    }

    /// Double the ring (up to the cap), moving every send to its slot in the new size.
    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).min(MAX_CAPACITY);
        let mut entries = vec![EMPTY; capacity];
        // Doubling a power-of-two ring sends slot k to k or k + n: no two sends meet.
        for e in self
            .entries
            .iter()
            .filter(|e| e.reported != Reported::Empty)
        {
            entries[e.seq as usize & (capacity - 1)] = *e;
        }
        self.entries = entries;
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
        let now_us =
            u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        self.latest_sent_us = self.latest_sent_us.max(now_us);
        self.newest = Some(self.newest.map_or(seq, |n| n.max(seq)));
        let seq = seq as u32;
        let keep_us = KEEP.as_micros() as u64;
        while self.entries.len() < MAX_CAPACITY {
            let e = &self.entries[self.slot(seq)];
            let young = e.reported != Reported::Empty
                && e.seq != seq
                && now_us.saturating_sub(self.sent_us(e)) < keep_us;
            if !young {
                break;
            }
            self.grow();
        }
        let slot = self.slot(seq);
        self.entries[slot] = Entry {
            seq,
            sent_us: now_us as u32,
            size: u16::try_from(size).unwrap_or(u16::MAX),
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
        // Saturating: a peer's feedback can walk the unwrapped reference time by half a wrap
        // per packet, without bound.
        let mut arrival_us = self
            .unwrap_reference(feedback.reference_time())
            .saturating_mul(REFERENCE_TICK_US);
        let base = self.unwrap(feedback.base_seq());
        for (this, (_, status)) in (base..).zip(feedback.packets()) {
            let received = match status {
                PacketStatus::NotReceived => None,
                PacketStatus::Received { delta_ticks } => {
                    arrival_us = arrival_us.saturating_add(i64::from(delta_ticks) * DELTA_TICK_US);
                    Some(Duration::from_micros(
                        u64::try_from(arrival_us).unwrap_or(0),
                    ))
                }
                PacketStatus::ReceivedUntimed => continue,
            };
            if this < 0 {
                self.stats.unknown += 1;
                continue;
            }
            let slot = self.slot(this as u32);
            let entry = self.entries[slot];
            if entry.reported == Reported::Empty || entry.seq != this as u32 {
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
            self.entries[slot].reported = reported;
            self.stats.reported += 1;
            out.push(PacketResult {
                seq: this as u64,
                size: usize::from(entry.size),
                sent: epoch
                    .checked_add(Duration::from_micros(self.sent_us(&entry)))
                    .unwrap_or(epoch),
                received,
            });
        }
    }
}
