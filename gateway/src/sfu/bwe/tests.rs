//! The estimator against the synthetic bottleneck in [`super::sim`], on a virtual clock,
//! plus garbage input and the no-allocation promise.

use std::time::{Duration, Instant};

use super::sim::{converge_time, LinkConfig, Sim};
use super::{BweConfig, Estimator, ProbeOutcome, ProbeRejection, RateControl};
use crate::sfu::transport_feedback::PacketResult;

const MBIT: u64 = 1_000_000;
const KBIT: u64 = 1_000;

fn config(initial_bps: u64) -> BweConfig {
    BweConfig {
        initial_bps,
        min_bps: 50 * KBIT,
        max_bps: 10 * MBIT,
    }
}

fn link(capacity_bps: u64) -> LinkConfig {
    LinkConfig {
        capacity_bps,
        propagation: Duration::from_millis(25),
        buffer: Duration::from_millis(200),
        random_loss: 0.0,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Estimates in `[from, to)` of the trace.
fn window(sim: &Sim, from: Duration, to: Duration) -> impl Iterator<Item = u64> + '_ {
    sim.trace
        .iter()
        .filter(move |(t, _)| *t >= from && *t < to)
        .map(|&(_, e)| e)
}

fn print_trace(sim: &Sim, every: Duration) {
    let mut next = Duration::ZERO;
    for &(t, e) in &sim.trace {
        if t >= next {
            eprintln!("{:6.2}s {:8} kbit/s", t.as_secs_f64(), e / KBIT);
            next += every;
        }
    }
}

/// Warm up on 2 Mbit/s from a 300 kbit/s start.
fn converged_on_2mbit(seed: u64) -> Sim {
    let mut sim = Sim::new(config(300 * KBIT), link(2 * MBIT), seed);
    sim.run_for(secs(20.0));
    sim
}

/// Bound for (a): the policy's first probe goes to 3x the start, then 2x after each
/// success; each step costs a 20 ms probe plus the 50 ms feedback interval and 25 ms
/// return path, so 300 k -> 900 k -> 1.8 M -> capped at what the link delivers takes
/// well under 1 s; we allow 2 s. Afterwards the estimate saw-tooths between ~1.6 and
/// ~1.9 Mbit/s: every 5 s the periodic probe's queue triggers a 15 % cut.
#[test]
fn a_converges_up_to_capacity_with_probing() {
    let sim = converged_on_2mbit(1);
    print_trace(&sim, secs(0.5));
    eprintln!("probe outcomes: {:?}", sim.outcomes);
    let t = converge_time(&sim.trace, Duration::ZERO, 2 * MBIT).expect("never reached 90 %");
    eprintln!("a: 300 kbit/s -> 2 Mbit/s link: within 10 % after {t:?}");
    assert!(t < secs(2.0), "took {t:?}");
    for e in window(&sim, secs(10.0), secs(20.0)) {
        assert!(
            e as f64 >= 0.8 * 2e6 && e as f64 <= 1.2 * 2e6,
            "estimate {e} left ±20 % of 2 Mbit/s"
        );
    }
}

/// Bound for (b): detection needs the first post-drop packets to arrive and be reported
/// (queueing a few groups, a 50 ms feedback interval, 25 ms return path: ~0.3 s); each
/// overuse then cuts to 85 % of the delivered rate, whose 500 ms window must flush the
/// pre-drop 2 Mbit/s arrivals before a cut lands under 300 kbit/s. That is ~1 s; 2 s
/// leaves room for the 200 ms queue the overshoot fills.
#[test]
fn b_step_drop_falls_below_new_capacity_within_two_seconds() {
    let mut sim = converged_on_2mbit(2);
    let step = sim.now();
    sim.set_capacity(300 * KBIT);
    sim.run_for(secs(10.0));
    print_trace(&sim, secs(0.5));
    let below = sim
        .trace
        .iter()
        .find(|(t, e)| *t >= step && *e < 300 * KBIT)
        .map(|(t, _)| *t - step)
        .expect("never fell below 300 kbit/s");
    eprintln!(
        "b: 2 Mbit/s -> 300 kbit/s: below 300 kbit/s after {below:?}, converge_time {:?}",
        converge_time(&sim.trace, step, 300 * KBIT)
    );
    assert!(below <= secs(2.0), "took {below:?}");
    // And it stays near the new capacity instead of oscillating back up.
    let late: Vec<u64> = window(&sim, step + secs(4.0), step + secs(10.0)).collect();
    let mean = late.iter().sum::<u64>() as f64 / late.len() as f64;
    assert!(mean < 1.3 * 300e3 && mean > 0.4 * 300e3, "mean {mean}");
}

/// Bound for (c): the policy probes 5 s after the last probe (the one that found the
/// drop, or the periodic one), then doubles on each success: 300 k -> 600 k -> 1.2 M
/// -> 2.4 M capped by what the link delivers, each step one probe plus a feedback
/// round trip. So at most ~5 s + 3 x 0.3 s; we allow 7 s.
#[test]
fn c_recovery_is_found_by_probing() {
    let mut sim = converged_on_2mbit(3);
    sim.set_capacity(300 * KBIT);
    sim.run_for(secs(10.0));
    let step = sim.now();
    sim.set_capacity(2 * MBIT);
    sim.run_for(secs(15.0));
    print_trace(&sim, secs(0.5));
    let t = converge_time(&sim.trace, step, 2 * MBIT).expect("never recovered");
    eprintln!("c: 300 kbit/s -> 2 Mbit/s: within 10 % after {t:?}");
    assert!(t <= secs(7.0), "took {t:?}");
}

#[test]
fn c_without_probing_recovery_is_slow_so_probing_is_what_matters() {
    let mut sim = converged_on_2mbit(3);
    sim.set_capacity(300 * KBIT);
    sim.run_for(secs(10.0));
    let step = sim.now();
    sim.probing = false;
    sim.set_capacity(2 * MBIT);
    sim.run_for(secs(7.0));
    let t = converge_time(&sim.trace, step, 2 * MBIT);
    eprintln!("c': without probes, within 10 % after {t:?}");
    assert!(t.is_none(), "AIMD alone recovered in {t:?}");
}

#[test]
fn d_random_loss_alone_decreases_only_moderately() {
    let cfg = BweConfig {
        initial_bps: MBIT,
        min_bps: 100 * KBIT,
        max_bps: 10 * MBIT,
    };
    let mut l = link(20 * MBIT);
    l.random_loss = 0.05;
    let mut sim = Sim::new(cfg, l, 4);
    sim.probing = false;
    sim.run_for(secs(30.0));
    print_trace(&sim, secs(1.0));
    let min = sim.trace.iter().map(|&(_, e)| e).min().unwrap_or(0);
    let last = sim.trace.last().map_or(0, |&(_, e)| e);
    eprintln!("d: 5 % random loss from 1 Mbit/s: min {min}, after 30 s {last}");
    assert!(min >= cfg.min_bps);
    assert!(min as f64 >= 0.6e6, "fell to {min}");
    let lost = sim.lost as f64 / sim.sent as f64;
    assert!((0.04..0.06).contains(&lost), "the link lost {lost}");
}

#[test]
fn d_heavy_random_loss_never_goes_below_min() {
    let cfg = BweConfig {
        initial_bps: MBIT,
        min_bps: 100 * KBIT,
        max_bps: 10 * MBIT,
    };
    let mut l = link(20 * MBIT);
    l.random_loss = 0.5;
    let mut sim = Sim::new(cfg, l, 5);
    sim.run_for(secs(20.0));
    let min = sim.trace.iter().map(|&(_, e)| e).min().unwrap_or(0);
    assert_eq!(
        min, cfg.min_bps,
        "50 % loss should drive it to the floor, not below"
    );
}

#[test]
fn e_app_limited_sending_does_not_inflate_without_probes() {
    let mut sim = Sim::new(config(300 * KBIT), link(5 * MBIT), 6);
    sim.app_limit_bps = Some(200 * KBIT);
    sim.probing = false;
    sim.run_for(secs(30.0));
    let max = sim.trace.iter().map(|&(_, e)| e).max().unwrap_or(0);
    eprintln!("e: app-limited at 200 kbit/s: max estimate {max}");
    // The cap is 1.5 x acked + 10 k = 310 k for exactly 200 k; the 500 ms acked window
    // holds only ~10 packets of 1200 bytes, so it reads up to ~10 % high.
    assert!(max <= 340 * KBIT, "inflated to {max}");

    // The same sender with probes does learn the link: the cap is what held it.
    sim.probing = true;
    sim.run_for(secs(10.0));
    let last = sim.trace.last().map_or(0, |&(_, e)| e);
    eprintln!("e': with probes: {last}, {:?}", sim.outcomes);
    assert!(last >= 2 * MBIT, "probing found only {last}");
}

fn result(seq: u64, sent: Instant, received: Option<Duration>) -> PacketResult {
    PacketResult {
        seq,
        size: 1200,
        sent,
        received,
    }
}

fn assert_sane(est: &Estimator, cfg: BweConfig) {
    let e = est.estimate_bps();
    assert!(e >= cfg.min_bps && e <= cfg.max_bps, "{e}");
    let s = est.state();
    assert!(s.delay_based_bps >= cfg.min_bps && s.loss_based_bps >= cfg.min_bps);
}

#[test]
fn f_garbage_feedback_does_not_panic_and_stays_in_range() {
    let cfg = config(500 * KBIT);
    let mut est = Estimator::new(cfg);
    let t0 = Instant::now();
    est.handle_feedback(&[], t0);
    assert_sane(&est, cfg);
    // All lost.
    let lost: Vec<_> = (0..100).map(|i| result(i, t0, None)).collect();
    for k in 0..20 {
        est.handle_feedback(&lost, t0 + Duration::from_millis(50 * k));
        assert_sane(&est, cfg);
    }
    // Non-monotonic arrivals and send times, zero and huge sizes, absurd gaps.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut batch = Vec::new();
    for round in 0..200u64 {
        batch.clear();
        for i in 0..30 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let arrival = match x % 5 {
                0 => None,
                1 => Some(Duration::from_millis(x % 1000)),
                2 => Some(Duration::from_secs(u64::MAX / 2)),
                3 => Some(Duration::ZERO),
                _ => Some(Duration::from_micros(round * 50_000 + i * 3_000)),
            };
            let sent = t0 + Duration::from_millis((x >> 8) % 100_000);
            let size = match x % 7 {
                0 => 0,
                1 => usize::MAX,
                _ => 1200,
            };
            batch.push(PacketResult {
                seq: x >> 20,
                size,
                sent,
                received: arrival,
            });
        }
        if round == 50 {
            est.start_probe(0, 5 * MBIT);
        }
        if round == 60 {
            est.end_probe(u64::MAX);
        }
        est.handle_feedback(&batch, t0 + Duration::from_millis(50 * round));
        assert_sane(&est, cfg);
        let _ = est.poll_probe_request(t0 + Duration::from_millis(50 * round));
        let _ = est.poll_probe_result();
    }
    // A `now` earlier than earlier calls.
    est.handle_feedback(&lost, t0);
    assert_sane(&est, cfg);
}

/// Synthetic steady feedback: 1200-byte packets every `gap`, arriving with the same
/// spacing plus `extra` per packet of growing delay.
fn steady(
    batch: &mut Vec<PacketResult>,
    seq: &mut u64,
    t0: Instant,
    gap: Duration,
    extra: Duration,
) {
    batch.clear();
    for _ in 0..10 {
        let n = u32::try_from(*seq).unwrap_or(u32::MAX);
        batch.push(result(
            *seq,
            t0 + gap * n,
            Some(Duration::from_secs(100) + (gap + extra) * n),
        ));
        *seq += 1;
    }
}

#[test]
fn warm_estimator_does_not_allocate_per_feedback() {
    let mut est = Estimator::new(config(MBIT));
    let t0 = Instant::now();
    let gap = Duration::from_millis(5);
    let mut batch = Vec::with_capacity(16);
    let mut seq = 0;
    for k in 0..100u32 {
        steady(&mut batch, &mut seq, t0, gap, Duration::ZERO);
        est.handle_feedback(&batch, t0 + gap * (10 * k + 10));
    }
    est.start_probe(seq, 3 * MBIT);
    let before = crate::sfu::alloc_count::allocations();
    for k in 100..200u32 {
        steady(&mut batch, &mut seq, t0, gap, Duration::ZERO);
        if k == 110 {
            est.end_probe(seq - 1);
        }
        est.handle_feedback(&batch, t0 + gap * (10 * k + 10));
        let _ = est.poll_probe_result();
        let _ = est.poll_probe_request(t0 + gap * (10 * k + 10));
        let _ = est.state();
    }
    assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
}

#[test]
fn delivery_above_the_estimate_on_a_stable_path_lifts_it_within_a_second() {
    // A viewer pinned to a layer above its 300 kbit/s start: 1.92 Mbit/s arrives with
    // constant delay. Increase alone (8 % a second) would take 25 s to get there.
    let mut est = Estimator::new(config(300 * KBIT));
    let t0 = Instant::now();
    let gap = Duration::from_millis(5);
    let mut batch = Vec::new();
    let mut seq = 0;
    for k in 0..20u32 {
        steady(&mut batch, &mut seq, t0, gap, Duration::ZERO);
        est.handle_feedback(&batch, t0 + gap * (10 * k + 10));
    }
    assert!(est.estimate_bps() >= 1_800 * KBIT, "{:?}", est.state());
}

#[test]
fn growing_delay_is_overuse_and_cuts_below_the_acked_rate() {
    let mut est = Estimator::new(config(2 * MBIT));
    let t0 = Instant::now();
    let gap = Duration::from_millis(5); // 1.92 Mbit/s sent
    let mut batch = Vec::new();
    let mut seq = 0;
    for k in 0..40u32 {
        steady(&mut batch, &mut seq, t0, gap, Duration::ZERO);
        est.handle_feedback(&batch, t0 + gap * (10 * k + 10));
    }
    let mut decreased = false;
    for k in 40..60u32 {
        // Arrivals spaced 7 ms: the path carries ~1.37 Mbit/s and the queue grows.
        steady(&mut batch, &mut seq, t0, gap, Duration::from_millis(2));
        est.handle_feedback(&batch, t0 + gap * (10 * k + 10));
        decreased |= est.state().control == RateControl::Hold;
    }
    assert!(decreased, "{:?}", est.state());
    assert!(est.estimate_bps() < 1_400 * KBIT, "{:?}", est.state());
}

#[test]
fn probe_with_heavy_loss_or_overuse_is_rejected_and_clean_probe_raises() {
    let t0 = Instant::now();
    let gap = Duration::from_millis(2); // 4.8 Mbit/s probe
    let run = |lossy: bool| {
        let mut est = Estimator::new(config(500 * KBIT));
        est.start_probe(0, 4 * MBIT);
        let batch: Vec<_> = (0..20u32)
            .map(|i| {
                let rx = Some(Duration::from_secs(1) + gap * i);
                result(
                    u64::from(i),
                    t0 + gap * i,
                    if lossy && i % 4 == 0 { None } else { rx },
                )
            })
            .collect();
        est.end_probe(19);
        est.handle_feedback(&batch, t0 + Duration::from_millis(100));
        (est.poll_probe_result(), est.estimate_bps())
    };
    let (outcome, estimate) = run(true);
    assert!(
        matches!(
            outcome,
            Some(ProbeOutcome::Rejected {
                reason: ProbeRejection::Loss(_),
                ..
            })
        ),
        "{outcome:?}"
    );
    assert!(
        estimate <= 500 * KBIT,
        "not raised (the loss may cut it): {estimate}"
    );
    let (outcome, estimate) = run(false);
    assert!(
        matches!(outcome, Some(ProbeOutcome::Success { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        estimate,
        4 * MBIT,
        "raised to the target, not to the 4.8 Mbit/s delivered"
    );
}

#[test]
fn step_convergence_for_the_benchmark_measures_both_directions() {
    let down = super::sim::step_convergence(2 * MBIT, 300 * KBIT, secs(10.0), secs(10.0), 7);
    let up = super::sim::step_convergence(300 * KBIT, 2 * MBIT, secs(10.0), secs(15.0), 7);
    eprintln!("step_convergence: 2M->300k {down:?}, 300k->2M {up:?}");
    assert!(down.is_some_and(|d| d < secs(2.0)), "{down:?}");
    assert!(up.is_some_and(|d| d < secs(7.0)), "{up:?}");
}

#[test]
fn saturating_probe_corrects_an_estimate_above_capacity() {
    // App-limited at 150 kbit/s, the 1 Mbit/s start is never tested by media on an
    // 800 kbit/s link; the first probe (3 Mbit/s) saturates it and says so.
    let cfg = BweConfig {
        initial_bps: MBIT,
        min_bps: 50 * KBIT,
        max_bps: 5 * MBIT,
    };
    let mut sim = Sim::new(cfg, link(800 * KBIT), 8);
    sim.app_limit_bps = Some(150 * KBIT);
    sim.run_for(secs(10.0));
    let max_late = window(&sim, secs(2.0), secs(10.0))
        .max()
        .unwrap_or(u64::MAX);
    eprintln!(
        "saturating probe: max after 2 s {max_late}, outcomes {:?}",
        sim.outcomes
    );
    assert!(max_late <= 800 * KBIT, "{max_late}");
    assert!(max_late >= 600 * KBIT, "{max_late}");
}
