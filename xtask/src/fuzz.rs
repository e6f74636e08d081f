//! `cargo xtask fuzz [--secs N] [--runs N] [--sanitizer S] [TARGET]`: every libFuzzer
//! target under gateway/fuzz (or one), one after another.
//!
//! Each target runs for N seconds (default 60) or, with `--runs`, exactly that many
//! executions, over its working corpus `gateway/fuzz/corpus/<target>` (kept between runs,
//! not checked in) plus the checked-in seeds `gateway/fuzz/seeds/<target>`. Crash inputs
//! land in `gateway/fuzz/artifacts/<target>/`, the libFuzzer log next to them. Prints per
//! target executions, exec/s, corpus size and crashes; fails if any target crashed.
//!
//! Built with debug assertions (integer overflow checks) and, by default, no sanitizer:
//! the code under test is safe Rust, where AddressSanitizer finds little and costs a
//! 2-3x slowdown. `--sanitizer address` turns it back on.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const TARGETS: &[&str] = &[
    "stun",
    "classifier",
    "sdp",
    "rtp_rtcp",
    "sfu",
    "dtls_filter",
    "config",
];
const DEFAULT_SECS: u64 = 60;

struct Options {
    secs: u64,
    runs: Option<u64>,
    sanitizer: String,
    targets: Vec<&'static str>,
}

struct Outcome {
    target: &'static str,
    executions: u64,
    exec_per_sec: u64,
    corpus: usize,
    crashes: usize,
    seconds: f64,
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let options = parse_args(args)?;
    let dir = fuzz_dir();
    ensure_cargo_fuzz()?;
    build(&dir, &options.sanitizer)?;
    let bin_dir = dir.join("target").join(host_triple()?).join("release");
    let mut outcomes = Vec::new();
    for target in &options.targets {
        let outcome = run_target(&dir, &bin_dir, target, &options)?;
        println!(
            "fuzz {:<12} executions {:>11}  exec/s {:>7}  corpus {:>5}  crashes {}  ({:.0} s)",
            outcome.target,
            outcome.executions,
            outcome.exec_per_sec,
            outcome.corpus,
            outcome.crashes,
            outcome.seconds
        );
        outcomes.push(outcome);
    }
    println!("\ntarget        executions   exec/s  corpus  crashes");
    for o in &outcomes {
        println!(
            "{:<12} {:>11} {:>8} {:>7} {:>8}",
            o.target, o.executions, o.exec_per_sec, o.corpus, o.crashes
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashes > 0)
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz: crashes in {} (inputs under gateway/fuzz/artifacts/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut options = Options {
        secs: DEFAULT_SECS,
        runs: None,
        sanitizer: "none".into(),
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("fuzz: {name} needs a value"))
        };
        match arg.as_str() {
            "--secs" => options.secs = value("--secs")?.parse().context("fuzz: --secs N")?,
            "--runs" => options.runs = Some(value("--runs")?.parse().context("fuzz: --runs N")?),
            "--sanitizer" => options.sanitizer = value("--sanitizer")?.clone(),
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(t) => options.targets.push(t),
                None => bail!(
                    "fuzz: unknown target or option {name:?}; targets: {}",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.to_vec();
    }
    Ok(options)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("gateway")
        .join("fuzz")
}

/// Installs cargo-fuzz from crates.io unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("fuzz: running cargo install")?;
    if !status.success() {
        bail!("fuzz: cargo install cargo-fuzz failed");
    }
    Ok(())
}

/// `cargo fuzz` with the sanitizer flags it needs; on a stable toolchain the `-Z` flags
/// are unlocked with RUSTC_BOOTSTRAP.
fn cargo_fuzz(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).env("RUSTC_BOOTSTRAP", "1").arg("fuzz");
    cmd
}

fn build(dir: &Path, sanitizer: &str) -> Result<()> {
    let status = cargo_fuzz(dir)
        .args(["build", "--debug-assertions", "--sanitizer", sanitizer])
        .status()
        .context("fuzz: running cargo fuzz build")?;
    if !status.success() {
        bail!("fuzz: cargo fuzz build failed");
    }
    Ok(())
}

/// Where cargo fuzz puts the binaries: `target/<host triple>/release`.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("fuzz: running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("fuzz: rustc -vV names no host")
}

/// Runs the binary built once by [`build`] rather than `cargo fuzz run`, which would
/// rebuild, so every target of one invocation fuzzes the same code.
fn run_target(
    dir: &Path,
    bin_dir: &Path,
    target: &'static str,
    options: &Options,
) -> Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).context("fuzz: creating the corpus directory")?;
    std::fs::create_dir_all(&artifacts).context("fuzz: creating the artifacts directory")?;
    let before = crash_files(&artifacts);
    let log_path = dir.join("artifacts").join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path).context("fuzz: creating the log")?;
    let mut libfuzzer = vec![
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_owned(),
        "-timeout=10".to_owned(),
    ];
    match options.runs {
        Some(runs) => libfuzzer.push(format!("-runs={runs}")),
        None => libfuzzer.push(format!("-max_total_time={}", options.secs)),
    }
    let started = std::time::Instant::now();
    let status = Command::new(bin_dir.join(target))
        .arg(&corpus)
        .arg(&seeds)
        .args(&libfuzzer)
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("fuzz: running target {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |name: &str| -> u64 {
        text.lines()
            .rev()
            .filter_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    if !text.contains("INFO: Seed:") {
        bail!(
            "fuzz {target}: libFuzzer did not start; see {}",
            log_path.display()
        );
    }
    let new_crashes = crash_files(&artifacts).saturating_sub(before);
    // A crash ends libFuzzer before it prints final stats; count it even if no artifact
    // was written (e.g. the harness itself failed to start).
    let crashes = if status.success() {
        new_crashes
    } else {
        new_crashes.max(1)
    };
    if crashes > 0 {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!(
            "fuzz {target}: crashed; last lines of {}:",
            log_path.display()
        );
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
    }
    let mut executions = stat("number_of_executed_units");
    if executions == 0 {
        // No final stats (crash): the last status line "#N ..." is the count so far.
        executions = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    let mut exec_per_sec = stat("average_exec_per_sec");
    if exec_per_sec == 0 && seconds > 0.0 {
        exec_per_sec = (executions as f64 / seconds) as u64;
    }
    Ok(Outcome {
        target,
        executions,
        exec_per_sec,
        corpus: count_files(&corpus),
        crashes,
        seconds,
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count())
}

fn crash_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                ["crash-", "oom-", "timeout-", "leak-"]
                    .iter()
                    .any(|p| name.starts_with(p))
            })
            .count()
    })
}
