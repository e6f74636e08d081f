//! Building the eBPF object and the gateway that embeds it.
//!
//! The eBPF crate (`gateway-ebpf/program`) is its own workspace, excluded from the root
//! one, and is built for `bpfel-unknown-none` with `-Z build-std=core` (stable rustc with
//! `RUSTC_BOOTSTRAP=1`) and linked by `bpf-linker`. Its object lands at
//! `<root>/target/ebpf/bpfel-unknown-none/release/roomgate-ebpf`, the path
//! `gateway/build.rs` falls back to when `ROOMGATE_EBPF_OBJECT` is unset.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Target triple of the eBPF program.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// The workspace root: the parent of this crate's manifest directory (`<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Where [`build_ebpf`] writes the object.
pub fn ebpf_object_path() -> PathBuf {
    workspace_root()
        .join("target/ebpf")
        .join(EBPF_TARGET)
        .join("release/roomgate-ebpf")
}

/// Render a command the way a user would type it: `[cd DIR &&] [VAR=value ...] prog args`.
/// Removed variables are not shown.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        out.push_str(&format!("cd {} && ", dir.display()));
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            out.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    out.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        out.push(' ');
        out.push_str(&a.to_string_lossy());
    }
    out
}

/// Echo `cmd`, run it with inherited stdio, fail naming it unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// True for variables that the outer `cargo xtask` (or a cargo build script context)
/// sets for the host build and that must not reach a nested cargo building for another
/// target: flags, target dir, build target, profile overrides, wrappers and the
/// per-package variables cargo exports to the processes it runs. User configuration
/// that is target-independent (CARGO_HOME, CARGO_NET_*, CARGO_HTTP_*, CARGO_REGISTRIES_*,
/// CARGO_TERM_*) and RUSTUP_TOOLCHAIN (the nested build must use the same toolchain,
/// whose LLVM bpf-linker was built against) are kept.
fn leaks_into_nested_build(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "CARGO_INCREMENTAL",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_ENCODED_",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A `cargo` command whose environment holds none of the outer build's settings.
pub fn clean_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        if leaks_into_nested_build(&name) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Build `gateway-ebpf/program` for `bpfel-unknown-none`; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let program = root.join("gateway-ebpf/program");
    if !program.join("Cargo.toml").is_file() {
        bail!("eBPF crate not found at {}", program.display());
    }
    let mut cmd = clean_cargo();
    cmd.current_dir(&program)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ]);
    run(&mut cmd).context("building the eBPF program (missing tools? run `cargo xtask setup`)")?;
    let object = ebpf_object_path();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("xtask: eBPF object {}", object.display());
    Ok(object)
}

/// Build the program with its `verifier-reject` feature: an object the kernel's verifier
/// must refuse, so the tests can prove a rejection reaches the operator with its log.
pub fn build_ebpf_rejected_by_verifier() -> Result<PathBuf> {
    build_ebpf_variant("verifier-reject")
}

/// Build the program with its `stats-floor` feature (one counter bump, one select): the
/// steering bench's calibration of what the BPF statistics cost on this machine.
pub fn build_ebpf_stats_floor() -> Result<PathBuf> {
    build_ebpf_variant("stats-floor")
}

/// A feature variant of the program, in its own target directory; returns its path.
fn build_ebpf_variant(feature: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join(format!("target/ebpf-{feature}"));
    let mut cmd = clean_cargo();
    cmd.current_dir(root.join("gateway-ebpf/program"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--features",
            feature,
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ]);
    run(&mut cmd).with_context(|| format!("building the {feature} eBPF variant"))?;
    Ok(target_dir.join(EBPF_TARGET).join("release/roomgate-ebpf"))
}

/// `cargo build -p gateway [--release]` with the eBPF object embedded
/// (`ROOMGATE_EBPF_OBJECT`, read by `gateway/build.rs`).
pub fn build_gateway(release: bool, object: &Path) -> Result<()> {
    let object = object
        .canonicalize()
        .with_context(|| format!("eBPF object {} not found", object.display()))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .args(["build", "-p", "gateway"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root()
            .join("gateway-ebpf/program/Cargo.toml")
            .is_file());
    }

    #[test]
    fn outer_build_variables_are_scrubbed() {
        for leak in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_PKG_NAME",
        ] {
            assert!(leaks_into_nested_build(OsStr::new(leak)), "{leak}");
        }
        for keep in [
            "CARGO_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_NET_OFFLINE",
            "PATH",
            "HOME",
        ] {
            assert!(!leaks_into_nested_build(OsStr::new(keep)), "{keep}");
        }
    }

    #[test]
    fn display_shows_env_and_args() {
        let mut c = Command::new("cargo");
        c.env("A", "1").env_remove("B").args(["build", "-p", "x"]);
        assert_eq!(display(&c), "A=1 cargo build -p x");
    }
}
