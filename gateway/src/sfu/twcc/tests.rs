//! Recorder and history with a virtual clock (plain `Instant`s advanced by hand), and the
//! whole loop: arrivals recorded by one side, feedback bytes on the wire, results out of
//! the other side.

use std::time::{Duration, Instant};

use super::feedback::{PacketStatus, TransportFeedback, MIN_PACKET_LEN};
use super::history::{self, TwccHistory};
use super::recorder::{
    TwccRecorder, EARLY_FEEDBACK_PACKETS, FEEDBACK_INTERVAL, MAX_FEEDBACK_LEN, WINDOW,
};
use crate::sfu::rtcp::{parse_compound, RtcpPacket};
use crate::sfu::transport_feedback::PacketResult;

const SSRC: u32 = 0x1234_5678;
const SENDER: u32 = 0x0bad_cafe;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// Every feedback packet in `bytes` (one poll's output, possibly several packets).
fn feedbacks(bytes: &[u8]) -> Vec<TransportFeedback<'_>> {
    parse_compound(bytes)
        .map(|p| match p {
            Ok(RtcpPacket::TransportFeedback(fb)) => fb,
            other => panic!("expected transport feedback, got {other:?}"),
        })
        .collect()
}

/// Drains everything due at `now`, one packet per call, as the logic thread would.
fn drain(rec: &mut TwccRecorder, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(1500);
        if !rec.poll_feedback(now, SENDER, &mut buf) {
            return out;
        }
        assert!(buf.len() <= MAX_FEEDBACK_LEN);
        out.push(buf);
    }
}

/// (seq, received?) over all packets of all feedback, in order.
fn reported(packets: &[Vec<u8>]) -> Vec<(u16, bool)> {
    packets
        .iter()
        .flat_map(|p| feedbacks(p))
        .flat_map(|fb| fb.packets().collect::<Vec<_>>())
        .map(|(seq, s)| (seq, matches!(s, PacketStatus::Received { .. })))
        .collect()
}

#[test]
fn twcc_recorder_reports_every_50_ms_while_packets_arrive() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    assert_eq!(rec.poll_timeout(), None);
    let mut buf = Vec::with_capacity(1500);
    assert!(
        !rec.poll_feedback(t0, SENDER, &mut buf),
        "nothing to report"
    );

    rec.on_packet(SSRC, 0, t0);
    // The first packet is reported at once; afterwards the cadence is 50 ms.
    assert_eq!(rec.poll_timeout(), Some(t0));
    let first = drain(&mut rec, t0);
    assert_eq!(reported(&first), vec![(0, true)]);
    assert_eq!(rec.poll_timeout(), None);

    let mut sent_at = Vec::new();
    let mut now = t0;
    for seq in 1..=30u16 {
        now = t0 + ms(u64::from(seq) * 10);
        rec.on_packet(SSRC, seq, now);
        let due = rec.poll_timeout().expect("pending");
        if due <= now {
            let packets = drain(&mut rec, now);
            assert_eq!(packets.len(), 1);
            sent_at.push(now);
        }
    }
    assert_eq!(
        sent_at,
        vec![
            t0 + ms(50),
            t0 + ms(100),
            t0 + ms(150),
            t0 + ms(200),
            t0 + ms(250),
            t0 + ms(300)
        ]
    );
    assert_eq!(rec.poll_timeout(), None, "all reported at 300 ms");
    assert!(!rec.poll_feedback(now + ms(500), SENDER, &mut buf));
    assert_eq!(rec.stats().feedback_sent, 7);
    assert_eq!(rec.stats().recorded, 31);

    // Header fields: sender and media SSRC, fb pkt count counting packets.
    rec.on_packet(SSRC + 1, 31, now + ms(60));
    let packets = drain(&mut rec, now + ms(60));
    let fb = feedbacks(&packets[0])[0];
    assert_eq!((fb.sender_ssrc(), fb.media_ssrc()), (SENDER, SSRC + 1));
    assert_eq!((fb.base_seq(), fb.fb_pkt_count()), (31, 7));
}

#[test]
fn twcc_recorder_reports_early_at_100_pending() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    rec.on_packet(SSRC, 0, t0);
    drain(&mut rec, t0);
    for i in 1..EARLY_FEEDBACK_PACKETS as u16 {
        rec.on_packet(SSRC, i, t0 + us(u64::from(i) * 50));
        assert_eq!(rec.poll_timeout(), Some(t0 + FEEDBACK_INTERVAL));
    }
    let at = t0 + ms(5);
    rec.on_packet(SSRC, EARLY_FEEDBACK_PACKETS as u16, at);
    assert_eq!(rec.poll_timeout(), Some(at), "100 pending: due now");
    let packets = drain(&mut rec, at);
    assert_eq!(reported(&packets).len(), EARLY_FEEDBACK_PACKETS);
    assert_eq!(rec.poll_timeout(), None);
}

#[test]
fn twcc_recorder_wraps_reorders_and_ignores_duplicates_and_late_packets() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    // Arrival order across the wrap: 65534, 0, 65535, 1, 1 (again), 3.
    let order = [65534u16, 0, 65535, 1, 1, 3];
    for (i, &seq) in order.iter().enumerate() {
        rec.on_packet(SSRC, seq, t0 + ms(i as u64));
    }
    assert_eq!(rec.stats().duplicates, 1);
    let packets = drain(&mut rec, t0 + ms(10));
    assert_eq!(packets.len(), 1);
    let fb = feedbacks(&packets[0])[0];
    assert_eq!(fb.base_seq(), 65534);
    let got: Vec<_> = fb.packets().collect();
    let seqs: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![65534, 65535, 0, 1, 2, 3]);
    // 65535 arrived 2 ms after the base packet, 0 arrived 1 ms before 65535: negative.
    assert_eq!(got[1].1, PacketStatus::Received { delta_ticks: 8 });
    assert_eq!(got[2].1, PacketStatus::Received { delta_ticks: -4 });
    assert_eq!(got[4].1, PacketStatus::NotReceived);

    // Seq 2 turns up after the feedback that called it lost: too late to matter.
    rec.on_packet(SSRC, 2, t0 + ms(11));
    rec.on_packet(SSRC, 65535, t0 + ms(11));
    assert_eq!(rec.stats().late, 2);
    assert_eq!(rec.poll_timeout(), None);
    // The next packet is reported from where the last feedback stopped.
    rec.on_packet(SSRC, 4, t0 + ms(70));
    let packets = drain(&mut rec, t0 + ms(70));
    assert_eq!(reported(&packets), vec![(4, true)]);
}

#[test]
fn twcc_recorder_reports_loss_runs_and_gaps_compactly() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    let mut now = t0;
    let mut expect = Vec::new();
    // 10 received, 500 lost, 3 received, 3000 lost, 1 received.
    for seq in (0..10u16).chain(510..513).chain([3513]) {
        now += ms(1);
        rec.on_packet(SSRC, seq, now);
    }
    for seq in 0..=3513u16 {
        expect.push((seq, seq < 10 || (510..513).contains(&seq) || seq == 3513));
    }
    let packets = drain(&mut rec, now);
    assert_eq!(packets.len(), 1, "runs of losses cost a chunk each");
    assert!(packets[0].len() <= 48, "{} bytes", packets[0].len());
    assert_eq!(reported(&packets), expect);
}

#[test]
fn twcc_recorder_survives_a_jump_beyond_its_window() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    for seq in 0..50u16 {
        rec.on_packet(SSRC, seq, t0 + us(u64::from(seq) * 100));
    }
    // The sender's sequence jumps by 20,000: what was pending cannot be kept.
    rec.on_packet(SSRC, 20_049, t0 + ms(6));
    assert_eq!(rec.stats().overrun, 50);
    let packets = drain(&mut rec, t0 + ms(6));
    let got = reported(&packets);
    assert_eq!(got.len(), WINDOW);
    assert_eq!(got.last(), Some(&(20_049, true)));
    assert_eq!(got.iter().filter(|(_, r)| *r).count(), 1);
    // Recording goes on normally afterwards.
    rec.on_packet(SSRC, 20_050, t0 + ms(60));
    assert_eq!(
        reported(&drain(&mut rec, t0 + ms(60))),
        vec![(20_050, true)]
    );
}

#[test]
fn twcc_recorder_splits_on_deltas_beyond_16_bits_and_on_size() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    rec.on_packet(SSRC, 0, t0);
    rec.on_packet(SSRC, 1, t0 + ms(100));
    // 9 s later: more than a 16-bit delta (8.19 s) can say.
    rec.on_packet(SSRC, 2, t0 + ms(9100));
    let packets = drain(&mut rec, t0 + ms(9100));
    assert_eq!(packets.len(), 2);
    let first = feedbacks(&packets[0])[0];
    let first: Vec<_> = first.packets().collect();
    assert_eq!(
        first,
        vec![
            (0, PacketStatus::Received { delta_ticks: 0 }),
            // 100 ms = 400 ticks: a large delta.
            (1, PacketStatus::Received { delta_ticks: 400 }),
        ]
    );
    assert_eq!(reported(&packets[1..]), vec![(2, true)]);

    // 3000 pending with large deltas (reordering) do not fit 1100 bytes: several packets,
    // each seq exactly once.
    let t1 = t0 + ms(20_000);
    let mut rec = TwccRecorder::new();
    let mut arrivals: Vec<(u16, Instant)> = (0..3000u16)
        .map(|seq| {
            let jitter = if seq % 2 == 0 { 70_000 } else { 0 };
            (seq, t1 + us(u64::from(seq) * 10 + jitter))
        })
        .collect();
    arrivals.sort_by_key(|&(_, at)| at);
    for (seq, at) in arrivals {
        rec.on_packet(SSRC, seq, at);
    }
    let packets = drain(&mut rec, t1 + ms(200));
    assert!(packets.len() >= 3, "{} packets", packets.len());
    let got = reported(&packets);
    assert_eq!(got.len(), 3000);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &(s, r))| s == i as u16 && r));
    assert_eq!(rec.poll_timeout(), None);
}

#[test]
fn twcc_recorder_keeps_pending_when_the_buffer_is_too_small() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    rec.on_packet(SSRC, 7, t0);
    let mut small = Vec::with_capacity(MIN_PACKET_LEN - 1);
    assert!(!rec.poll_feedback(t0, SENDER, &mut small));
    assert!(small.is_empty());
    assert_eq!(reported(&drain(&mut rec, t0)), vec![(7, true)]);
}

#[test]
fn twcc_recorder_does_not_allocate_once_warm() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    let mut buf = Vec::with_capacity(1500);
    let before = crate::sfu::alloc_count::allocations();
    let mut now = t0;
    for i in 0..20_000u32 {
        now = t0 + us(u64::from(i) * 700);
        if i % 17 != 0 {
            rec.on_packet(SSRC, i as u16, now);
        }
        buf.clear();
        rec.poll_feedback(now, SENDER, &mut buf);
    }
    assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
    assert!(rec.stats().feedback_sent > 250, "{:?}", rec.stats());
    assert!(now > t0);
}

#[test]
fn twcc_history_hands_out_wrapping_seqs_and_maps_feedback() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    let mut rec = TwccRecorder::new();
    // Start near the wrap so the feedback crosses it.
    for _ in 0..65530 {
        hist.next_seq();
    }
    let mut sent = Vec::new();
    for i in 0..12u64 {
        let seq = hist.next_seq();
        let at = t0 + ms(i * 5);
        hist.on_sent(seq, 1000 + i as usize, at);
        sent.push((seq, at));
    }
    assert_eq!(sent[5].0, 65535);
    assert_eq!(sent[6].0, 0);
    // Seq 65533 and 1 are lost; the rest arrive 30 ms after sending.
    for &(seq, at) in &sent {
        if seq != 65533 && seq != 1 {
            rec.on_packet(SSRC, seq, at + ms(30));
        }
    }
    let packets = drain(&mut rec, t0 + ms(100));
    let mut results = Vec::new();
    for p in &packets {
        for fb in feedbacks(p) {
            hist.on_feedback(&fb, &mut results);
        }
    }
    assert_eq!(results.len(), 12);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.seq, 65530 + i as u64, "unwrapped across 65535");
        assert_eq!(r.size, 1000 + i);
        assert_eq!(r.sent, sent[i].1);
        assert_eq!(r.received.is_none(), i == 3 || i == 7, "{r:?}");
    }
    // Equal one-way delay: equal spacing on the remote clock.
    let rx: Vec<Duration> = results.iter().filter_map(|r| r.received).collect();
    for w in rx.windows(2) {
        assert!(w[1] > w[0]);
    }
    assert_eq!(hist.stats().reported, 12);
    assert_eq!(hist.stats().unknown, 0);

    // The same feedback again adds nothing.
    let mut again = Vec::new();
    for p in &packets {
        for fb in feedbacks(p) {
            hist.on_feedback(&fb, &mut again);
        }
    }
    assert!(again.is_empty());
    assert_eq!(hist.stats().duplicates, 12);
}

/// Hand-built feedback for `history` tests: base seq and statuses.
fn feedback_bytes(base_seq: u16, reference_time: u32, statuses: &[Option<i16>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    let header = super::feedback::FeedbackHeader {
        sender_ssrc: 1,
        media_ssrc: 2,
        base_seq,
        reference_time,
        fb_pkt_count: 0,
    };
    super::feedback::write_feedback(&mut out, usize::MAX, &header, statuses.iter().copied())
        .expect("fits");
    out
}

fn apply(hist: &mut TwccHistory, bytes: &[u8]) -> Vec<PacketResult> {
    let mut out = Vec::new();
    for fb in feedbacks(bytes) {
        hist.on_feedback(&fb, &mut out);
    }
    out
}

#[test]
fn twcc_history_counts_unknown_and_too_old_seqs() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    // Feedback before anything was sent names only unknown packets.
    assert!(apply(&mut hist, &feedback_bytes(0, 0, &[Some(1), None])).is_empty());
    assert_eq!(hist.stats().unknown, 2);

    for i in 0..(history::MAX_CAPACITY as u64 + 10) {
        let seq = hist.next_seq();
        hist.on_sent(seq, 100, t0 + us(i * 100));
    }
    // Seqs 0..10 were pushed out of the ring; 10 and 11 are still there; the last seq
    // sent is CAPACITY + 9, so CAPACITY + 10 was never sent.
    let r = apply(
        &mut hist,
        &feedback_bytes(8, 5, &[Some(1), Some(2), Some(3), None]),
    );
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 11]);
    assert_eq!(hist.stats().unknown, 4);
    let top = history::MAX_CAPACITY as u16 + 9;
    let r = apply(&mut hist, &feedback_bytes(top, 5, &[Some(1), Some(2)]));
    assert_eq!(r.len(), 1);
    assert_eq!(hist.stats().unknown, 5);
}

/// Sends `n` packets of 1200 bytes `gap` apart from `start`; returns the last one's seq.
fn send_paced(hist: &mut TwccHistory, start: Instant, gap: Duration, n: u32) -> u16 {
    let mut last = 0;
    for i in 0..n {
        last = hist.next_seq();
        hist.on_sent(last, 1200, start + gap * i);
    }
    last
}

#[test]
fn twcc_history_grows_to_hold_two_seconds_at_the_subscribers_rate() {
    let t0 = Instant::now();
    // 100 packets/s (about 1 Mbit/s) for 10 s: the first ring holds 2.5 s of it.
    let mut slow = TwccHistory::new();
    let last = send_paced(&mut slow, t0, ms(10), 1000);
    assert_eq!(slow.capacity(), 256);
    // Feedback for the send 2.5 s before the last still resolves, and its time with it.
    let r = apply(&mut slow, &feedback_bytes(last - 250, 0, &[Some(4)]));
    assert_eq!(r.len(), 1, "{:?}", slow.stats());
    assert_eq!(r[0].sent, t0 + ms(10) * 749);

    // 1,000 packets/s: the ring doubles until it holds history::KEEP, then stops.
    let mut fast = TwccHistory::new();
    let last = send_paced(&mut fast, t0, ms(1), 6000);
    assert_eq!(fast.capacity(), 2048);
    let kept = history::KEEP.as_millis() as u16;
    let r = apply(&mut fast, &feedback_bytes(last - kept + 1, 0, &[Some(4)]));
    assert_eq!(r.len(), 1, "{:?}", fast.stats());
    assert_eq!(r[0].sent, t0 + ms(1) * u32::from(6000 - kept));

    // Far faster than any subscriber: the cap holds, and the oldest sends give way.
    let mut flood = TwccHistory::new();
    let last = send_paced(&mut flood, t0, us(100), 10_000);
    assert_eq!(flood.capacity(), history::MAX_CAPACITY);
    let cap = history::MAX_CAPACITY as u16;
    let r = apply(
        &mut flood,
        &feedback_bytes(last - cap, 0, &[Some(4), Some(4)]),
    );
    assert_eq!(
        r.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![u64::from(last - cap + 1)]
    );
    assert_eq!(flood.stats().unknown, 1);
}

#[test]
fn twcc_history_send_times_survive_the_wrap_of_their_32_bit_microseconds() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    send_paced(&mut hist, t0, ms(20), 1);
    // 72 minutes later, past 2^32 µs after the epoch.
    let later = t0 + Duration::from_secs(72 * 60);
    let last = send_paced(&mut hist, later, ms(20), 5);
    let r = apply(
        &mut hist,
        &feedback_bytes(last - 4, 0, &[Some(4), Some(4), Some(4), Some(4), Some(4)]),
    );
    let sent: Vec<Instant> = r.iter().map(|r| r.sent).collect();
    assert_eq!(sent, (0..5).map(|i| later + ms(20) * i).collect::<Vec<_>>());
}

#[test]
fn twcc_history_lost_then_received_reports_both_once() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    for i in 0..4u64 {
        let seq = hist.next_seq();
        hist.on_sent(seq, 500, t0 + ms(i));
    }
    let r = apply(
        &mut hist,
        &feedback_bytes(0, 100, &[Some(4), None, Some(4)]),
    );
    assert_eq!(r.len(), 3);
    assert_eq!(r[1].received, None);
    // A later feedback says seq 1 did arrive (and repeats seq 2): 1 is reported again,
    // now with its arrival; 2 is not.
    let r2 = apply(
        &mut hist,
        &feedback_bytes(1, 100, &[Some(10), Some(4), None]),
    );
    assert_eq!(r2.len(), 2, "{r2:?}");
    assert_eq!((r2[0].seq, r2[0].received.is_some()), (1, true));
    assert_eq!((r2[1].seq, r2[1].received.is_none()), (3, true));
    // Lost again after received: ignored.
    let r3 = apply(
        &mut hist,
        &feedback_bytes(0, 100, &[None, None, None, None]),
    );
    assert!(r3.is_empty());

    // Reference time: 64 ms per unit, deltas 250 µs on top; arrivals of one feedback
    // relative to each other are exact.
    let a = r[0].received.expect("received");
    let c = r[2].received.expect("received");
    assert_eq!(c - a, us(1000));
    assert_eq!(r2[0].received.expect("received") - a, us(1500));
}

#[test]
fn twcc_history_unwraps_the_reference_time() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    for i in 0..3u64 {
        let seq = hist.next_seq();
        hist.on_sent(seq, 500, t0 + ms(i));
    }
    let top = super::feedback::REFERENCE_TIME_MASK;
    let a = apply(&mut hist, &feedback_bytes(0, top, &[Some(0)]));
    // The next reference time wraps to 1: two units (128 ms) later, not 12 days earlier.
    let b = apply(&mut hist, &feedback_bytes(1, 1, &[Some(0)]));
    // And a reordered older feedback stays before it.
    let c = apply(&mut hist, &feedback_bytes(2, top - 1, &[Some(0)]));
    let (a, b, c) = (a[0].received, b[0].received, c[0].received);
    assert_eq!(b.zip(a).map(|(b, a)| b - a), Some(ms(128)));
    assert_eq!(a.zip(c).map(|(a, c)| a - c), Some(ms(64)));
}

/// The loop end to end: sends stamped by the history, arrivals with jitter, reordering
/// and loss recorded by the recorder, feedback bytes parsed and fed to the history. The
/// arrival times come back within one 250 µs tick (relative to the first one, since
/// the remote clock's epoch is its own).
#[test]
fn twcc_end_to_end_reproduces_arrival_times() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    let mut rec = TwccRecorder::new();
    for _ in 0..65_000 {
        hist.next_seq();
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // (seq, arrival) of every packet that arrives, in arrival order.
    let mut arrivals: Vec<(u16, Instant)> = Vec::new();
    let mut sends = Vec::new();
    for i in 0..3000u64 {
        let seq = hist.next_seq();
        let at = t0 + us(i * 3_000);
        sends.push((seq, at));
        if random() % 20 == 0 {
            continue; // lost
        }
        // Base delay 40 ms, jitter up to 30 ms, now and then a 1.5 s stall.
        let mut delay = 40_000 + random() % 30_000;
        if i % 700 == 350 {
            delay += 1_500_000;
        }
        arrivals.push((seq, at + us(delay)));
    }
    arrivals.sort_by_key(|&(_, at)| at);

    // Sends, arrivals and feedback in time order: the history holds only the last few
    // seconds of sends, as it would for a real subscriber.
    let mut events: Vec<(Instant, bool, u16)> = sends
        .iter()
        .map(|&(seq, at)| (at, true, seq))
        .chain(arrivals.iter().map(|&(seq, at)| (at, false, seq)))
        .collect();
    events.sort_by_key(|&(at, _, _)| at);
    let mut results = Vec::new();
    let mut now = t0;
    for (at, is_send, seq) in events {
        // Feedback goes out on the recorder's schedule, before this event.
        while let Some(due) = rec.poll_timeout().filter(|&d| d <= at) {
            now = now.max(due);
            for packet in drain(&mut rec, now) {
                for fb in feedbacks(&packet) {
                    hist.on_feedback(&fb, &mut results);
                }
            }
        }
        if is_send {
            hist.on_sent(seq, 1200, at);
        } else {
            rec.on_packet(SSRC, seq, at);
        }
    }
    for packet in drain(&mut rec, now + ms(10_000)) {
        for fb in feedbacks(&packet) {
            hist.on_feedback(&fb, &mut results);
        }
    }

    assert_eq!(hist.stats().unknown, 0);
    let truth: std::collections::HashMap<u64, Instant> = arrivals
        .iter()
        .map(|&(seq, at)| {
            let unwrapped = 65_000 + u64::from(seq.wrapping_sub(65_000));
            (unwrapped, at)
        })
        .collect();
    let received: Vec<&PacketResult> = results.iter().filter(|r| r.received.is_some()).collect();
    // Packets overtaken by a stall arrive after feedback called them lost; the recorder
    // drops them as late, so a few received ones are reported lost instead.
    let late = rec.stats().late as usize;
    assert_eq!(received.len() + late, arrivals.len());
    let first = received[0];
    let first_true = truth[&first.seq];
    for r in &received {
        let true_rel = truth[&r.seq].duration_since(first_true).as_micros() as i64;
        let got_rel =
            (r.received.expect("received") - first.received.expect("received")).as_micros() as i64;
        assert!(
            (got_rel - true_rel).abs() <= 250,
            "seq {}: {got_rel} µs vs {true_rel} µs",
            r.seq
        );
        assert_eq!(r.size, 1200);
    }
    // Sent times and seqs: every send reported once, unwrapped past 65535.
    let mut seqs: Vec<u64> = results.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), results.len(), "each packet reported once");
    // One contiguous range: from the first packet that arrived to the last one, with
    // only losses before or after it left out.
    assert_eq!(
        seqs.last().map(|l| l - seqs[0] + 1),
        Some(seqs.len() as u64)
    );
    assert!(seqs.len() > 2900, "{} of {}", seqs.len(), sends.len());
    for r in &results {
        let (_, at) = sends[(r.seq - 65_000) as usize];
        assert_eq!(r.sent, at);
    }
    assert!(seqs.last().copied().unwrap_or(0) > 65_535);
}

#[test]
fn twcc_recorder_first_report_covers_packets_that_overtook_the_first_sent() {
    let t0 = Instant::now();
    let mut rec = TwccRecorder::new();
    rec.on_packet(SSRC, 12, t0);
    rec.on_packet(SSRC, 10, t0 + ms(1));
    let packets = drain(&mut rec, t0 + ms(1));
    assert_eq!(
        reported(&packets),
        vec![(10, true), (11, false), (12, true)]
    );
    let fb = feedbacks(&packets[0])[0];
    let deltas: Vec<_> = fb.packets().map(|(_, s)| s).collect();
    assert_eq!(deltas[2], PacketStatus::Received { delta_ticks: -4 });
    assert_eq!(rec.stats().late, 0);
}

#[test]
fn twcc_history_does_not_allocate_once_warm() {
    let t0 = Instant::now();
    let mut hist = TwccHistory::new();
    let mut rec = TwccRecorder::new();
    let mut results = Vec::with_capacity(4096);
    let mut wire = Vec::with_capacity(1500);
    // The ring grows while it fills its first two seconds; warm means past them.
    let mut before = None;
    for i in 0..20_000u64 {
        if i == 6_000 {
            before = Some(crate::sfu::alloc_count::allocations());
        }
        let now = t0 + us(i * 500);
        let seq = hist.next_seq();
        hist.on_sent(seq, 1200, now);
        rec.on_packet(SSRC, seq, now + ms(20));
        wire.clear();
        if rec.poll_feedback(now + ms(20), SENDER, &mut wire) {
            results.clear();
            for packet in parse_compound(&wire).flatten() {
                if let RtcpPacket::TransportFeedback(fb) = packet {
                    hist.on_feedback(&fb, &mut results);
                }
            }
            assert!(!results.is_empty());
        }
    }
    assert_eq!(
        crate::sfu::alloc_count::allocations() - before.unwrap_or(0),
        0
    );
    assert_eq!(hist.capacity(), history::MAX_CAPACITY);
    // All but the last interval's packets, which are still pending.
    let reported = hist.stats().reported;
    assert!((19_900..20_000).contains(&reported), "{reported}");
}
