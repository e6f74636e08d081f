//! Monitoring against a real Prometheus (Debian's `prometheus` package, installed by
//! `cargo xtask test`): the exposition is valid (`promtool check metrics`), labels are
//! bounded, the eBPF counters on /metrics match /api/status, the rules file passes
//! `promtool check rules`, and every PromQL expression of the dashboard and of the
//! alert rules is evaluated by Prometheus against a gateway under traffic. The media
//! plane's families (DTLS, SRTP, forwarding) are exposed per thread from the start, at 0
//! until media flows, so every panel and alert has series to evaluate.
//! The dashboard JSON is also type-checked by tsc against Grafana's published schema
//! (`@grafana/schema`, pinned in grafana/schema-check/).
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use gateway::{media::UnprotectFailure, stats::HANDSHAKE_BUCKETS_MS};
use serde_json::Value;
use support::*;

/// Media-plane counters and gauges with a `thread` label only.
const MEDIA_PER_THREAD: [&str; 43] = [
    "roomgate_dtls_closed_total",
    "roomgate_dtls_records_dropped_total",
    "roomgate_srtp_before_keys_total",
    "roomgate_srtp_protect_failures_total",
    "roomgate_rtp_packets_received_total",
    "roomgate_rtp_packets_forwarded_total",
    "roomgate_rtp_unknown_ssrc_total",
    "roomgate_rtp_malformed_total",
    "roomgate_rtp_payload_type_mismatch_total",
    "roomgate_rtp_dropped_before_bind_total",
    "roomgate_rtcp_unknown_ssrc_total",
    "roomgate_unknown_member_packets_total",
    "roomgate_rtcp_packets_received_total",
    "roomgate_rtcp_malformed_total",
    "roomgate_nacks_received_total",
    "roomgate_retransmissions_total",
    "roomgate_plis_received_total",
    "roomgate_firs_received_total",
    "roomgate_plis_sent_total",
    "roomgate_plis_rate_limited_total",
    "roomgate_receiver_reports_sent_total",
    "roomgate_sender_reports_forwarded_total",
    "roomgate_codec_mismatch_total",
    "roomgate_media_sessions_timed_out_total",
    "roomgate_publishers",
    "roomgate_subscribers",
    "roomgate_dtls_flights_repeated_total",
    "roomgate_rtp_unknown_rid_total",
    "roomgate_rtp_bad_extension_total",
    "roomgate_rtp_foreign_extension_total",
    "roomgate_twcc_feedback_sent_total",
    "roomgate_twcc_feedback_received_total",
    "roomgate_layer_switches_total",
    "roomgate_layer_switch_keyframe_requests_total",
    "roomgate_probe_packets_total",
    "roomgate_nacks_sent_total",
    "roomgate_nack_gave_up_total",
    "roomgate_rtp_reordered_total",
    "roomgate_nacks_spurious_total",
    "roomgate_rtx_repairs_received_total",
    "roomgate_rtx_duplicates_received_total",
    "roomgate_rtx_padding_received_total",
    "roomgate_rtx_sent_total",
];
const DTLS_HANDSHAKES: &str = "roomgate_dtls_handshakes_total";
const UNPROTECT_FAILURES: &str = "roomgate_srtp_unprotect_failures_total";
const HANDSHAKE_DURATION: &str = "roomgate_dtls_handshake_duration_seconds";
const NACK_MISSES: &str = "roomgate_nack_misses_total";
const ESTIMATES: &str = "roomgate_estimated_bitrate_bps";
const NACK_ROUND_TRIP: &str = "roomgate_nack_round_trip_seconds";

/// Every media family: the dashboard must show each, filtered by the thread variable.
fn media_families() -> Vec<&'static str> {
    let mut all = MEDIA_PER_THREAD.to_vec();
    all.extend([
        DTLS_HANDSHAKES,
        UNPROTECT_FAILURES,
        HANDSHAKE_DURATION,
        NACK_MISSES,
        ESTIMATES,
        NACK_ROUND_TRIP,
    ]);
    all
}

type Labels<'a> = BTreeMap<&'a str, &'a str>;

/// The samples of one series name in a text exposition: labels and value.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(Labels<'a>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}').expect("closed label set")),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label pair");
                (k, v.trim_matches('"'))
            })
            .collect();
        out.push((labels, value.parse().expect("numeric sample")));
    }
    out
}

/// The label values (in `keys` order) of `name`'s samples; asserts the family's TYPE
/// and that its samples carry exactly the labels `keys`.
fn label_sets(text: &str, name: &str, kind: &str, keys: &[&str]) -> BTreeSet<Vec<String>> {
    assert!(
        text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
        "{name} is exposed as a {kind}"
    );
    let mut want: Vec<&str> = keys.to_vec();
    want.sort_unstable();
    samples(text, name)
        .into_iter()
        .map(|(labels, _)| {
            let got: Vec<&str> = labels.keys().copied().collect();
            assert_eq!(got, want, "label names of {name}");
            keys.iter().map(|k| labels[k].to_owned()).collect()
        })
        .collect()
}

/// Every combination of one value per label, in order.
fn product(values: &[&[&str]]) -> BTreeSet<Vec<String>> {
    values.iter().fold(BTreeSet::from([Vec::new()]), |acc, vs| {
        acc.iter()
            .flat_map(|prefix: &Vec<String>| {
                vs.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((*v).to_owned());
                    p
                })
            })
            .collect()
    })
}

/// The media families: present for every thread, with only bounded labels whose
/// values come from fixed sets, and the handshake histogram with its fixed buckets.
fn assert_media_families(text: &str, threads: usize) {
    let thread_ids: Vec<String> = (0..threads).map(|t| t.to_string()).collect();
    let t: Vec<&str> = thread_ids.iter().map(String::as_str).collect();
    for name in MEDIA_PER_THREAD {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let got = label_sets(text, name, kind, &["thread"]);
        assert_eq!(got, product(&[&t]), "{name}: one series per thread");
    }
    let got = label_sets(text, NACK_MISSES, "counter", &["thread", "reason"]);
    let reasons = ["not_buffered", "too_old", "rate_limited", "not_forwarded"];
    assert_eq!(got, product(&[&t, &reasons]), "{NACK_MISSES}");
    let got = label_sets(text, DTLS_HANDSHAKES, "counter", &["thread", "outcome"]);
    let outcomes = ["started", "completed", "failed"];
    assert_eq!(got, product(&[&t, &outcomes]), "{DTLS_HANDSHAKES}");
    let got = label_sets(
        text,
        UNPROTECT_FAILURES,
        "counter",
        &["thread", "kind", "reason"],
    );
    let reasons: Vec<&str> = UnprotectFailure::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(
        got,
        product(&[&t, &["srtp", "srtcp"], &reasons]),
        "{UNPROTECT_FAILURES}"
    );
    // Every place the kernel can drop or refuse a datagram has one series per thread and
    // kind, present (at zero) before anything was lost.
    let got = label_sets(
        text,
        "roomgate_socket_receive_drops_total",
        "counter",
        &["thread", "socket"],
    );
    assert_eq!(
        got,
        product(&[&t, &["group", "connected"]]),
        "receive drops"
    );
    let got = label_sets(
        text,
        "roomgate_send_errors_total",
        "counter",
        &["thread", "errno"],
    );
    let errnos = [
        "eagain",
        "enobufs",
        "eperm",
        "econnrefused",
        "ehostunreach",
        "emsgsize",
        "other",
    ];
    assert_eq!(got, product(&[&t, &errnos]), "send errors");

    // The histogram: HANDSHAKE_BUCKETS_MS in seconds plus +Inf, cumulative, per thread,
    // and _count equal to the +Inf bucket.
    assert!(text
        .lines()
        .any(|l| l == format!("# TYPE {HANDSHAKE_DURATION} histogram")));
    let buckets = samples(text, &format!("{HANDSHAKE_DURATION}_bucket"));
    let counts = samples(text, &format!("{HANDSHAKE_DURATION}_count"));
    let sums = samples(text, &format!("{HANDSHAKE_DURATION}_sum"));
    for th in &thread_ids {
        let mine: Vec<&(Labels, f64)> = buckets
            .iter()
            .filter(|(l, _)| l.get("thread") == Some(&th.as_str()))
            .collect();
        assert!(mine
            .iter()
            .all(|(l, _)| l.len() == 2 && l.contains_key("le")));
        let les: Vec<f64> = mine
            .iter()
            .map(|(l, _)| l["le"].parse::<f64>().expect("le is a number"))
            .collect();
        let mut want: Vec<f64> = HANDSHAKE_BUCKETS_MS
            .iter()
            .map(|ms| *ms as f64 / 1e3)
            .collect();
        want.push(f64::INFINITY);
        assert_eq!(les, want, "{HANDSHAKE_DURATION} buckets of thread {th}");
        let values: Vec<f64> = mine.iter().map(|(_, v)| *v).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {values:?}"
        );
        let count = counts
            .iter()
            .find(|(l, _)| l.get("thread") == Some(&th.as_str()))
            .map(|(_, v)| *v);
        assert_eq!(count, values.last().copied(), "_count is the +Inf bucket");
        assert!(sums
            .iter()
            .any(|(l, v)| l.get("thread") == Some(&th.as_str()) && l.len() == 1 && *v >= 0.0));
    }
}

/// The metric selectors (`roomgate_name` or `roomgate_name{matchers}`) in a PromQL
/// expression.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("roomgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut sel = &tail[..end];
        if tail[end..].starts_with('{') {
            let close = tail[end..].find('}').expect("closed matcher") + end;
            sel = &tail[..=close];
        }
        out.push(sel.to_owned());
        rest = &tail[sel.len()..];
    }
    out
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.is_file(),
        "{} missing: `cargo xtask test` installs Debian's prometheus package",
        p.display()
    );
    p
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

use support::redis::free_tcp_port;

fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("roomgate-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let rules = repo().join("grafana/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: roomgate\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = free_tcp_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn query(prom: &Prometheus, expr: &str) -> Value {
    let url = format!("{}/api/v1/query?query={}", prom.url, urlencode(expr));
    http("GET", &url).1
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana variables replaced the way Grafana would for "All threads".
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$thread", ".*")
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("grafana/dashboards/roomgate.json"))
        .expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    assert!(out.len() >= 10, "dashboard has its queries");
    out
}

fn traffic(gw: &Gateway, clients: &mut Vec<(Participant, Client)>) {
    for r in 0..6 {
        let p = gw.create(&format!("watched-{r}"));
        let c = Client::bind("127.0.0.1");
        assert!(matches!(c.ice_check(gw.udp, &p), StunReply::Success { .. }));
        clients.push((p, c));
    }
    // A few rejections too, so the error panels have something to show.
    let stranger = Client::bind("127.0.0.9");
    stranger.send(gw.udp, &fake_rtp(1));
    let _ = stranger.send_and_maybe_recv(
        gw.udp,
        &binding_request(&clients[0].0.ufrag, "x", "wrong-password-wrong-pwd", false),
        Duration::from_millis(200),
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(repo().join("grafana/alerts.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn exposition_is_valid_bounded_and_matches_status() {
    if !require_root() {
        return;
    }
    let gw = Gateway::start("ebpf", 2);
    let mut clients = Vec::new();
    traffic(&gw, &mut clients);
    for (_, c) in &clients {
        c.send(gw.udp, &fake_dtls(1));
    }
    assert!(eventually(Duration::from_secs(5), || sum_threads(
        &gw.status(),
        "session_datagrams"
    ) == 6));
    let (code, text) = gw.get("/metrics");
    assert_eq!(code, 200);
    let text = text.as_str().expect("text").to_owned();

    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Bounded labels: only these names, and no room or participant ID anywhere.
    let allowed: BTreeSet<&str> = [
        "thread",
        "mode",
        "outcome",
        "branch",
        "state",
        "le",
        "version",
        "ebpf_embedded",
        "kind",
        "reason",
        "socket",
        "errno",
    ]
    .into();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(labels) = line
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(l, _)| l)
        {
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let name = pair.split('=').next().unwrap_or_default();
                assert!(allowed.contains(name), "unbounded label {name:?} in {line}");
            }
        }
        for (p, _) in &clients {
            assert!(
                !line.contains(&p.participant) && !line.contains("watched-"),
                "ID leaked: {line}"
            );
        }
    }
    assert_media_families(&text, 2);
    // The eBPF counters on /metrics are the ones the steering tests assert.
    let status = gw.status();
    for (branch, v) in status["ebpf"].as_object().expect("ebpf counters") {
        if branch == "flows_capacity" {
            continue;
        }
        let line = format!("roomgate_ebpf_decisions_total{{branch=\"{branch}\"}} ");
        let got: Option<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok());
        // Counters only grow; /metrics was read first.
        let now = v.as_u64().unwrap_or(0);
        assert!(
            got.is_some_and(|g| g <= now && g + 2 >= now),
            "{branch}: metrics {got:?}, status {now}"
        );
    }
}

#[test]
fn prometheus_evaluates_every_dashboard_and_alert_expression() {
    if !require_root() {
        return;
    }
    // Cluster mode (one node on a real Redis), so the Cluster row and the cluster alerts
    // have series too; everything else on the dashboard is the same as without it.
    let redis = support::redis::RedisServer::loopback();
    let http_port = free_tcp_port();
    let gw = Gateway::builder("ebpf", 2)
        .set("--http-bind", format!("127.0.0.1:{http_port}"))
        .args([
            "--advertise-http".to_owned(),
            format!("http://127.0.0.1:{http_port}"),
            "--cluster-redis".to_owned(),
            redis.url(),
            "--node-id".to_owned(),
            "monitoring".to_owned(),
            "--cluster-prefix".to_owned(),
            format!("monitoring{}", std::process::id()),
        ])
        .start();
    let prom = start_prometheus(&gw.http.to_string());
    assert!(
        eventually(Duration::from_secs(30), || try_get(&format!(
            "{}/-/ready",
            prom.url
        )) == Some(200)),
        "Prometheus became ready"
    );
    let mut clients = Vec::new();
    traffic(&gw, &mut clients);
    // Keep media flowing while Prometheus scrapes a few times.
    let up = eventually(Duration::from_secs(30), || {
        for (i, (_, c)) in clients.iter().enumerate() {
            c.send(gw.udp, &fake_rtp(i as u16));
        }
        let v = query(&prom, "count_over_time(up{job=\"roomgate\"}[1m])");
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 6)
    });
    assert!(up, "Prometheus scraped roomgate: {}", query(&prom, "up"));

    for expr in dashboard_exprs() {
        let q = concrete(&expr);
        let v = query(&prom, &q);
        assert_eq!(v["status"], "success", "{q}: {v}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "dashboard query returns data: {q}\n{v}");
    }

    // Alert rules: loaded and evaluated by Prometheus without error.
    let ok = eventually(Duration::from_secs(15), || {
        let (_, v) = http("GET", &format!("{}/api/v1/rules", prom.url));
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        !rules.is_empty()
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    let (_, rules) = http("GET", &format!("{}/api/v1/rules", prom.url));
    assert!(ok, "every alert rule evaluated with health ok: {rules}");
    let text = std::fs::read_to_string(repo().join("grafana/alerts.yml")).expect("rules");
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("expr: ")) {
        let v = query(&prom, line);
        assert_eq!(v["status"], "success", "{line}: {v}");
        // An alert that does not fire returns nothing, so prove instead that every
        // series it reads exists: a misspelt name or label value would never fire.
        for sel in selectors(line) {
            let v = query(&prom, &format!("group({sel})"));
            let found = v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            assert!(
                found,
                "alert expression reads existing series: {sel} in {line}\n{v}"
            );
        }
    }

    // Redis goes away: the node reports it and the critical alert becomes pending (it
    // fires after its 30 s `for`, which promtool_fires_the_cluster_alerts checks).
    redis.stop();
    let pending = eventually(Duration::from_secs(20), || {
        let (_, v) = http("GET", &format!("{}/api/v1/alerts", prom.url));
        v["data"]["alerts"].as_array().is_some_and(|alerts| {
            alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == "RoomgateClusterRedisUnreachable")
        })
    });
    let (_, alerts) = http("GET", &format!("{}/api/v1/alerts", prom.url));
    assert!(
        pending,
        "RoomgateClusterRedisUnreachable is pending once Redis is gone: {alerts}\n{}",
        query(&prom, "roomgate_cluster_redis_up")
    );
}

/// The cluster alerts fire on their conditions and stay quiet just below them, evaluated
/// by Prometheus' own rule engine (`promtool test rules`) on synthetic series.
#[test]
fn promtool_fires_the_cluster_alerts() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-alert-rules");
    std::fs::create_dir_all(&dir).expect("test dir");
    let rules = repo().join("grafana/alerts.yml");
    let unreachable_summary =
        "roomgate node n1:8080 cannot reach the cluster directory (Redis): new rooms are refused";
    let flapping_summary =
        "roomgate node n1:8080 lost and regained Redis more than 3 times in 15 minutes";
    let lost_summary = "roomgate node n1:8080 gave up rooms another node had claimed: their participants were disconnected";
    // The descriptions are the rule file's own, expanded: promtool compares every annotation.
    let description = |alert: &str, value: &str| -> String {
        let text = std::fs::read_to_string(&rules).expect("rules");
        let start = text
            .find(&format!("alert: {alert}\n"))
            .unwrap_or_else(|| panic!("{alert} in alerts.yml"));
        let body: Vec<&str> = text[start..]
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("description: >-"))
            .skip(1)
            .take_while(|l| l.starts_with("            "))
            .map(str::trim)
            .collect();
        body.join(" ").replace("{{ $value | humanize }}", value)
    };
    let test = serde_json::json!({
        "rule_files": [rules.to_str().expect("UTF-8 path")],
        "evaluation_interval": "10s",
        "tests": [
            {
                "interval": "10s",
                "input_series": [{
                    "series": "roomgate_cluster_redis_up{instance=\"n1:8080\", job=\"roomgate\"}",
                    // Up for 20 s, then down.
                    "values": "1 1 0x20",
                }],
                "alert_rule_test": [
                    // Down for 20 s: still within `for: 30s`.
                    {"eval_time": "40s", "alertname": "RoomgateClusterRedisUnreachable", "exp_alerts": []},
                    {"eval_time": "60s", "alertname": "RoomgateClusterRedisUnreachable", "exp_alerts": [{
                        "exp_labels": {"severity": "critical", "instance": "n1:8080", "job": "roomgate"},
                        "exp_annotations": {
                            "summary": unreachable_summary,
                            "description": description("RoomgateClusterRedisUnreachable", ""),
                        },
                    }]},
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "roomgate_cluster_redis_reconnects_total{instance=\"n1:8080\", job=\"roomgate\"}",
                        // Three reconnects, then a fourth at 6 minutes.
                        "values": "0 1 2 3 3 3 4 4 4 4 4",
                    },
                    {
                        "series": "roomgate_cluster_claims_lost_total{instance=\"n1:8080\", job=\"roomgate\"}",
                        "values": "0 0 0 0 0 0 0 0 1 1 1",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "RoomgateClusterRedisFlapping", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "RoomgateClusterRedisFlapping", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "instance": "n1:8080", "job": "roomgate"},
                        "exp_annotations": {
                            "summary": flapping_summary,
                            "description": description("RoomgateClusterRedisFlapping", "4"),
                        },
                    }]},
                    {"eval_time": "7m", "alertname": "RoomgateClusterClaimsLost", "exp_alerts": []},
                    {"eval_time": "8m", "alertname": "RoomgateClusterClaimsLost", "exp_alerts": [{
                        "exp_labels": {"severity": "critical", "instance": "n1:8080", "job": "roomgate"},
                        "exp_annotations": {
                            "summary": lost_summary,
                            "description": description("RoomgateClusterClaimsLost", ""),
                        },
                    }]},
                ],
            },
        ],
    });
    // JSON is YAML, so promtool reads the test file as written.
    let file = dir.join("cluster-alerts.test.yml");
    std::fs::write(&file, test.to_string()).expect("write rule test");
    let out = Command::new(tool("promtool"))
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_has_the_variables_and_rows_operators_need() {
    let text = std::fs::read_to_string(repo().join("grafana/dashboards/roomgate.json"))
        .expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"thread"),
        "{vars:?}"
    );
    let rows: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Steering overview",
            "Per-thread load",
            "Media",
            "Errors",
            "Simulcast and congestion control",
            "Cluster"
        ]
    );
    for p in dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
    {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the variable",
            p["title"]
        );
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} is described",
            p["title"]
        );
    }
    // The media families are all on the dashboard, and the thread variable filters them.
    let exprs = dashboard_exprs();
    for family in media_families() {
        let uses: Vec<&String> = exprs.iter().filter(|e| e.contains(family)).collect();
        assert!(!uses.is_empty(), "{family} is on the dashboard");
        for e in uses {
            assert!(
                e.contains("thread=~\"$thread\""),
                "{e} follows the thread variable"
            );
        }
    }
    // Provisioning files point Grafana at the dashboard folder and at Prometheus.
    for f in [
        "grafana/provisioning/dashboards/roomgate.yml",
        "grafana/provisioning/datasources/prometheus.yml",
    ] {
        let y = std::fs::read_to_string(repo().join(f)).expect(f);
        assert!(y.contains("apiVersion: 1"), "{f}");
    }
}

/// Runs `program args` and returns its combined output, or panics saying what to install.
fn node_tool(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} not runnable ({e}): the Grafana schema check needs Node.js and npm \
                 on PATH (Debian: `apt-get install nodejs npm`)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The dashboard against Grafana's published schema (`@grafana/schema`, see
/// grafana/schema-check/schema.ts): the JSON becomes an object literal typed
/// `CheckedDashboard`, so tsc rejects unknown keys, wrong types and values outside the
/// schema's enums, including panel options, field config and Prometheus targets.
#[test]
fn dashboard_matches_grafana_schema() {
    let check = repo().join("grafana/schema-check");
    let (ok, version) = node_tool("node", &["--version"], &check);
    assert!(ok, "node --version failed: {version}");

    // npm ci only when node_modules does not match the committed lock file.
    let lock = std::fs::read(check.join("package-lock.json")).expect("package-lock.json");
    let stamp = check.join("node_modules/.roomgate-lock");
    let tsc = check.join("node_modules/.bin/tsc");
    if !tsc.is_file() || std::fs::read(&stamp).ok().as_ref() != Some(&lock) {
        let prefix = check.to_str().expect("UTF-8 path");
        let (ok, out) = node_tool(
            "npm",
            &["ci", "--prefix", prefix, "--no-audit", "--no-fund"],
            &check,
        );
        assert!(ok, "npm ci --prefix {prefix} failed:\n{out}");
        std::fs::write(&stamp, &lock).expect("write node_modules stamp");
    }

    // The JSON verbatim from the first line on, so tsc's line numbers are the
    // dashboard's; the import (hoisted) comes last.
    let text = std::fs::read_to_string(repo().join("grafana/dashboards/roomgate.json"))
        .expect("dashboard");
    serde_json::from_str::<Value>(&text).expect("dashboard is JSON");
    let schema = check.join("schema");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grafana-schema-check");
    std::fs::create_dir_all(&dir).expect("generated dir");
    let source = format!(
        "const dashboard: CheckedDashboard = {};\nvoid dashboard;\nimport type {{ CheckedDashboard }} from {};\n",
        text.trim_end(),
        Value::from(schema.to_str().expect("UTF-8 path"))
    );
    std::fs::write(dir.join("roomgate.json.gen.ts"), source).expect("write .ts");
    let config = serde_json::json!({
        "extends": check.join("tsconfig.json").to_str().expect("UTF-8 path"),
        "files": ["roomgate.json.gen.ts"],
    });
    std::fs::write(dir.join("tsconfig.json"), config.to_string()).expect("write tsconfig");

    let tsc = tsc.to_str().expect("UTF-8 path");
    let (ok, out) = node_tool(tsc, &["-p", ".", "--pretty", "false"], &dir);
    assert!(
        ok,
        "grafana/dashboards/roomgate.json does not match Grafana's dashboard schema \
         (node {}; line numbers are the dashboard's; generated file in {}):\n{out}",
        version.trim(),
        dir.display()
    );
}
