//! `cargo xtask setup`: install what building and testing roomgate needs, idempotently.
//!
//! Each step checks first and prints one line saying what it found or did, so a second
//! run changes nothing. Steps:
//! 1. the `rust-src` component (for `-Z build-std=core`);
//! 2. LLVM 22 development files (`llvm-22-dev`, what bpf-linker links against);
//! 3. `bpf-linker`, built against that LLVM;
//! 4. runtime test tools, when root: `ip` (iproute2), and `redis-server` plus `redis-cli`
//!    (redis-server, redis-tools) for the cluster tests' room directory.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::build::{clean_cargo, display, run};

/// rustc 1.95 uses LLVM 22; bpf-linker must be built against the same major version.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_FEATURE: &str = "llvm-22";

pub fn setup() -> Result<()> {
    rust_src()?;
    llvm()?;
    bpf_linker()?;
    test_tools()?;
    println!("xtask setup: done");
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Output of a command that must succeed, trimmed.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `name` on PATH, if any.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn rust_src() -> Result<()> {
    let sysroot = PathBuf::from(stdout_of(
        Command::new("rustc").args(["--print", "sysroot"]),
    )?);
    let src = sysroot.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        println!("xtask setup: rust-src: present ({})", sysroot.display());
        return Ok(());
    }
    println!("xtask setup: rust-src: missing, installing");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn llvm() -> Result<()> {
    let config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if config.is_file() {
        println!(
            "xtask setup: {LLVM_PACKAGE}: present ({})",
            config.display()
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} is missing and installing {LLVM_PACKAGE} needs root: run `sudo apt-get update && sudo apt-get install -y {LLVM_PACKAGE}`, then `cargo xtask setup` again",
            config.display()
        );
    }
    println!("xtask setup: {LLVM_PACKAGE}: missing, installing");
    apt_install(&[LLVM_PACKAGE])?;
    if !config.is_file() {
        bail!(
            "installed {LLVM_PACKAGE} but {} is still missing",
            config.display()
        );
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let found = on_path("bpf-linker").or_else(|| {
        let p = cargo_bin_dir().join("bpf-linker");
        p.is_file().then_some(p)
    });
    if let Some(bin) = found {
        let version = stdout_of(Command::new(&bin).arg("--version"))
            .unwrap_or_else(|e| format!("unknown version: {e:#}"));
        if version.contains(BPF_LINKER_VERSION) {
            println!(
                "xtask setup: bpf-linker: present ({version}, {})",
                bin.display()
            );
        } else {
            println!(
                "xtask setup: bpf-linker: present ({version}, {}); roomgate is tested with {BPF_LINKER_VERSION} built with --features {BPF_LINKER_FEATURE}, keeping it",
                bin.display()
            );
        }
        return Ok(());
    }
    println!(
        "xtask setup: bpf-linker: missing, building it against {LLVM_PREFIX} (takes a few minutes)"
    );
    let mut cmd = clean_cargo();
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        BPF_LINKER_FEATURE,
    ]);
    run(&mut cmd)
}

/// Tools the privileged tests use. Not needed to build, so a non-root run only says
/// how to get them.
fn test_tools() -> Result<()> {
    // The cluster tests and `bench cluster` start a real Redis per test and read it with
    // redis-cli (INFO commandstats, key owners).
    let tools = [
        ("ip", "iproute2"),
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ];
    let root = is_root();
    let mut wanted = Vec::new();
    for (bin, package) in tools {
        if let Some(p) =
            on_path(bin).or_else(|| Some(Path::new("/usr/sbin").join(bin)).filter(|p| p.is_file()))
        {
            println!("xtask setup: {bin}: present ({})", p.display());
        } else if !root {
            println!(
                "xtask setup: {bin}: missing; the privileged tests need it: `sudo apt-get install -y {package}` (skipped, not root)"
            );
        } else {
            wanted.push(package);
        }
    }
    for package in wanted {
        if apt_candidate(package)? {
            apt_install(&[package])?;
        } else {
            println!("xtask setup: {package}: no Debian package available here, skipped");
        }
    }
    Ok(())
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// `apt-get update`, at most once per process (a failed update is retried next time).
fn apt_update_once() -> Result<()> {
    if APT_UPDATED.load(Ordering::SeqCst) {
        return Ok(());
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["update", "-q"]))?;
    APT_UPDATED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether `package` is installed (`dpkg-query` says "install ok installed").
fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

/// Whether apt can install `package` (it has a candidate version), after one update.
fn apt_candidate(package: &str) -> Result<bool> {
    apt_update_once()?;
    let policy = stdout_of(Command::new("apt-cache").args(["policy", package]))?;
    Ok(policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .any(|c| c.trim() != "(none)"))
}

/// Install the Debian packages among `packages` that are not installed yet (checked with
/// `dpkg-query`); runs `apt-get update` at most once per process, and not at all when
/// everything is present. Needs root; otherwise fails naming the command to run.
/// Install a PyPI package for the machine's python3 unless `module` already imports.
pub fn pip_install(module: &str, requirement: &str) -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: pip install {requirement}");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ])
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip install {requirement} failed ({status})");
    }
    Ok(())
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("xtask setup: installed: {}", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {0}; run `sudo apt-get update && sudo apt-get install -y {0}` and retry",
            missing.join(" ")
        );
    }
    apt_update_once()?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_knows_an_installed_and_a_missing_package() {
        if on_path("dpkg-query").is_none() {
            return;
        }
        assert!(dpkg_installed("dpkg"));
        assert!(!dpkg_installed("roomgate-no-such-package"));
    }

    #[test]
    fn apt_install_of_present_packages_runs_nothing() {
        if on_path("dpkg-query").is_none() {
            return;
        }
        apt_install(&["dpkg"]).expect("nothing to do");
        assert!(!APT_UPDATED.load(Ordering::SeqCst));
    }
}
