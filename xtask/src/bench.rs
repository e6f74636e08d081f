//! `cargo xtask bench steering|metrics|media`: run a benchmark (release build, eBPF object
//! embedded) and record its table in BENCHMARKS.md together with the command.
//! `cargo xtask bench media --rooms 8 --subs 50 --secs 20` passes its flags to the bench.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build;

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("steering") | None => run_bench(
            "steering",
            "Steering",
            "target/bench-steering.md",
            true,
            &[],
        ),
        Some("metrics") => run_bench(
            "metrics",
            "Metrics scrape cost",
            "target/bench-metrics.md",
            false,
            &[],
        ),
        Some("media") => {
            // The Janus baseline runs when Debian's janus is installed; without it (no root,
            // no apt) the bench reports that row as not run.
            if let Err(e) = crate::setup::apt_install(&["janus"]) {
                eprintln!("xtask bench media: no Janus baseline: {e:#}");
            }
            run_bench(
                "media",
                "Media forwarding",
                "target/bench-media.md",
                false,
                &args[1..],
            )
        }
        Some(other) => bail!("unknown benchmark {other:?}; available: steering, metrics, media"),
    }
}

/// Run `benches/<bench>.rs` in release with the eBPF object embedded, then replace the
/// section starting with `## <heading>` in BENCHMARKS.md by the bench's report.
/// `bench_args` are passed to the bench binary after `--`.
fn run_bench(
    bench: &str,
    heading: &str,
    report_path: &str,
    needs_floor: bool,
    bench_args: &[String],
) -> Result<()> {
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let floor = if needs_floor {
        Some(build::build_ebpf_stats_floor()?)
    } else {
        None
    };
    let root = build::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .args(["bench", "-p", "gateway", "--bench", bench]);
    if !bench_args.is_empty() {
        cmd.arg("--").args(bench_args);
    }
    if let Some(floor) = &floor {
        cmd.env("ROOMGATE_EBPF_FLOOR_OBJECT", floor);
    }
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("{bench} benchmark failed ({status})");
    }
    let report =
        std::fs::read_to_string(root.join(report_path)).context("reading the bench report")?;
    let path = root.join("BENCHMARKS.md");
    let existing =
        std::fs::read_to_string(&path).unwrap_or_else(|_| "# roomgate benchmarks\n\n".into());
    // Replace this bench's section, keep the others.
    let start = existing.find(&format!("## {heading}"));
    let updated = match start {
        Some(s) => {
            let end = existing[s + 1..]
                .find("\n## ")
                .map_or(existing.len(), |e| s + 1 + e + 1);
            format!("{}{}{}", &existing[..s], section(&report), &existing[end..])
        }
        None => format!("{}\n\n{}", existing.trim_end(), section(&report)),
    };
    std::fs::write(&path, updated).context("writing BENCHMARKS.md")?;
    println!("xtask: updated {}", path.display());
    Ok(())
}

fn section(report: &str) -> String {
    format!("{}\nRun as root (eBPF steering; the steering bench also enables `kernel.bpf_stats_enabled` for the run and restores it).\n\n", report.trim_end())
}
