//! The kernel matrix: the eBPF steering tests inside Debian's packaged kernels.
//!
//! For every kernel of `qemu::KERNELS` (and the host's, for comparison) one guest boot
//! runs, against the already compiled test executables:
//!
//! 1. roomgate itself in eBPF mode until it is ready, as root and then as the unit runs it
//!    (nobody, no_new_privs, CAP_BPF + CAP_NET_ADMIN only), for the verifier's processed
//!    instruction count it logs at load (`verified_insns=N`);
//! 2. the eBPF-mode tests of tests/steering.rs (per-thread and eBPF branch counters);
//! 3. where the kernel is listed in `LEAST_PRIVILEGE`, the two-capability test of
//!    tests/cli.rs (the shipped unit's user, capabilities and memlock limit).
//!
//! `ROOMGATE_KERNELS=5.10,6.1,host` picks a subset. The run ends with a table and fails if
//! any kernel failed.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::{display, workspace_root},
    qemu::{run_in_kernel, sh_quote, KernelSpec, KERNELS},
};

/// Test-name filters of tests/steering.rs that run in eBPF mode.
const STEERING_FILTERS: &[&str] = &["ebpf_mode", "userspace_and_kernel_agree"];
/// The least-privilege test of tests/cli.rs.
const CAPABILITY_TEST: &str = "ebpf_mode_runs_as_the_units_user_with_only_its_capabilities";
/// Kernels where the capability test also runs (a few seconds each): 5.10 above all,
/// where CAP_BPF is youngest, the verifier strictest without CAP_PERFMON and BPF memory
/// still counts against RLIMIT_MEMLOCK. The host runs it in the workspace tests.
const LEAST_PRIVILEGE: &[&str] = &["5.10", "6.1"];
/// Rooms of the big steering test in a guest: TCG runs ~10x slower than the host, and all
/// sessions must be established within one consent period (see tests/steering.rs).
const GUEST_STEERING_ROOMS: u32 = 24;
/// One kernel's guest: boot, load, the tests and power-off.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

const SECTION: &str = "ROOMGATE-MATRIX";

/// The compiled executables the guest runs.
struct Executables {
    roomgate: PathBuf,
    steering: PathBuf,
    cli: PathBuf,
}

/// What one kernel did.
struct Row {
    kernel: String,
    release: String,
    /// The verifier's processed instructions, loaded as root.
    insns_root: Option<u32>,
    /// The same with only CAP_BPF + CAP_NET_ADMIN (unprivileged verification walks
    /// speculative paths too).
    insns_caps: Option<u32>,
    passed: u64,
    failed: u64,
    /// Why the row failed, if it did.
    problem: Option<String>,
    wall: Duration,
}

pub fn test_matrix(object: &Path) -> Result<()> {
    let started = Instant::now();
    let exes = executables(object)?;
    let wanted = std::env::var("ROOMGATE_KERNELS").ok();
    let wants = |name: &str| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|k| k.trim() == name))
    };
    let mut rows = Vec::new();
    for spec in KERNELS.iter().filter(|k| wants(k.name)) {
        rows.push(in_guest(spec, &exes));
    }
    if wants("host") {
        rows.push(on_host(&exes));
    }
    if rows.is_empty() {
        bail!("ROOMGATE_KERNELS={wanted:?} names no kernel");
    }
    let table = render(&rows);
    println!(
        "\nxtask: kernel matrix ({:.0} s)\n{table}",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.kernel, r.problem.as_ref()?)))
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// Build (if needed) and locate the test executables with the same environment as the
/// workspace test run, so nothing recompiles.
fn executables(object: &Path) -> Result<Executables> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("ROOMGATE_EBPF_OBJECT", object)
        .args([
            "test",
            "-p",
            "gateway",
            "--no-run",
            "--message-format=json-render-diagnostics",
            "--test",
            "steering",
            "--test",
            "cli",
        ]);
    println!("xtask: $ {}", display(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let find = |kind: &str, name: &str| -> Result<PathBuf> {
        stdout
            .lines()
            .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
            .find(|l| {
                l.contains(&format!("\"kind\":[\"{kind}\"]"))
                    && json_string(l, "name").as_deref() == Some(name)
            })
            .and_then(|l| json_string(l, "executable"))
            .map(PathBuf::from)
            .with_context(|| format!("cargo reported no {kind} executable {name}"))
    };
    Ok(Executables {
        roomgate: find("bin", "roomgate")?,
        steering: find("test", "steering")?,
        cli: find("test", "cli")?,
    })
}

/// The first `"key":"value"` string of a JSON line (cargo's messages put the target's
/// name before any other "name", and Linux paths need no escapes).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &line[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The script the guest (or the host) runs. Each part ends with a marker line holding its
/// exit code, so a failing part does not hide the others.
fn script(exes: &Executables, guest: bool, least_privilege: bool) -> String {
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let gateway = workspace_root().join("gateway");
    let mut s = String::new();
    if guest {
        s.push_str(&format!(
            "export ROOMGATE_STEERING_ROOMS={GUEST_STEERING_ROOMS}\n"
        ));
    }
    // The unit's grants: a non-root user, no_new_privs, CAP_BPF + CAP_NET_ADMIN. The
    // memlock limit only matters before 5.11 and only root may raise it; the host
    // (6.18, possibly without CAP_SYS_RESOURCE) keeps its own.
    let memlock = if guest {
        "prlimit --memlock=unlimited:unlimited --"
    } else {
        ""
    };
    s.push_str(&format!(
        r#"cd {gateway} || exit 1
load() {{
  label=$1; shift
  out=$(mktemp) err=$(mktemp)
  "$@" {roomgate} --steering ebpf --threads 2 --udp-bind 127.0.0.1:0 --http-bind 127.0.0.1:0 >"$out" 2>"$err" &
  pid=$!
  i=0
  while ! grep -q '^roomgate ready' "$out" && kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  grep -q '^roomgate ready' "$out"; ready=$?
  kill -TERM $pid 2>/dev/null; wait $pid
  cat "$err"
  n=$(grep -o 'verified_insns=[0-9]*' "$err" | head -n 1 | cut -d= -f2)
  echo "{SECTION} insns_$label ${{n:-0}}"
  echo "{SECTION} load_$label $ready"
}}
load root
load caps {memlock} setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs --bounding-set=-all,+bpf,+net_admin --inh-caps=-all,+bpf,+net_admin --ambient-caps=-all,+bpf,+net_admin --
{steering} --test-threads=2 {filters}
echo "{SECTION} steering $?"
"#,
        gateway = q(&gateway),
        roomgate = q(&exes.roomgate),
        steering = q(&exes.steering),
        filters = STEERING_FILTERS.join(" "),
    ));
    if least_privilege {
        s.push_str(&format!(
            "{cli} --exact {CAPABILITY_TEST}\necho \"{SECTION} capabilities $?\"\n",
            cli = q(&exes.cli),
        ));
    }
    s
}

fn in_guest(spec: &KernelSpec, exes: &Executables) -> Row {
    let started = Instant::now();
    let least = LEAST_PRIVILEGE.contains(&spec.name);
    let command = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        script(exes, true, least),
    ];
    let mut row = match run_in_kernel(spec, &command, GUEST_TIMEOUT) {
        Ok(out) => {
            let mut row = parse(spec.name, spec.release, &out.output, least);
            if out.exit_code.is_none() && row.problem.is_none() {
                row.problem = Some("the guest died or timed out".to_owned());
            }
            if row.problem.is_some() {
                eprintln!(
                    "xtask: Linux {} failed; its console:\n{}",
                    spec.release, out.console
                );
            }
            row
        }
        Err(e) => Row {
            kernel: spec.name.to_owned(),
            release: spec.release.to_owned(),
            insns_root: None,
            insns_caps: None,
            passed: 0,
            failed: 0,
            problem: Some(format!("{e:#}")),
            wall: Duration::ZERO,
        },
    };
    row.wall = started.elapsed();
    row
}

fn on_host(exes: &Executables) -> Row {
    let started = Instant::now();
    let release = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("xtask: the same on the host kernel ({release})");
    let mut row = match Command::new("/bin/sh")
        .args(["-c", &script(exes, false, false)])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            print!("{text}");
            parse("host", &release, &text, false)
        }
        Err(e) => Row {
            kernel: "host".to_owned(),
            release,
            insns_root: None,
            insns_caps: None,
            passed: 0,
            failed: 0,
            problem: Some(format!("running the host script: {e}")),
            wall: Duration::ZERO,
        },
    };
    row.wall = started.elapsed();
    row
}

/// Read the markers, roomgate's `verified_insns=N` and the test summaries.
fn parse(kernel: &str, release: &str, output: &str, least_privilege: bool) -> Row {
    let marker = |part: &str| -> Option<i32> {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{SECTION} {part} ")))
            .and_then(|c| c.trim().parse().ok())
    };
    let insns = |label: &str| {
        marker(&format!("insns_{label}"))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    let (insns_root, insns_caps) = (insns("root"), insns("caps"));
    let (mut passed, mut failed) = (0, 0);
    for summary in output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("test result: "))
    {
        passed += crate::count(summary, "passed");
        failed += crate::count(summary, "failed");
    }
    let mut parts = vec!["load_root", "load_caps", "steering"];
    if least_privilege {
        parts.push("capabilities");
    }
    let mut problems: Vec<String> = parts
        .iter()
        .filter_map(|p| match marker(p) {
            Some(0) => None,
            Some(code) => Some(format!("{p} exited {code}")),
            None => Some(format!("{p} never finished")),
        })
        .collect();
    if insns_root.is_none() || insns_caps.is_none() {
        problems.push("roomgate logged no verified_insns".to_owned());
    }
    // Every filter must have run something: a renamed test must not pass vacuously.
    let expected_binaries = if least_privilege { 2 } else { 1 };
    let summaries = output
        .lines()
        .filter(|l| l.trim().starts_with("test result: "))
        .count();
    if summaries < expected_binaries || passed == 0 {
        problems.push(format!(
            "{summaries} test summaries with {passed} passed (expected {expected_binaries} binaries)"
        ));
    }
    Row {
        kernel: kernel.to_owned(),
        release: release.to_owned(),
        insns_root,
        insns_caps,
        passed,
        failed,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        wall: Duration::ZERO,
    }
}

fn render(rows: &[Row]) -> String {
    let mut t = String::from(
        "| kernel | release | verified insns (root) | verified insns (CAP_BPF+CAP_NET_ADMIN) | tests passed | tests failed | wall time | result |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} s | {} |\n",
            r.kernel,
            r.release,
            r.insns_root.map_or("?".to_owned(), |n| n.to_string()),
            r.insns_caps.map_or("?".to_owned(), |n| n.to_string()),
            r.passed,
            r.failed,
            r.wall.as_secs_f64(),
            r.problem.as_deref().map_or("ok", |_| "FAILED"),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "2026 INFO gateway::steering::ebpf: eBPF steering program loaded and verified verified_insns=2195\n\
        ROOMGATE-MATRIX insns_root 2195\n\
        ROOMGATE-MATRIX load_root 0\n\
        ROOMGATE-MATRIX insns_caps 2366\n\
        ROOMGATE-MATRIX load_caps 0\n\
        test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 30.81s\n\
        ROOMGATE-MATRIX steering 0\n";

    #[test]
    fn a_clean_run_parses_to_an_ok_row() {
        let row = parse("6.1", "6.1.0-50-amd64", GOOD, false);
        assert_eq!((row.insns_root, row.insns_caps), (Some(2195), Some(2366)));
        assert_eq!((row.passed, row.failed), (5, 0));
        assert!(row.problem.is_none(), "{:?}", row.problem);
    }

    #[test]
    fn a_missing_part_or_count_fails_the_row() {
        // The capability test never reported.
        assert!(parse("5.10", "r", GOOD, true).problem.is_some());
        let failing = GOOD.replace("steering 0", "steering 101");
        assert!(parse("6.1", "r", &failing, false).problem.is_some());
        let no_count = GOOD.replace("insns_caps 2366", "insns_caps 0");
        assert!(parse("6.1", "r", &no_count, false).problem.is_some());
        let nothing_ran = GOOD.replace("5 passed", "0 passed");
        assert!(parse("6.1", "r", &nothing_ran, false).problem.is_some());
    }

    #[test]
    fn json_fields_are_read() {
        let l = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"cli"},"executable":"/x/cli-1"}"#;
        assert_eq!(json_string(l, "name").as_deref(), Some("cli"));
        assert_eq!(json_string(l, "executable").as_deref(), Some("/x/cli-1"));
    }
}
