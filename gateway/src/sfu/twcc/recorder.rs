//! Receive side of transport-wide congestion control: roomgate records when each packet
//! of a publisher's transport-wide sequence arrived and reports it back in feedback
//! packets, so the publisher's send-side estimator (Chrome's GCC) can see the path's
//! queueing delay and loss.
//!
//! One recorder per publisher transport. Arrival times live in a fixed ring indexed by
//! the unwrapped sequence number, so memory is bounded and recording allocates nothing.

use std::time::{Duration, Instant};

use super::feedback::{
    write_feedback, FeedbackHeader, WriteError, DELTA_TICK_US, MIN_PACKET_LEN, REFERENCE_TICK_US,
};

/// Sequence numbers a recorder can hold between two feedback packets. Feedback goes out
/// after [`EARLY_FEEDBACK_PACKETS`] packets at the latest, so only a jump in the sender's
/// sequence (thousands of packets lost at once) can overrun it.
pub const WINDOW: usize = 4096;
/// Feedback cadence while packets arrive: what libwebrtc's receiver uses at low rates, and
/// often enough for the sender's delay-based estimator.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
/// Pending packets that make feedback due before the interval is over, so one feedback
/// packet stays small at high packet rates.
pub const EARLY_FEEDBACK_PACKETS: usize = 100;
/// Largest feedback packet written: it must fit one datagram with SRTCP's trailer under
/// a conservative path MTU. More pending packets are split over several packets.
pub const MAX_FEEDBACK_LEN: usize = 1100;

/// Counters for export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Packets recorded for the next feedback.
    pub recorded: u64,
    /// Second copies of a sequence number still pending.
    pub duplicates: u64,
    /// Packets whose sequence number was already covered by sent feedback (or, before
    /// the first feedback, lies a whole window below the highest).
    pub late: u64,
    /// Recorded packets pushed out of the window by a jump before any feedback named them.
    pub overrun: u64,
    /// Feedback packets written.
    pub feedback_sent: u64,
}

/// Records arrivals of one transport-wide sequence and writes feedback for them.
#[derive(Debug)]
pub struct TwccRecorder {
    /// Arrival in µs after `epoch`, plus one; 0 marks "not received". Slot of unwrapped
    /// seq `s` is `s mod WINDOW`; only seqs in `start..=highest` may be non-zero.
    arrivals: Box<[u64]>,
    epoch: Option<Instant>,
    /// First seq not yet covered by feedback.
    start: i64,
    /// Highest seq received; `None` until the first packet.
    highest: Option<i64>,
    /// Received seqs in `start..=highest`.
    pending: usize,
    first_pending_at: Option<Instant>,
    /// Set when feedback is due before the interval (many pending, or a split left some).
    due_early: Option<Instant>,
    last_feedback: Option<Instant>,
    media_ssrc: u32,
    fb_pkt_count: u8,
    stats: RecorderStats,
}

impl Default for TwccRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl TwccRecorder {
    pub fn new() -> Self {
        Self {
            arrivals: vec![0; WINDOW].into_boxed_slice(),
            epoch: None,
            start: 0,
            highest: None,
            pending: 0,
            first_pending_at: None,
            due_early: None,
            last_feedback: None,
            media_ssrc: 0,
            fb_pkt_count: 0,
            stats: RecorderStats::default(),
        }
    }

    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    fn slot(seq: i64) -> usize {
        seq.rem_euclid(WINDOW as i64) as usize
    }

    /// Records that the packet with transport-wide sequence number `seq` (from the
    /// `transport-wide-cc` header extension) arrived at `now`. `media_ssrc` is echoed in
    /// the feedback header, as libwebrtc does; receivers of feedback ignore it.
    pub fn on_packet(&mut self, media_ssrc: u32, seq: u16, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let arrival = now.saturating_duration_since(epoch).as_micros() as u64 + 1;
        self.media_ssrc = media_ssrc;
        let seq = match self.highest {
            None => {
                let seq = i64::from(seq);
                self.start = seq;
                self.highest = Some(seq);
                seq
            }
            Some(highest) => {
                // Nearest unwrapping: within half the sequence space either way.
                let seq = highest + i64::from(seq.wrapping_sub(highest as u16) as i16);
                if seq < self.start {
                    // Until the first feedback, the window may still grow backwards: the
                    // first packet to arrive need not be the first one sent.
                    if self.stats.feedback_sent > 0 || highest - seq >= WINDOW as i64 {
                        self.stats.late += 1;
                        return;
                    }
                    self.start = seq;
                }
                if seq > highest {
                    self.highest = Some(seq);
                    self.slide_to(seq);
                }
                seq
            }
        };
        let slot = &mut self.arrivals[Self::slot(seq)];
        if *slot != 0 {
            self.stats.duplicates += 1;
            return;
        }
        *slot = arrival;
        self.stats.recorded += 1;
        self.pending += 1;
        self.first_pending_at.get_or_insert(now);
        if self.pending >= EARLY_FEEDBACK_PACKETS {
            self.due_early.get_or_insert(now);
        }
    }

    /// Keeps `highest` inside the window, giving up the oldest unreported arrivals if a
    /// jump would otherwise alias them.
    fn slide_to(&mut self, highest: i64) {
        let min_start = highest - (WINDOW as i64 - 1);
        if self.start >= min_start {
            return;
        }
        // Everything recorded lies in `start..start + WINDOW`, so at most WINDOW slots are
        // visited however far the sequence jumped.
        let end = min_start.min(self.start + WINDOW as i64);
        for seq in self.start..end {
            let slot = &mut self.arrivals[Self::slot(seq)];
            if *slot != 0 {
                *slot = 0;
                self.pending -= 1;
                self.stats.overrun += 1;
            }
        }
        self.start = min_start;
        if self.pending == 0 {
            self.first_pending_at = None;
            self.due_early = None;
        }
    }

    /// When [`Self::poll_feedback`] next has something to write; `None` while nothing is
    /// pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        let first = self.first_pending_at?;
        let periodic = match self.last_feedback {
            Some(last) => first.max(last + FEEDBACK_INTERVAL),
            None => first,
        };
        Some(match self.due_early {
            Some(early) => early.min(periodic),
            None => periodic,
        })
    }

    /// Appends one feedback packet to `out` if one is due at `now`. It is at most
    /// [`MAX_FEEDBACK_LEN`] bytes and never larger than `out`'s spare capacity, so `out`
    /// is not reallocated; with less than [`MIN_PACKET_LEN`] spare nothing is written.
    /// When the pending packets do not fit one packet (size, or a receive delta beyond
    /// ±8 s), the rest is due at once: call again until it returns false.
    pub fn poll_feedback(&mut self, now: Instant, sender_ssrc: u32, out: &mut Vec<u8>) -> bool {
        match self.poll_timeout() {
            Some(due) if due <= now => {}
            _ => return false,
        }
        let Some(highest) = self.highest else {
            return false;
        };
        if out.capacity() - out.len() < MIN_PACKET_LEN {
            return false;
        }
        // The reference time is the first received arrival rounded down to 64 ms, so the
        // first delta is a small one.
        let Some(first_arrival) = (self.start..=highest)
            .map(|seq| self.arrivals[Self::slot(seq)])
            .find(|&a| a != 0)
        else {
            return false;
        };
        let first_us = (first_arrival - 1) as i64;
        let reference = first_us.div_euclid(REFERENCE_TICK_US);
        let header = FeedbackHeader {
            sender_ssrc,
            media_ssrc: self.media_ssrc,
            base_seq: self.start as u16,
            reference_time: reference as u32,
            fb_pkt_count: self.fb_pkt_count,
        };
        let statuses = Statuses {
            arrivals: &self.arrivals,
            seq: self.start,
            end: highest + 1,
            last_us: reference * REFERENCE_TICK_US,
        };
        let written = match write_feedback(out, MAX_FEEDBACK_LEN, &header, statuses) {
            Ok(n) => i64::from(n),
            // Neither can happen with a received packet pending and MIN_PACKET_LEN spare.
            Err(WriteError::Empty | WriteError::NoRoom { .. }) => return false,
        };
        for seq in self.start..self.start + written {
            let slot = &mut self.arrivals[Self::slot(seq)];
            if *slot != 0 {
                *slot = 0;
                self.pending -= 1;
            }
        }
        self.start += written;
        self.fb_pkt_count = self.fb_pkt_count.wrapping_add(1);
        self.stats.feedback_sent += 1;
        self.last_feedback = Some(now);
        if self.pending == 0 {
            self.first_pending_at = None;
            self.due_early = None;
        } else {
            self.first_pending_at = Some(now);
            self.due_early = Some(now);
        }
        true
    }
}

/// The pending range as the writer wants it: `None` for a gap, else the delta to the
/// previous received packet in 250 µs ticks. Deltas are rounded to the nearest tick and
/// measured from the previous *rounded* time, so errors do not accumulate. Ends early
/// at a delta that does not fit 16 bits; that packet starts the next feedback.
#[derive(Debug, Clone)]
struct Statuses<'r> {
    arrivals: &'r [u64],
    seq: i64,
    end: i64,
    last_us: i64,
}

impl Iterator for Statuses<'_> {
    type Item = Option<i16>;

    fn next(&mut self) -> Option<Option<i16>> {
        if self.seq >= self.end {
            return None;
        }
        let arrival = *self.arrivals.get(TwccRecorder::slot(self.seq))?;
        if arrival == 0 {
            self.seq += 1;
            return Some(None);
        }
        let at = (arrival - 1) as i64;
        let ticks = (at - self.last_us + DELTA_TICK_US / 2).div_euclid(DELTA_TICK_US);
        let ticks = i16::try_from(ticks).ok()?;
        self.last_us += i64::from(ticks) * DELTA_TICK_US;
        self.seq += 1;
        Some(Some(ticks))
    }
}
