//! `cargo bench -p gateway --bench janus -- --rooms 1 --subs 5 --secs 5 [--kbps 600]`:
//! the Janus baseline of the media benchmark on its own (needs root and Debian's `janus`).
//! Prints Janus's CPU per forwarded packet and the loss.
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/webrtc.rs"]
mod webrtc;

mod janus;
#[path = "util/schedule.rs"]
mod schedule;
mod util;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag}: not a number: {v:?}"))
            })
    };
    // `cargo bench` passes --bench to every harness = false target.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !support::require_root() {
        return;
    }
    let (rooms, subs) = (num("--rooms", 1) as usize, num("--subs", 5) as usize);
    let (secs, kbps) = (num("--secs", 5), num("--kbps", 600));
    let o = match janus::run(rooms, subs, secs, kbps) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("janus baseline failed: {e}");
            std::process::exit(1);
        }
    };
    let b = o.baseline();
    println!(
        "{} baseline: {} rooms x (1 publisher + {} subscribers), {kbps} kbit/s, {secs} s",
        o.name, o.rooms, o.subs
    );
    println!(
        "  setup {:.1} s, {} Janus threads, SRTP {}",
        o.setup.as_secs_f64(),
        o.threads,
        o.srtp_profile
    );
    println!(
        "  sent {} (send drops {}), copies expected {}, received {}, loss {:.3}%",
        o.sent,
        o.send_drops,
        o.copies_expected,
        o.copies_received,
        b.loss() * 100.0
    );
    println!(
        "  Janus CPU {:.3} s over {:.2} s wall ({:.2} cores): {:.2} us per forwarded packet",
        o.cpu_ns as f64 / 1e9,
        o.wall.as_secs_f64(),
        b.cores(),
        b.ns_per_copy() / 1000.0
    );
    let busy: Vec<String> = o
        .busy
        .iter()
        .map(|b| format!("{:.0}%", b * 100.0))
        .collect();
    println!(
        "  load generator {:.2} cores, ksoftirqd {:.2} cores, CPU busy {}",
        o.client_cpu_ns as f64 / o.wall.as_nanos().max(1) as f64,
        o.softirq_ns as f64 / o.wall.as_nanos().max(1) as f64,
        busy.join(" / ")
    );
    println!(
        "  added latency p50 {:.0} us, p99 {:.0} us; SRTP failures {}; Janus checks answered {}",
        o.p50_us, o.p99_us, o.srtp_failures, o.checks_answered
    );
}
