//! Embeds the eBPF steering object when one has been built.
//!
//! `cargo xtask build` builds `gateway-ebpf/program` first and passes its path in
//! `ROOMGATE_EBPF_OBJECT`. Without it we look at the path xtask writes to, so a plain
//! `cargo test` after `cargo xtask build` still embeds the program. When neither
//! exists the gateway builds anyway, connected-mode only, and says so loudly.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(roomgate_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=ROOMGATE_EBPF_OBJECT");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/roomgate-ebpf");
    println!("cargo::rerun-if-changed={}", default.display());
    let object = env::var_os("ROOMGATE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    if object.is_file() {
        let object = object.canonicalize().expect("object path resolves");
        println!("cargo::rerun-if-changed={}", object.display());
        println!("cargo::rustc-cfg=roomgate_ebpf_embedded");
        println!(
            "cargo::rustc-env=ROOMGATE_EBPF_OBJECT_PATH={}",
            object.display()
        );
    } else {
        println!(
            "cargo::warning=eBPF object not found at {}: this roomgate can only run --steering connected. Run `cargo xtask build` to embed the steering program.",
            object.display()
        );
    }
}
