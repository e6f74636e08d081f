//! `cargo xtask soak --minutes N`: the churn soak of tests/soak.rs (WHIP/WHEP peers that
//! join and leave with media, then counters and resources reconciled) for N minutes in
//! each steering mode, both modes at once. The tests' report lines, with the command and
//! the machine, go to stdout and target/soak-report.md.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::build;

pub fn soak(args: &[String]) -> Result<()> {
    let minutes: u64 = match args {
        [flag, n] if flag == "--minutes" => n
            .parse()
            .with_context(|| format!("--minutes {n:?} is not a whole number"))?,
        [] => 30,
        _ => bail!("usage: cargo xtask soak [--minutes N] (default 30)"),
    };
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let root = build::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .env("ROOMGATE_SOAK_SECS", (minutes * 60).to_string())
        .args([
            "test",
            "-p",
            "gateway",
            "--test",
            "soak",
            "--",
            "--nocapture",
            "--test-threads=2",
            "soak_",
        ])
        .stdout(Stdio::piped());
    println!("xtask: {}", build::display(&cmd));
    let mut child = cmd.spawn().context("running cargo test --test soak")?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if line.starts_with("soak[") || line.starts_with("test soak_") {
                lines.push(line);
            }
        }
    }
    let status = child.wait().context("waiting for the soak")?;
    let report = format!(
        "# Churn soak\n\nCommand: `cargo xtask soak --minutes {minutes}`\n\nMachine: {}\n\n```\n{}\n```\n\nResult: {}\n",
        machine(),
        lines.join("\n"),
        if status.success() { "passed" } else { "FAILED" }
    );
    let path = root.join("target/soak-report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("xtask: report in {}", path.display());
    if !status.success() {
        bail!("soak failed ({status})");
    }
    Ok(())
}

/// Kernel, CPU model and count, memory: what the numbers were measured on.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    format!(
        "Linux {}, {cpus} x {model}, {}",
        kernel.trim(),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    )
}
