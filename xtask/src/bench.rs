//! `cargo xtask bench steering`: run the steering benchmark (release build, eBPF object
//! embedded) and record its table in BENCHMARKS.md together with the command.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build;

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("steering") | None => steering(),
        Some(other) => bail!("unknown benchmark {other:?}; available: steering"),
    }
}

fn steering() -> Result<()> {
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let floor = build::build_ebpf_stats_floor()?;
    let root = build::workspace_root();
    let status = Command::new("cargo")
        .current_dir(&root)
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .env("ROOMGATE_EBPF_FLOOR_OBJECT", &floor)
        .args(["bench", "-p", "gateway", "--bench", "steering"])
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("steering benchmark failed ({status})");
    }
    let report = std::fs::read_to_string(root.join("target/bench-steering.md"))
        .context("reading the bench report")?;
    let path = root.join("BENCHMARKS.md");
    let existing =
        std::fs::read_to_string(&path).unwrap_or_else(|_| "# roomgate benchmarks\n\n".into());
    // Replace the steering section, keep any others.
    let start = existing.find("## Steering");
    let updated = match start {
        Some(s) => {
            let end = existing[s + 1..]
                .find("\n## ")
                .map_or(existing.len(), |e| s + 1 + e + 1);
            format!("{}{}{}", &existing[..s], section(&report), &existing[end..])
        }
        None => format!("{}{}", existing, section(&report)),
    };
    std::fs::write(&path, updated).context("writing BENCHMARKS.md")?;
    println!("xtask: updated {}", path.display());
    Ok(())
}

fn section(report: &str) -> String {
    format!(
        "{}\nCommand: `cargo xtask bench steering` (as root; it enables `kernel.bpf_stats_enabled` for the run and restores it).\n\n",
        report.trim_end()
    )
}
