//! Cluster mode against a Redis that requires TLS and a password: the node verifies the
//! server against `--cluster-redis-ca` and authenticates with the password in the URL;
//! a wrong password or an unverifiable server leaves the node serving but refusing new
//! rooms (503), with the failures counted. Loopback only, no namespaces needed.
mod support;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::*;

const PASSWORD: &str = "cluster-tls-secret";

struct TlsRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    fn start(dir: &Path) -> TlsRedis {
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
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-auth-clients", "no", "--requirepass", PASSWORD])
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; `cargo xtask setup` installs it)");
        let redis = TlsRedis {
            child,
            port,
            dir: dir.to_owned(),
        };
        assert!(
            eventually(Duration::from_secs(10), || redis.cli(&["PING"]) == "PONG"),
            "TLS redis-server did not answer PING"
        );
        redis
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--tls"])
            .arg("--cacert")
            .arg(self.dir.join("ca.pem"))
            .args(["-a", PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let redis = TlsRedis::start(&dir);
    let prefix = format!("tls{}", std::process::id());
    let ca = dir.join("ca.pem");

    // Right CA, right password: the node registers and claims a room over TLS.
    let good = node(&redis.url(PASSWORD), Some(&ca), "tls-good", &prefix);
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
    let wrong_password = node(&redis.url("wrong"), Some(&ca), "tls-badpass", &prefix);
    let unverified = node(&redis.url(PASSWORD), None, "tls-noca", &prefix);
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
