//! The binary's contract: bad flags exit 2 with one line before any port is bound; an
//! unavailable eBPF path is a clear error in `ebpf` mode and a loud fallback in `auto`;
//! SIGTERM stops cleanly and releases the port; a port held by another process's
//! SO_REUSEPORT group is refused.
mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use support::*;

fn run(args: &[&str]) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let out = Command::new(BIN).args(args).output().expect("run roomgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// `--steering ebpf` with the program loaded from `object`, on free loopback ports.
fn run_ebpf_with_object(object: &str) -> (i32, String, String, Duration) {
    run(&[
        "--steering",
        "ebpf",
        "--ebpf-object",
        object,
        "--udp-bind",
        "127.0.0.1:0",
        "--http-bind",
        "127.0.0.1:0",
    ])
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_is_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn bad_flags_exit_2_with_one_line_before_binding() {
    let port = free_udp_port();
    let udp = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("roomgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "threads = [1, 2\n").unwrap();
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "thread = 2\n").unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec!["--threads".into(), "0".into()],
        vec!["--threads".into(), "many".into()],
        vec!["--steering".into(), "bpf".into()],
        vec!["--http-bind".into(), "nowhere".into()],
        vec!["--public-ip".into(), "999.1.1.1".into()],
        vec!["--log-level".into(), "info,=[".into()],
        vec!["--config".into(), bad_toml.display().to_string()],
        vec!["--config".into(), unknown_key.display().to_string()],
        vec!["--config".into(), "/nonexistent/roomgate.toml".into()],
        vec!["--no-such-flag".into()],
        // Cluster flags: each refused on its own, before Redis is contacted.
        vec!["--node-id".into(), "n1".into()],
        vec!["--drain-timeout".into(), "5m".into()],
        vec!["--cluster-redis".into(), "http://127.0.0.1:6379".into()],
        vec![
            "--cluster-redis".into(),
            "redis://127.0.0.1:6379".into(),
            "--cluster-ttl".into(),
            "10ms".into(),
        ],
        vec![
            "--cluster-redis".into(),
            "redis://127.0.0.1:6379".into(),
            "--advertise-http".into(),
            "http://h:1/x".into(),
        ],
        vec![
            "--cluster-redis".into(),
            "redis://127.0.0.1:6379".into(),
            "--cluster-load-threshold".into(),
            "2".into(),
        ],
        vec![
            "--cluster-redis".into(),
            "redis://127.0.0.1:6379".into(),
            "--node-id".into(),
            "a/b".into(),
        ],
        vec![
            "--cluster-redis".into(),
            "redis://127.0.0.1:6379".into(),
            "--cluster-redis-ca".into(),
            "/nonexistent.pem".into(),
        ],
    ];
    for case in cases {
        let mut args: Vec<&str> = vec!["--udp-bind", &udp];
        if case[0] != "--http-bind" {
            args.extend(["--http-bind", "127.0.0.1:0"]);
        }
        args.extend(case.iter().map(String::as_str));
        let (code, stdout, stderr, _) = run(&args);
        assert_eq!(code, 2, "{case:?}: stderr {stderr}");
        assert!(!stdout.contains("ready"), "{case:?}");
        if !case[0].starts_with("--no-such") {
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{case:?}: one line, got {stderr:?}"
            );
            assert!(stderr.starts_with("roomgate: "), "{stderr}");
        }
        assert!(port_is_free(port), "{case:?}: nothing was bound");
    }
}

#[test]
fn help_documents_every_option() {
    let (code, stdout, _, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--udp-bind",
        "--http-bind",
        "--threads",
        "--steering",
        "--public-ip",
        "--log-level",
        "--ebpf-object",
        "--cluster-redis",
        "--node-id",
        "--advertise-http",
        "--drain-timeout",
        "--cluster-ttl",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
}

/// `setpriv` from util-linux: run as root but with no capabilities at all, so bpf()
/// fails with EPERM the way it does for an unprivileged service.
fn without_capabilities() -> Vec<&'static str> {
    vec!["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
}

#[test]
fn ebpf_mode_without_capabilities_is_a_clear_error_and_binds_nothing() {
    if !require_root() {
        return;
    }
    let port = free_udp_port();
    let udp = format!("127.0.0.1:{port}");
    let mut args = without_capabilities();
    args.extend([
        BIN,
        "--steering",
        "ebpf",
        "--udp-bind",
        &udp,
        "--http-bind",
        "127.0.0.1:0",
    ]);
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("roomgate: eBPF steering"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("operation not permitted") || stderr.contains("EPERM"),
        "{stderr}"
    );
    assert!(
        port_is_free(port),
        "the program is loaded before the port is bound"
    );
}

#[test]
fn auto_mode_without_capabilities_falls_back_loudly() {
    if !require_root() {
        return;
    }
    let gw = Gateway::builder("auto", 2)
        .wrapper(without_capabilities())
        .start();
    assert_eq!(gw.mode, "connected");
    let status = gw.status();
    assert_eq!(status["mode"], "connected");
    let reason = status["fallback_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!reason.is_empty(), "fallback reason reported: {status}");
    assert!(
        gw.stderr().contains("FALLING BACK"),
        "warning logged:\n{}",
        gw.stderr()
    );
    let (_, metrics) = gw.get("/metrics");
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("roomgate_steering_fallback 1")),
        "fallback visible as a metric: {metrics}"
    );
    // And it works: a client completes a check.
    let p = gw.create("fallback-room");
    let c = Client::bind("127.0.0.1");
    assert_eq!(
        c.ice_check(gw.udp, &p),
        StunReply::Success { mapped: c.addr() }
    );
}

#[test]
fn corrupt_ebpf_object_fails_ebpf_mode_and_falls_back_in_auto() {
    let dir = std::env::temp_dir().join(format!("roomgate-obj-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("garbage.o");
    std::fs::write(&obj, b"\x7fELF but not really an object file").unwrap();
    let obj = obj.display().to_string();
    let (code, _, stderr, _) = run_ebpf_with_object(&obj);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("eBPF"), "{stderr}");

    let gw = Gateway::builder("auto", 1)
        .args(["--ebpf-object", obj.as_str()])
        .start();
    assert_eq!(gw.mode, "connected");
    assert!(gw.status()["fallback_reason"]
        .as_str()
        .is_some_and(|r| r.contains("eBPF")));
}

#[test]
fn sigterm_stops_cleanly_and_releases_the_port() {
    let steering = if unsafe { libc::geteuid() } == 0 {
        "ebpf"
    } else {
        "connected"
    };
    let mut gw = Gateway::start(steering, 2);
    let port = gw.udp.port();
    assert!(!port_is_free(port));
    assert_eq!(gw.stop(), Some(0), "exit 0 on SIGTERM");
    assert!(port_is_free(port), "sockets released");
}

#[test]
fn refuses_to_join_another_process_reuseport_group() {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    let udp = format!("127.0.0.1:{port}");
    let (code, _, stderr, _) = run(&[
        "--steering",
        "connected",
        "--udp-bind",
        &udp,
        "--http-bind",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already used by"), "{stderr}");
}

#[test]
fn config_file_is_honoured() {
    let dir = std::env::temp_dir().join(format!("roomgate-cfg-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ok.toml");
    std::fs::write(
        &cfg,
        "threads = 3\nsteering = \"connected\"\nudp_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\npublic_ip = \"198.51.100.4\"\n",
    )
    .unwrap();
    let gw = Gateway::spawn_raw(vec!["--config".into(), cfg.display().to_string()]);
    assert_eq!(gw.threads, 3);
    let p = gw.create("cfg-room");
    assert_eq!(p.candidate.ip().to_string(), "198.51.100.4");
}

/// The object built with the program's `verifier-reject` feature (by `cargo xtask test`).
fn rejected_object() -> String {
    let path = std::env::var("ROOMGATE_EBPF_REJECTED_OBJECT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/ebpf-verifier-reject/bpfel-unknown-none/release/roomgate-ebpf"
        )
        .to_owned()
    });
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} missing: run the tests through `cargo xtask test`, which builds it"
    );
    path
}

#[test]
fn verifier_rejection_reports_the_verifier_log() {
    if !require_root() {
        return;
    }
    let obj = rejected_object();
    let (code, stdout, stderr, _) = run_ebpf_with_object(&obj);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stdout.contains("ready"));
    assert!(
        stderr.contains("the kernel refused the steering program"),
        "{stderr}"
    );
    assert!(stderr.contains("verifier log:"), "{stderr}");
    assert!(
        stderr.contains("invalid access to packet"),
        "the kernel's own words: {stderr}"
    );

    // auto: the same rejection becomes a loud fallback that carries the log.
    let gw = Gateway::builder("auto", 1)
        .args(["--ebpf-object", obj.as_str()])
        .start();
    assert_eq!(gw.mode, "connected");
    let reason = gw.status()["fallback_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("invalid access to packet"), "{reason}");
    assert!(gw.stderr().contains("FALLING BACK"), "{}", gw.stderr());
}

#[test]
fn metrics_addr_serves_metrics_on_its_own_listener() {
    let gw = Gateway::builder("connected", 1)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .start();
    let addr = gw.metrics.expect("ready line reports metrics=ADDR");
    let (code, body) = http("GET", &format!("http://{addr}/metrics"));
    assert_eq!(code, 200);
    assert!(
        body.as_str()
            .is_some_and(|b| b.contains("roomgate_build_info")),
        "{body}"
    );
    // Only /metrics there: the API stays on --http-bind.
    assert_eq!(http("GET", &format!("http://{addr}/api/status")).0, 404);
}

/// What the shipped systemd unit grants roomgate, read from the unit itself so that this
/// test proves the unit sufficient, not a copy of it.
struct UnitGrants {
    /// `AmbientCapabilities=`, e.g. `["bpf", "net_admin"]` (setpriv's names).
    capabilities: Vec<String>,
    /// `CapabilityBoundingSet=`, same form.
    bounding: Vec<String>,
    no_new_privileges: bool,
    /// `LimitMEMLOCK=` in prlimit's form (bytes or `unlimited`).
    memlock: String,
    user: String,
}

fn shipped_unit() -> UnitGrants {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/roomgate.service");
    let text = std::fs::read_to_string(path).expect("gateway/deploy/roomgate.service");
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{path} sets no {key}="))
            .trim()
            .to_owned()
    };
    let caps = |key: &str| -> Vec<String> {
        value(key)
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect()
    };
    let memlock = value("LimitMEMLOCK");
    let memlock = match memlock.as_str() {
        "infinity" => "unlimited".to_owned(),
        m => {
            // systemd's suffixes are powers of 1024.
            let (n, unit) = m.split_at(m.trim_end_matches(['K', 'M', 'G']).len());
            let n: u64 = n.parse().expect("LimitMEMLOCK number");
            let scale = match unit {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => 1,
            };
            (n * scale).to_string()
        }
    };
    UnitGrants {
        capabilities: caps("AmbientCapabilities"),
        bounding: caps("CapabilityBoundingSet"),
        no_new_privileges: value("NoNewPrivileges") == "yes",
        memlock,
        user: value("User"),
    }
}

/// The unit's memlock limit, unless this test may not raise the hard limit that far (no
/// CAP_SYS_RESOURCE, as in some containers) on a kernel that does not charge BPF memory
/// to RLIMIT_MEMLOCK (5.11+): then the current hard limit, which cannot matter there.
fn memlock_to_apply(unit: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("own status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return unit.to_owned();
    }
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid rlimit struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut hard) },
        0
    );
    let fits = hard.rlim_max == libc::RLIM_INFINITY
        || unit.parse::<u64>().is_ok_and(|u| u <= hard.rlim_max);
    if fits {
        return unit.to_owned();
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    assert!(
        (major, minor) >= (5, 11),
        "on {release} BPF maps count against RLIMIT_MEMLOCK, so the unit's {unit} must be applied, which needs CAP_SYS_RESOURCE"
    );
    eprintln!("note: no CAP_SYS_RESOURCE to apply the unit's memlock {unit}; using the hard limit {}, which kernel {} does not charge BPF maps to", hard.rlim_max, release.trim());
    hard.rlim_max.to_string()
}

/// eBPF mode with what the shipped unit grants and nothing more: a non-root user
/// (nobody stands in for the unit's system user), no_new_privs, exactly the unit's
/// ambient and bounding capabilities (CAP_BPF + CAP_NET_ADMIN: no CAP_PERFMON, no
/// CAP_SYS_ADMIN) and the unit's RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF
/// maps to. `cargo xtask test --kernels` runs this on Linux 5.10 too. Regression: logic
/// threads once reopened the flow map by id, which needs CAP_SYS_ADMIN, and the USERNAME
/// scan once needed CAP_PERFMON.
#[test]
fn ebpf_mode_runs_as_the_units_user_with_only_its_capabilities() {
    if !require_root() {
        return;
    }
    let unit = shipped_unit();
    assert_eq!(unit.capabilities, ["bpf", "net_admin"], "least privilege");
    assert_eq!(unit.bounding, unit.capabilities);
    assert!(unit.no_new_privileges);
    assert_ne!(unit.user, "root");
    let memlock = memlock_to_apply(&unit.memlock);
    let caps = format!("-all,+{}", unit.capabilities.join(",+"));
    let bounding = format!("-all,+{}", unit.bounding.join(",+"));
    let gw = Gateway::builder("ebpf", 2)
        .wrapper([
            "prlimit".to_owned(),
            format!("--memlock={memlock}:{memlock}"),
            "--".to_owned(),
            "setpriv".to_owned(),
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
            "--no-new-privs".to_owned(),
            format!("--bounding-set={bounding}"),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            "--".to_owned(),
        ])
        .start();
    assert_eq!(gw.mode, "ebpf", "{}", gw.stderr());
    // The process really runs with only those: read its credentials from the kernel.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    // CAP_NET_ADMIN is bit 12, CAP_BPF bit 39.
    let two = format!("{:016x}", (1u64 << 12) | (1u64 << 39));
    assert_eq!(field("CapEff:"), two, "{status}");
    assert_eq!(field("CapBnd:"), two, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert!(field("Uid:").starts_with("65534"), "{status}");
    let p = gw.create("few-caps");
    let c = Client::bind("127.0.0.1");
    assert_eq!(
        c.ice_check(gw.udp, &p),
        StunReply::Success { mapped: c.addr() }
    );
    c.send(gw.udp, &fake_dtls(1));
    assert!(eventually(Duration::from_secs(5), || {
        sum_threads(&gw.status(), "session_datagrams") == 1
    }));
    // The program steered: each check (one, or more if a reply was slow) by room, the
    // DTLS datagram by the flow the owning thread pinned, nothing dropped.
    let counters = gw.status();
    let by_room = ebpf_counter(&counters, "steered_by_room");
    assert!(by_room >= 1, "{counters}");
    assert_eq!(ebpf_counter(&counters, "steered_by_flow"), 1, "{counters}");
    assert_eq!(
        ebpf_counter(&counters, "packets"),
        by_room + 1,
        "every datagram steered: {counters}"
    );
}
