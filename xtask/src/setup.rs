//! `cargo xtask setup`: install what building and testing roomgate needs, idempotently.
//!
//! Each step checks first and says what it found, so a second run is quick and quiet.
use std::{path::PathBuf, process::Command, sync::Once};

use anyhow::{bail, Context, Result};

/// bpf-linker must be built against the LLVM of rustc (22 for Rust 1.95).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    rust_src()?;
    llvm()?;
    bpf_linker()?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn rust_src() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        println!("xtask: rust-src: present");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn llvm() -> Result<()> {
    if PathBuf::from(LLVM_PREFIX).join("bin/llvm-config").is_file() {
        println!("xtask: llvm-22-dev: present");
        return Ok(());
    }
    apt_install(&["llvm-22-dev"])
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin("bpf-linker");
    if let Ok(out) = Command::new(&bin).arg("--version").output() {
        let version = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && version.contains(BPF_LINKER_VERSION) {
            println!("xtask: bpf-linker: {}", version.trim());
            return Ok(());
        }
    }
    run(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

static APT_UPDATE: Once = Once::new();

/// Install the Debian packages that are missing (checked with dpkg-query); runs
/// `apt-get update` at most once per process. Needs root.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("xtask: packages present: {}", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get update && sudo apt-get install -y {}` and retry",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let mut update = Ok(());
    APT_UPDATE.call_once(|| update = run(Command::new("apt-get").args(["update", "-q"])));
    update?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q"])
        .args(&missing))
}
