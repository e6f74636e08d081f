//! Building the eBPF object and the gateway that embeds it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Build `gateway-ebpf/program` for `bpfel-unknown-none`; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("gateway-ebpf/program"));
    // The outer `cargo xtask` exports variables meant for the host build; none of them
    // may leak into the BPF build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k == "RUSTFLAGS"
            || k == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    run(&mut cmd)?;
    let object = target_dir.join("bpfel-unknown-none/release/roomgate-ebpf");
    if !object.is_file() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

/// Build the gateway with the eBPF object embedded.
pub fn build_gateway(release: bool, object: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", object)
        .args(["build", "-p", "gateway"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}
