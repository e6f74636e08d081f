//! `cargo xtask bench steering|metrics|media|alloc|srtp|storm|cluster`: run a benchmark (release
//! build, eBPF object embedded) and record its table in BENCHMARKS.md together with the command
//! (storm and cluster write theirs to target/ for the lead to copy).
//! `cargo xtask bench media --rooms 8 --subs 50 --secs 20` passes its flags to the bench;
//! `cargo xtask bench media --simulcast` records the simulcast section instead.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build;

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("steering") | None => steering(args.get(1..).unwrap_or_default()),
        Some("metrics") => run_bench(
            "metrics",
            "Metrics scrape cost",
            "target/bench-metrics.md",
            false,
            &[],
        ),
        Some("media") if args.iter().any(|a| a == "--simulcast") => media_simulcast(&args[1..]),
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
        Some("alloc") => run_bench(
            "alloc",
            "Heap allocations per forwarded packet",
            "target/bench-alloc.md",
            false,
            &args[1..],
        ),
        Some("srtp") => run_bench(
            "srtp",
            "SRTP per packet",
            "target/bench-srtp.md",
            false,
            &args[1..],
        ),
        Some("storm") => storm(&args[1..]),
        Some("cluster") => cluster(&args[1..]),
        Some(other) => {
            bail!("unknown benchmark {other:?}; available: steering, metrics, media, alloc, srtp, storm, cluster")
        }
    }
}

/// `cargo xtask bench media --simulcast [--no-record] [flags]`: the simulcast comparison and
/// the estimator's convergence (benches/simulcast/), recorded as their own section of
/// BENCHMARKS.md; `--no-record` (smoke runs) leaves the report in target/ only.
fn media_simulcast(args: &[String]) -> Result<()> {
    let heading = "Simulcast forwarding";
    let report = "target/bench-media-simulcast.md";
    let bench_args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-record")
        .cloned()
        .collect();
    if bench_args.len() == args.len() {
        return run_bench("media", heading, report, false, &bench_args);
    }
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let status = Command::new("cargo")
        .current_dir(build::workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .args(["bench", "-p", "gateway", "--bench", "media", "--"])
        .args(&bench_args)
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("media --simulcast benchmark failed ({status})");
    }
    println!("xtask: report in {report}, BENCHMARKS.md not updated (--no-record)");
    Ok(())
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

/// `cargo xtask bench storm [--sessions N]`: tests/storm.rs in a release build with N
/// WHEP viewers (default 2,000) joining within 10 s. Its `storm[...]` line (time to
/// media, /healthz and probe latencies) goes to target/bench-storm.md with the command;
/// the test's completeness assertions still apply.
fn storm(args: &[String]) -> Result<()> {
    let sessions: u64 = match args {
        [] => 2000,
        [flag, n] if flag == "--sessions" => n
            .parse()
            .with_context(|| format!("--sessions {n:?} is not a whole number"))?,
        _ => bail!("usage: cargo xtask bench storm [--sessions N]"),
    };
    let lines = release_test(
        "storm",
        "join_storm",
        "storm[",
        &[("ROOMGATE_STORM_SESSIONS", sessions.to_string())],
    )?;
    let report = format!(
        "## Join storm\n\nCommand: `cargo xtask bench storm --sessions {sessions}` (release build, {} CPUs)\n\n```\n{}\n```\n",
        cpus(),
        lines.join("\n")
    );
    write_report("target/bench-storm.md", &report)
}

/// `cargo xtask bench cluster [--secs N] [--concurrency N]`: tests/cluster_bench.rs in a
/// release build: 3 nodes and a real redis-server in network namespaces. Its `cluster[...]`
/// lines (redirect and claim latency, Redis operations per join, heartbeat traffic, rooms
/// placed per second over N seconds, default 10, with N concurrent clients, default 32) go
/// to target/bench-cluster.md with the command.
fn cluster(args: &[String]) -> Result<()> {
    let mut secs: u64 = 10;
    let mut concurrency: u64 = 32;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let target = match flag.as_str() {
            "--secs" => &mut secs,
            "--concurrency" => &mut concurrency,
            _ => bail!("usage: cargo xtask bench cluster [--secs N] [--concurrency N]"),
        };
        let n = rest
            .next()
            .with_context(|| format!("{flag} needs a number"))?;
        *target = n
            .parse()
            .with_context(|| format!("{flag} {n:?} is not a whole number"))?;
    }
    if secs == 0 || concurrency == 0 {
        bail!("--secs and --concurrency must be at least 1");
    }
    let lines = release_test(
        "cluster_bench",
        "cluster_bench",
        "cluster[",
        &[
            ("ROOMGATE_CLUSTER_BENCH_SECS", secs.to_string()),
            (
                "ROOMGATE_CLUSTER_BENCH_CONCURRENCY",
                concurrency.to_string(),
            ),
            ("ROOMGATE_CLUSTER_BENCH_ROOMS", "300".to_owned()),
            ("ROOMGATE_CLUSTER_BENCH_IDLE_SECS", "10".to_owned()),
        ],
    )?;
    let report = format!(
        "## Cluster\n\nCommand: `cargo xtask bench cluster --secs {secs} --concurrency {concurrency}` (release build, {} CPUs; 3 nodes and redis-server share them)\n\n```\n{}\n```\n",
        cpus(),
        lines.join("\n")
    );
    write_report("target/bench-cluster.md", &report)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn write_report(path: &str, report: &str) -> Result<()> {
    let path = build::workspace_root().join(path);
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("xtask: report in {}", path.display());
    Ok(())
}

/// Run the test `name` of tests/`test`.rs (an integration test used as a benchmark) in a
/// release build with the eBPF object embedded, relaying its output, and return its lines
/// starting with `prefix`. The test's own assertions still apply: a failure fails the bench.
fn release_test(
    test: &str,
    name: &str,
    prefix: &str,
    env: &[(&str, String)],
) -> Result<Vec<String>> {
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(build::workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", &object)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "test",
            "--release",
            "-p",
            "gateway",
            "--test",
            test,
            "--",
            "--nocapture",
            "--exact",
            name,
        ])
        .stdout(std::process::Stdio::piped());
    println!("xtask: {}", build::display(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running cargo test --test {test}"))?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if line.starts_with(prefix) {
                lines.push(line);
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {test}"))?;
    if !status.success() {
        bail!("{test} benchmark failed ({status})");
    }
    if lines.is_empty() {
        bail!("{test} printed no {prefix}...] lines (was `{name}` filtered out?)");
    }
    Ok(lines)
}

fn section(report: &str) -> String {
    format!("{}\n\nRun as root (eBPF steering; the steering bench also enables `kernel.bpf_stats_enabled` for the run and restores it).\n\n", report.trim_end())
}

/// Headings of the scaling sections; the kernel's name follows the comma.
const SCALING_HEADING: &str = "Steering scaling";
/// The QEMU runs stop at 4,096 clients: on 5.x, opening and looking up connected sockets
/// is O(clients), and under TCG pinning 4,096 of them already takes about a minute
/// (16,384 would add roughly half an hour, for the same slope).
const KERNEL_CLIENTS: &str = "128,1024,4096";
/// Generous: 4,096 connected clients under TCG deliver a few thousand datagrams/s.
const KERNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `cargo xtask bench steering [--kernel 5.10] [--scaling] [--clients N,N] [--modes M,M]
/// [--secs S] [--serial-pinning] [--no-record]`: without `--kernel`, the design comparison
/// plus the scaling run on this kernel (`--scaling`: only the latter); with `--kernel`, the
/// scaling run inside that Debian kernel under QEMU. Each report replaces its own section of BENCHMARKS.md, except
/// with `--no-record` (smoke runs; the host comparison then skips its floor calibration).
fn steering(args: &[String]) -> Result<()> {
    let root = build::workspace_root();
    let kernel = args
        .iter()
        .position(|a| a == "--kernel")
        .map(|i| {
            args.get(i + 1)
                .context("--kernel needs a name, e.g. --kernel 5.10")
        })
        .transpose()?;
    let mut bench_args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--kernel" {
            skip = true;
            continue;
        }
        if a == "--no-record" {
            continue;
        }
        bench_args.push(a.clone());
    }
    let shown = |extra: &str| {
        let mut c = vec!["cargo xtask bench steering".to_owned()];
        c.extend(args.iter().cloned());
        format!("{}{extra}", c.join(" "))
    };
    let scaling_file = root.join("target/bench-steering-scaling.md");
    let _ = std::fs::remove_file(&scaling_file);
    // A smoke run: the reports land in target/ only.
    let record = !args.iter().any(|a| a == "--no-record");
    let Some(kernel) = kernel else {
        if !record {
            let object = build::build_ebpf()?;
            let exe = bench_executable(&object)?;
            return build::run(Command::new(exe).current_dir(&root).args(&bench_args));
        }
        if bench_args.iter().any(|a| a == "--scaling") {
            // The trailing newline keeps run_bench's prefix match off the kernel sections;
            // replace_section below rewrites the section with its command.
            run_bench(
                "steering",
                &format!("{SCALING_HEADING}\n"),
                "target/bench-steering-scaling.md",
                false,
                &bench_args,
            )?;
        } else {
            run_bench(
                "steering",
                "Steering",
                "target/bench-steering.md",
                true,
                &bench_args,
            )?;
        }
        let report =
            std::fs::read_to_string(&scaling_file).context("reading the scaling report")?;
        return replace_section(SCALING_HEADING, &report, &shown(""));
    };
    let spec = crate::qemu::kernel_spec(kernel)?;
    crate::setup::setup()?;
    let object = build::build_ebpf()?;
    let exe = bench_executable(&object)?;
    if !bench_args.iter().any(|a| a == "--clients") {
        bench_args.extend(["--clients".to_owned(), KERNEL_CLIENTS.to_owned()]);
    }
    let label = format!("Linux {} under QEMU (TCG, 2 vCPUs)", spec.release);
    let mut command = vec![exe.to_string_lossy().into_owned(), "--scaling".to_owned()];
    command.extend(bench_args.iter().filter(|a| *a != "--scaling").cloned());
    command.extend(["--label".to_owned(), label.clone()]);
    let out = crate::qemu::run_in_kernel(spec, &command, KERNEL_TIMEOUT)?;
    println!(
        "xtask: guest finished in {:.0} s with exit code {:?}",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    if !out.success() {
        bail!(
            "the steering bench failed inside Linux {} (exit {:?}); console:\n{}",
            spec.release,
            out.exit_code,
            out.console
        );
    }
    let report = out
        .output
        .split_once(STEERING_REPORT_BEGIN)
        .and_then(|(_, r)| r.split_once(STEERING_REPORT_END))
        .map(|(r, _)| r.trim_start_matches('\n').to_owned())
        .context("the guest's output holds no scaling report")?;
    let file = root.join(format!("target/bench-steering-scaling-{}.md", spec.name));
    std::fs::write(&file, &report).with_context(|| format!("writing {}", file.display()))?;
    println!("xtask: wrote {}", file.display());
    if !record {
        return Ok(());
    }
    replace_section(
        &format!("{SCALING_HEADING}, {label}"),
        &format!(
            "{}\n\nOnly the slope counts here: TCG runs about 10x slower than the host. Capped \
             at 4,096 clients (`KERNEL_CLIENTS` in xtask/src/bench.rs): pinning 4,096 connected \
             clients alone takes about a minute under TCG.\n\n{KERNEL_NOTE}",
            report.trim_end()
        ),
        &shown(""),
    )
}

/// How to read the kernel sections; true of kernels without a 4-tuple hash for
/// connected UDP sockets, such as Debian's 5.10 (net/ipv4/udp.c of 5.10.223).
const KERNEL_NOTE: &str = "Why connected mode slows down on this kernel: every socket bound to \
the gateway's address and port sits in one secondary hash chain (`hslot2`, keyed by address and \
port), the connected fallback's per-client sockets included. Once a member of the SO_REUSEPORT \
group is connected, `udp4_lib_lookup2` no longer returns the group's pick at once \
(`reuseport_has_conns`) but scores every socket of that chain, so each datagram costs O(clients), \
and on loopback that cost lands on the sender. Opening each connected socket is O(clients) too \
(`udp_lib_get_port` scans the same chain once the port has more than 10 sockets). eBPF mode keeps \
one socket per thread and never connects one, so the group's program answers on the first socket \
of a two-socket chain. The kernel does not misdeliver: a connected socket only matches its own \
4-tuple, and the group's hash fallback skips connected members.";

/// Marker lines around the scaling report in the bench's output (benches/steering.rs).
const STEERING_REPORT_BEGIN: &str = "----- steering scaling report begin -----";
const STEERING_REPORT_END: &str = "----- steering scaling report end -----";

/// Build the steering bench in release with the eBPF object embedded; returns its path.
fn bench_executable(object: &std::path::Path) -> Result<std::path::PathBuf> {
    let out = Command::new("cargo")
        .current_dir(build::workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", object)
        .args([
            "bench",
            "-p",
            "gateway",
            "--bench",
            "steering",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the steering bench failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"executable\"") && l.contains("\"name\":\"steering\""))
        .find_map(|l| {
            let (_, rest) = l.split_once("\"executable\":\"")?;
            let (path, _) = rest.split_once('"')?;
            Some(std::path::PathBuf::from(path))
        })
        .context("cargo bench --no-run named no steering executable")
}

/// Replace the section whose heading line is exactly `## <heading>` (or append it), with
/// `report` followed by the command that produced it.
fn replace_section(heading: &str, report: &str, command: &str) -> Result<()> {
    let path = build::workspace_root().join("BENCHMARKS.md");
    let existing =
        std::fs::read_to_string(&path).unwrap_or_else(|_| "# roomgate benchmarks\n\n".into());
    let body = format!(
        "{}\n\nCommand: `{command}` (as root).\n\n",
        report.trim_end()
    );
    let line = format!("## {heading}\n");
    let start = existing
        .match_indices(&line)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || existing[..i].ends_with('\n'));
    let updated = match start {
        Some(s) => {
            let end = existing[s + 1..]
                .find("\n## ")
                .map_or(existing.len(), |e| s + 1 + e + 1);
            format!("{}{}{}", &existing[..s], body, &existing[end..])
        }
        None => format!("{}\n\n{}", existing.trim_end(), body),
    };
    std::fs::write(&path, updated).context("writing BENCHMARKS.md")?;
    println!("xtask: updated section \"{heading}\" of {}", path.display());
    Ok(())
}
