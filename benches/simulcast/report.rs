//! The `--simulcast` report, in the media bench's style.
use std::fmt::Write as _;

use super::{
    convergence::{Step, OBSERVE, WARMUP},
    load::{layer_pps, Variant, LAYER_NAMES, LAYER_SHARE},
    Run,
};
use crate::{
    busy_text, command_line, opt,
    schedule::{AUDIO_PPS, VIDEO_PAYLOAD},
    util::{cpu::cores, machine},
    Path, Settings,
};

pub const HEADING: &str = "## Simulcast forwarding (`cargo xtask bench media --simulcast`)";

fn kbit(bps: u64) -> String {
    if bps >= 1_000_000 {
        format!("{} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", bps / 1000)
    }
}

fn secs(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn report(s: &Settings, subs: usize, runs: &[Run], steps: &[Step], seeds: u64) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "{HEADING}\n");
    let _ = writeln!(
        r,
        "Machine: {}. Command: `{}` (release build, as root).\n",
        machine(),
        command_line()
    );
    let path = match s.path {
        Path::Veth => "across a veth pair (gateway in namespace `rgb-gw`)",
        Path::Loopback => "on loopback",
    };
    let layers: Vec<String> = (0..LAYER_NAMES.len())
        .map(|l| {
            format!(
                "{} {:.0} kbit/s ({:.0} packets/s)",
                LAYER_NAMES[l],
                s.kbps as f64 * LAYER_SHARE[l],
                layer_pps(Variant::Simulcast, s.kbps, l)
            )
        })
        .collect();
    let _ = writeln!(
        r,
        "Load: {} rooms x (1 publisher + {subs} subscribers), {} logic threads, {} s per window, \
         {path}, WHIP/WHEP + ICE + DTLS + SRTP, {}-byte video payloads paced evenly, a keyframe \
         per layer about every second, plus {AUDIO_PPS:.0} packets/s of audio. Single layer: \
         {} kbit/s of video ({:.0} packets/s). Simulcast: three layers bound by RID (one-byte \
         extension block with rtp-stream-id and a transport-wide sequence number), {}; the \
         subscribers of a room ask for low, mid and high in turn (`?layer=`), so both runs \
         forward the same packet rate, while the simulcast gateway receives {:.1}x the video \
         and sends the publishers transport-cc feedback every 50 ms. CPU is the gateway process's on-CPU time (schedstat of all its threads). Loss is against \
         what each viewer's layer and its room's audio sent.\n",
        s.rooms,
        s.threads,
        s.secs,
        VIDEO_PAYLOAD,
        s.kbps,
        layer_pps(Variant::Single, s.kbps, 0),
        layers.join(", "),
        LAYER_SHARE.iter().sum::<f64>(),
    );
    let _ = writeln!(
        r,
        "| mode | publishers send | sessions | sent by publishers pkt/s | forwarded pkt/s (gateway) | \
         received pkt/s (subscribers) | loss | gateway CPU (cores) | gateway CPU ns/fwd pkt | \
         logic threads ns/fwd pkt | ns/fwd pkt vs single layer | latency p50 / p99 | viewers on \
         requested layer | CPU busy |"
    );
    let _ = writeln!(
        r,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in runs {
        let single = runs
            .iter()
            .find(|x| x.mode == o.mode && x.variant == Variant::Single);
        let ratio = single.map_or("n/a".into(), |b| {
            format!(
                "{:.2}x",
                o.ns_per_forwarded() / b.ns_per_forwarded().max(1.0)
            )
        });
        let _ = writeln!(
            r,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2}% | {:.2} | {:.0} | {:.0} | {} | {:.0} / {:.0} µs | {} / {} | {} |",
            o.mode,
            o.variant.name(),
            o.sessions,
            o.per_sec(o.sent),
            o.per_sec(o.forwarded),
            o.per_sec(o.received),
            o.loss() * 100.0,
            cores(o.process_cpu_ns, o.wall),
            o.ns_per_forwarded(),
            o.logic_ns_per_forwarded(),
            ratio,
            o.p50_us,
            o.p99_us,
            o.on_layer.0,
            o.on_layer.1,
            busy_text(&o.busy),
        );
    }
    let _ = writeln!(r);
    for o in runs {
        let layers: Vec<String> = o
            .per_layer
            .iter()
            .enumerate()
            .map(|(l, (n, expected, got))| {
                let name = match o.variant {
                    Variant::Single => "single",
                    Variant::Simulcast => LAYER_NAMES[l],
                };
                format!(
                    "{name}: {n} viewers, {:.0} pkt/s each, loss {:.2}%",
                    *got as f64 / (*n).max(1) as f64 / o.wall.as_secs_f64(),
                    (1.0 - *got as f64 / (*expected).max(1) as f64) * 100.0
                )
            })
            .collect();
        let _ = writeln!(
            r,
            "- {}, {}: setup {:.2} s; sent {} packets ({} send drops), forwarded {}, expected {} \
             deliveries, received {}; {}; layer switches {}, unknown-RID drops {}, bad extension \
             blocks {}; SRTP unprotect failures: gateway {}, subscribers {}; gateway receive \
             drops {}; load generator {:.2} cores.",
            o.mode,
            o.variant.name(),
            o.setup.as_secs_f64(),
            o.sent,
            o.send_drops,
            o.forwarded,
            o.expected,
            o.received,
            layers.join("; "),
            opt(o.layer_switches),
            opt(o.unknown_rid),
            opt(o.bad_extension),
            o.gateway_unprotect_failures,
            o.decrypted_failures,
            opt(o.gateway_drops),
            cores(o.client_cpu_ns, o.wall),
        );
    }
    convergence(&mut r, steps, seeds);
    r
}

fn convergence(r: &mut String, steps: &[Step], seeds: u64) {
    let _ = writeln!(
        r,
        "\n### Estimator convergence after a capacity step\n\n`gateway::sfu::bwe::sim` on a \
         virtual clock: one sender pacing 1200-byte packets at the estimate through a drop-tail \
         bottleneck (200 ms buffer, 25 ms propagation each way), transport-cc style feedback \
         every 50 ms, probing on; {} s on the first capacity, then the step. Convergence: the \
         first time the estimate is within 10% of the new capacity (at most 110% after a step \
         down, at least 90% after a step up), watched for {} s. {seeds} seeds per row; on the \
         lossless link nothing is random, so every seed gives the same time.\n",
        WARMUP.as_secs(),
        OBSERVE.as_secs(),
    );
    let _ = writeln!(
        r,
        "| step | random loss | seeds | converged | p50 | max |\n|---|---:|---:|---:|---:|---:|"
    );
    for st in steps {
        let t = st.converged();
        let p50 = t
            .get(t.len().saturating_sub(1) / 2)
            .map_or("n/a".into(), |d| secs(*d));
        let max = t.last().map_or("n/a".into(), |d| secs(*d));
        let _ = writeln!(
            r,
            "| {} -> {} | {:.0}% | {} | {} | {p50} | {max} |",
            kbit(st.before_bps),
            kbit(st.after_bps),
            st.random_loss * 100.0,
            st.times.len(),
            t.len(),
        );
    }
}
