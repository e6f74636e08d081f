//! `cargo xtask` — every developer and CI command of roomgate.
//!
//! - `setup`: install what the build and tests need (idempotent).
//! - `build [--debug]`: build the eBPF object, then the gateway with it embedded.
//! - `run [-- ARGS]`: setup + build, then start the gateway (defaults: UDP 0.0.0.0:7000,
//!   HTTP 127.0.0.1:8080, one thread per core, eBPF steering with connected fallback).
//! - `test`: setup + build, then every test: unit, integration and privileged (eBPF in
//!   the real kernel, network namespaces). This is what `.ci/run` calls.
//! - `monitor [-- ARGS]`: `run` plus a local Prometheus (Debian package) scraping the
//!   gateway over loopback with the alert rules loaded, on http://127.0.0.1:9090.
//! - `bench steering|media|alloc|srtp|metrics|storm|cluster [ARGS]`: a benchmark; writes its table to stdout
//!   and its section of BENCHMARKS.md (`bench steering --kernel 5.10` boots Debian's 5.10
//!   under QEMU and runs the scaling bench there).
//! - `test --kernels`: only the kernel matrix (the eBPF steering tests inside Debian's
//!   packaged kernels under QEMU); the default `test` runs it after the workspace tests.
//! - `fuzz [--secs N] [TARGET]`: every libFuzzer target (gateway/fuzz), N seconds each.
//! - `soak --minutes N`: WHIP/WHEP churn with media, then reconcile counters and resources.
//! - `install`: the release binary and the hardened systemd unit.
mod bench;
mod build;
mod fuzz;
mod install;
mod kernels;
mod qemu;
mod setup;
mod soak;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => setup::setup(),
        "build" => {
            let release = !rest.iter().any(|a| a == "--debug");
            build_all(release).map(|_| ())
        }
        "run" => run(&rest),
        "test" => test(&rest),
        "monitor" => monitor(&rest),
        "bench" => bench::bench(&rest),
        "fuzz" => fuzz::fuzz(&rest),
        "soak" => soak::soak(&rest),
        "install" => install::install(&rest),
        "" | "help" | "--help" | "-h" => {
            println!("usage: cargo xtask <setup|build [--debug]|run [-- ARGS]|monitor [-- ARGS]|test [--kernels] [-- FILTER]|fuzz [--secs N] [TARGET]|soak --minutes N|install|bench steering|media|alloc|srtp|metrics|storm|cluster [ARGS]>");
            Ok(())
        }
        other => bail!("unknown command {other:?}; try `cargo xtask help`"),
    }
}

fn build_all(release: bool) -> Result<std::path::PathBuf> {
    setup::setup()?;
    let object = build::build_ebpf()?;
    build::build_gateway(release, &object)?;
    Ok(object)
}

fn run(args: &[String]) -> Result<()> {
    build_all(true)?;
    let bin = build::workspace_root().join("target/release/roomgate");
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    println!(
        "xtask: starting {} {}",
        bin.display(),
        args.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = Command::new(&bin)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("roomgate exited with {status}");
    }
    Ok(())
}

fn monitor(args: &[String]) -> Result<()> {
    build_all(true)?;
    setup::apt_install(&["prometheus"])?;
    let root = build::workspace_root();
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    // Scrape wherever the API listens (the gateway's default unless --http-bind is given).
    let http = args
        .iter()
        .position(|a| *a == "--http-bind")
        .and_then(|i| args.get(i + 1))
        .map_or("127.0.0.1:8080".to_owned(), |a| a.to_string());
    let dir = root.join("target/monitor");
    std::fs::create_dir_all(&dir).context("creating target/monitor")?;
    let config = format!(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: roomgate\n    static_configs:\n      - targets: ['{http}']\n",
        root.join("grafana/alerts.yml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).context("writing prometheus.yml")?;
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .spawn()
        .context("starting prometheus")?;
    println!("xtask: Prometheus on http://127.0.0.1:9090 scraping {http}; import grafana/dashboards/roomgate.json into Grafana");
    let bin = root.join("target/release/roomgate");
    let status = Command::new(&bin).args(&args).status();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let status = status.with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("roomgate exited with {status}");
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    let object = build_all(false)?;
    if args.first().is_some_and(|a| a == "--kernels") {
        return kernels::test_matrix(&object);
    }
    let root = build::workspace_root();
    // ip for the namespace tests, prometheus/promtool for the monitoring tests,
    // chromium for the real-browser tests, nft for their random loss (no netem here).
    setup::apt_install(&["iproute2", "prometheus", "chromium", "nftables"])?;
    // aiortc: an independent WebRTC stack (Python) for the WHIP/WHEP interop tests.
    setup::pip_install("aiortc", "aiortc==1.16.0")?;
    // Node.js runs the TypeScript check of the dashboard against Grafana's published schema.
    if setup::on_path("node").is_none() || setup::on_path("npm").is_none() {
        setup::apt_install(&["nodejs", "npm"])?;
    }
    // GStreamer's webrtcbin (libnice, OpenSSL DTLS, libsrtp) for the second interop stack,
    // driven from Debian's Python (python3-gi).
    setup::apt_install(&[
        "gstreamer1.0-plugins-good",
        "gstreamer1.0-plugins-bad",
        "gstreamer1.0-nice",
        "python3-gi",
        "gir1.2-gst-plugins-bad-1.0",
        "gir1.2-nice-0.1",
    ])?;
    let filter: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    let rejected = build::build_ebpf_rejected_by_verifier()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .env("ROOMGATE_EBPF_REJECTED_OBJECT", &rejected)
        // Every test binary runs even after one fails: one CI run shows every failure.
        .args(["test", "--workspace", "--no-fail-fast"]);
    if !filter.is_empty() {
        cmd.arg("--").args(&filter);
    }
    println!(
        "xtask: cargo test --workspace (eBPF object {})",
        object.display()
    );
    // Relay cargo's output while summing its per-binary results, so the run ends with
    // one total line instead of the last binary's (often doc-tests' "0 passed").
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, "passed");
                failed += count(rest, "failed");
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("xtask: {passed} passed, {failed} failed");
    // Filtered runs are for developers iterating on one test; the matrix runs in full runs,
    // also after a failure above, so that one run reports both.
    let matrix = if filter.is_empty() {
        kernels::test_matrix(&object)
    } else {
        Ok(())
    };
    if !status.success() {
        bail!("tests failed ({status})");
    }
    matrix
}

/// The number before `word` in "ok. 37 passed; 0 failed; 0 ignored; ...".
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| part.trim().rsplit_once(' '))
        .find(|(_, w)| *w == word)
        .and_then(|(n, _)| n.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
