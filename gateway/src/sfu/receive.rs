//! Reception statistics for one incoming stream, for the report blocks of the RRs roomgate
//! sends its publishers (RFC 3550 A.1, A.3, A.8).

use std::time::Instant;

use super::rtcp::ReportBlock;

/// Forward jumps below this are in-order progress, anything larger is a suspected restart
/// (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Backward distance still treated as reordering rather than a restart.
const MAX_MISORDER: u16 = 100;

#[derive(Debug, Default)]
pub(crate) struct ReceiveStats {
    started: bool,
    base_seq: u16,
    max_seq: u16,
    /// Wrap count shifted left 16, so `cycles + max_seq` is the extended sequence.
    cycles: u64,
    /// After a large jump, the seq that would confirm the sender restarted.
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, scaled by 16 as in A.8.
    jitter_q4: u32,
    last_transit: Option<u32>,
    /// Arrival clock origin; arrival times are measured in RTP units from here.
    epoch: Option<Instant>,
}

impl ReceiveStats {
    fn restart(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// Account one packet. `clock_rate` 0 (a codec without a rate) disables jitter.
    pub(crate) fn update(&mut self, seq: u16, rtp_ts: u32, clock_rate: u32, now: Instant) {
        if !self.started {
            self.started = true;
            self.restart(seq);
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // Two consecutive packets after a big jump mean the sender restarted its
                // sequence; a lone one is ignored as a stray.
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            }
            // Otherwise a duplicate or reordered packet: counted, max unchanged.
        }
        self.received += 1;
        self.update_jitter(rtp_ts, clock_rate, now);
    }

    fn update_jitter(&mut self, rtp_ts: u32, clock_rate: u32, now: Instant) {
        if clock_rate == 0 {
            return;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let nanos = now.saturating_duration_since(epoch).as_nanos();
        // Truncation to u32 is the RTP timestamp wrap, which the difference below absorbs.
        let arrival = (nanos * u128::from(clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs();
            let j =
                i64::from(self.jitter_q4) + i64::from(d) - ((i64::from(self.jitter_q4) + 8) >> 4);
            self.jitter_q4 = j.clamp(0, i64::from(u32::MAX)) as u32;
        }
        self.last_transit = Some(transit);
    }

    /// Packets arrived since the last report block was made.
    pub(crate) fn has_new(&self) -> bool {
        self.received > self.received_prior
    }

    /// Build a report block and start a new reporting interval. `last_sr` is the LSR
    /// value and arrival time of the sender's latest SR.
    pub(crate) fn report(
        &mut self,
        ssrc: u32,
        last_sr: Option<(u32, Instant)>,
        now: Instant,
    ) -> ReportBlock {
        let extended_max = self.cycles + u64::from(self.max_seq);
        let expected = extended_max + 1 - u64::from(self.base_seq);
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        let lost_interval = expected_interval as i64 - received_interval as i64;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match last_sr {
            Some((lsr, at)) => {
                let units = now.saturating_duration_since(at).as_nanos() * 65536 / 1_000_000_000;
                (lsr, u32::try_from(units).unwrap_or(u32::MAX))
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            // The wire field is 16 bits of cycles + 16 bits of seq; older cycles drop off.
            extended_highest_seq: extended_max as u32,
            jitter: self.jitter_q4 >> 4,
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loss_and_fraction_per_interval() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        // 10..=19 with 12 and 13 missing: expected 10, received 8.
        for seq in (10..20u16).filter(|s| *s != 12 && *s != 13) {
            s.update(seq, 0, 0, t0);
        }
        let b = s.report(1, None, t0);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(b.extended_highest_seq, 19);
        assert!(!s.has_new());
        // A clean interval: fraction 0, cumulative unchanged.
        for seq in 20..30u16 {
            s.update(seq, 0, 0, t0);
        }
        let b = s.report(1, None, t0);
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 2));
    }

    #[test]
    fn wrap_counts_a_cycle() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        for seq in [65534u16, 65535, 0, 1] {
            s.update(seq, 0, 0, t0);
        }
        let b = s.report(1, None, t0);
        assert_eq!(b.extended_highest_seq, 0x0001_0001);
        assert_eq!(b.cumulative_lost, 0);
    }

    #[test]
    fn duplicates_make_loss_negative_and_reorder_is_not_loss() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        for seq in [1u16, 3, 2, 3] {
            s.update(seq, 0, 0, t0);
        }
        let b = s.report(1, None, t0);
        assert_eq!(b.extended_highest_seq, 3);
        assert_eq!(b.cumulative_lost, -1);
        assert_eq!(b.fraction_lost, 0);
    }

    #[test]
    fn restart_after_two_consecutive_jumped_packets() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        s.update(100, 0, 0, t0);
        s.update(40000, 0, 0, t0); // stray, ignored
        s.update(40001, 0, 0, t0); // confirms restart at 40001
        s.update(40002, 0, 0, t0);
        let b = s.report(1, None, t0);
        assert_eq!(b.extended_highest_seq, 40002);
        assert_eq!(b.cumulative_lost, 0);
    }

    #[test]
    fn jitter_tracks_arrival_variation() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        // 90 kHz, frames every 33 ms but arriving alternately 0 and 10 ms late.
        for i in 0..200u32 {
            let late = if i % 2 == 0 { 0 } else { 10 };
            let at = t0 + Duration::from_millis(u64::from(i) * 33 + late);
            s.update(i as u16, i * 2970, 90_000, at);
        }
        let b = s.report(1, None, t0);
        // Every transit difference is 900 units (10 ms at 90 kHz); J converges to it.
        assert!((850..=900).contains(&b.jitter), "jitter {}", b.jitter);

        let mut steady = ReceiveStats::default();
        for i in 0..50u32 {
            steady.update(
                i as u16,
                i * 2970,
                90_000,
                t0 + Duration::from_millis(u64::from(i) * 33),
            );
        }
        assert_eq!(steady.report(1, None, t0).jitter, 0);
    }

    #[test]
    fn lsr_and_dlsr() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::default();
        s.update(1, 0, 0, t0);
        let b = s.report(1, Some((0xabcd_0123, t0)), t0 + Duration::from_millis(500));
        assert_eq!(b.last_sr, 0xabcd_0123);
        assert_eq!(b.delay_since_last_sr, 32768);
    }
}
