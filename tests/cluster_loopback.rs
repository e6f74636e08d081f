//! Cluster mode on loopback, no namespaces needed:
//! - against a Redis that requires TLS and a password: the node verifies the server
//!   against `--cluster-redis-ca` and authenticates with the password in the URL; a wrong
//!   password or an unverifiable server leaves the node serving but refusing new rooms
//!   (503), with the failures counted;
//! - two processes with one `--node-id`: the second refuses to start.
mod support;

use std::{path::Path, time::Duration};

use support::{
    redis::{RedisServer, RedisTls},
    *,
};

const PASSWORD: &str = "cluster-tls-secret";

/// A CA and a server certificate for 127.0.0.1, written to `dir`.
fn certificates(dir: &Path) -> RedisTls {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "roomgate test CA");
    let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign server");
    let tls = RedisTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&tls.ca, ca.pem()).unwrap();
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, key.serialize_pem()).unwrap();
    tls
}

fn node(redis_url: &str, ca: Option<&Path>, id: &str, prefix: &str) -> Gateway {
    let mut b = Gateway::builder("connected", 1).args([
        "--cluster-redis",
        redis_url,
        "--node-id",
        id,
        "--cluster-prefix",
        prefix,
    ]);
    if let Some(ca) = ca {
        b = b.arg("--cluster-redis-ca").arg(ca.display().to_string());
    }
    b.start()
}

fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric_sum(name).unwrap_or(-1.0)
}

#[test]
fn tls_and_password_are_required_and_checked() {
    let dir = std::env::temp_dir().join(format!("roomgate-cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = RedisServer::loopback_tls(certificates(&dir), PASSWORD);
    let prefix = format!("tls{}", std::process::id());
    let ca = dir.join("ca.pem");

    // Right CA, right password: the node registers and claims a room over TLS.
    let good = node(&redis.url(), Some(&ca), "tls-good", &prefix);
    assert_eq!(metric(&good, "roomgate_cluster_redis_up"), 1.0);
    let (status, body) = good.post("/api/rooms/tlsroom/participants");
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        redis.cli(&["GET", &format!("{prefix}:room:tlsroom")]),
        "tls-good",
        "the claim is in Redis"
    );
    assert!(redis
        .cli(&["GET", &format!("{prefix}:node:tls-good")])
        .contains("\"state\":\"active\""));

    // Wrong password, and a server the node cannot verify (system roots only): both
    // nodes run, refuse new rooms with a clear 503 and count the failures.
    let wrong_password = node(
        &redis.url_with_password(Some("wrong")),
        Some(&ca),
        "tls-badpass",
        &prefix,
    );
    let unverified = node(&redis.url(), None, "tls-noca", &prefix);
    for (gw, what) in [
        (&wrong_password, "wrong password"),
        (&unverified, "unverified server"),
    ] {
        assert_eq!(metric(gw, "roomgate_cluster_redis_up"), 0.0, "{what}");
        let (status, body) = gw.post("/api/rooms/tlsother/participants");
        assert_eq!(status, 503, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("unreachable"),
            "{what}: {body}"
        );
        assert!(
            metric(gw, "roomgate_cluster_redis_errors_total") >= 1.0,
            "{what}"
        );
        assert_eq!(
            metric(gw, "roomgate_cluster_rooms_refused_total"),
            1.0,
            "{what}: the refusal is counted"
        );
    }
    assert_eq!(
        redis.cli(&["EXISTS", &format!("{prefix}:node:tls-badpass")]),
        "0"
    );
    assert_eq!(
        redis.cli(&["EXISTS", &format!("{prefix}:node:tls-noca")]),
        "0"
    );
    assert_eq!(
        redis.cli(&["EXISTS", &format!("{prefix}:room:tlsother")]),
        "0"
    );
    drop((good, wrong_password, unverified));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_process_with_the_same_node_id_refuses_to_start() {
    let redis = RedisServer::loopback();
    let prefix = format!("dup{}", std::process::id());
    let first = node(&redis.url(), None, "twin", &prefix);
    let (status, body) = first.post("/api/rooms/twinroom/participants");
    assert_eq!(status, 201, "{body}");

    let started = std::time::Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["--steering", "connected", "--threads", "1"])
        .args(["--udp-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"])
        .args(["--cluster-redis", &redis.url(), "--node-id", "twin"])
        .args(["--cluster-prefix", &prefix, "--log-level", "error"])
        .output()
        .expect("run roomgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "never ready"
    );
    assert!(
        stderr.contains("--node-id twin is already used by a live node"),
        "{stderr}"
    );
    // It waited out one TTL (a predecessor that just died would have expired) first.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "gave up after {:?}",
        started.elapsed()
    );
    // The first one was not disturbed: same record, same claim.
    assert_eq!(
        redis.cli(&["GET", &format!("{prefix}:room:twinroom")]),
        "twin"
    );
    let record = redis.cli(&["GET", &format!("{prefix}:node:twin")]);
    assert!(record.contains(&first.http.to_string()), "{record}");
    let (status, _) = first.post("/api/rooms/twinroom/participants");
    assert_eq!(status, 201);
}
