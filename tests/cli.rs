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

/// The documented minimum for eBPF mode: CAP_BPF (program, maps), CAP_NET_ADMIN
/// (reuseport attach) and CAP_PERFMON (the verifier's pointer-arithmetic rules for the
/// bounded USERNAME scan). Regression: logic threads once reopened the flow map by id,
/// which needs CAP_SYS_ADMIN, and `auto` then died instead of running.
#[test]
fn ebpf_mode_runs_with_only_bpf_net_admin_and_perfmon() {
    if !require_root() {
        return;
    }
    let caps = "-all,+bpf,+net_admin,+perfmon";
    let gw = Gateway::builder("ebpf", 2)
        .wrapper([
            "setpriv".to_owned(),
            format!("--bounding-set={caps}"),
            format!("--inh-caps={caps}"),
            "--".to_owned(),
        ])
        .start();
    assert_eq!(gw.mode, "ebpf", "{}", gw.stderr());
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
}
