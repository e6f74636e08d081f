//! A real `redis-server` (Debian package) for the cluster tests: in a network namespace
//! or on the host's loopback, optionally with a password and TLS, restartable on the same
//! address with no data (`--save ""`, no AOF), as a Redis restart without persistence is.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use super::{eventually, netns::in_netns};

/// Certificate files of a TLS Redis (PEM).
pub struct RedisTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct RedisServer {
    /// `None`: the host's own namespace.
    ns: Option<String>,
    ip: IpAddr,
    port: u16,
    pub password: Option<String>,
    tls: Option<RedisTls>,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// In namespace `ns` on `ip:port`.
    pub fn start_in(ns: &str, ip: IpAddr, port: u16, password: Option<&str>) -> RedisServer {
        Self::launch(Some(ns), ip, port, password, None)
    }

    /// On 127.0.0.1, a free port, in the host's namespace.
    pub fn loopback() -> RedisServer {
        Self::launch(
            None,
            Ipv4Addr::LOCALHOST.into(),
            free_tcp_port(),
            None,
            None,
        )
    }

    /// On 127.0.0.1 with TLS only (no plain port) and a password.
    pub fn loopback_tls(tls: RedisTls, password: &str) -> RedisServer {
        let port = free_tcp_port();
        Self::launch(
            None,
            Ipv4Addr::LOCALHOST.into(),
            port,
            Some(password),
            Some(tls),
        )
    }

    fn launch(
        ns: Option<&str>,
        ip: IpAddr,
        port: u16,
        password: Option<&str>,
        tls: Option<RedisTls>,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "roomgate-redis-{}-{}-{port}",
            ns.unwrap_or("host"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let redis = RedisServer {
            ns: ns.map(str::to_owned),
            ip,
            port,
            password: password.map(str::to_owned),
            tls,
            dir,
            child: Mutex::new(None),
        };
        redis.start_again();
        redis
    }

    /// `cmd` run in this server's namespace.
    fn command(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Start (again) on the same address, with no data.
    pub fn start_again(&self) {
        let mut slot = self.child.lock().expect("redis child lock");
        assert!(slot.is_none(), "redis-server is already running");
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let mut cmd = self.command("redis-server");
        match &self.tls {
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        let child = cmd
            .args(["--bind", &self.ip.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup redis log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server (Debian package redis-server; `cargo xtask setup` installs it)");
        *slot = Some(child);
        drop(slot);
        assert!(
            eventually(Duration::from_secs(10), || self.cli(&["PING"]) == "PONG"),
            "redis-server on {} did not answer PING; log:\n{}",
            self.addr(),
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// SIGKILL, reap, and wait until the port refuses connections.
    pub fn stop(&self) {
        let child = self.child.lock().expect("redis child lock").take();
        let Some(mut child) = child else { return };
        let _ = child.kill();
        let _ = child.wait();
        let addr = self.addr();
        let refused = || {
            eventually(Duration::from_secs(5), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            })
        };
        let closed = match &self.ns {
            Some(ns) => in_netns(ns, refused),
            None => refused(),
        };
        assert!(closed, "redis port {addr} still open after SIGKILL");
    }

    pub fn running(&self) -> bool {
        self.child
            .lock()
            .is_ok_and(|mut c| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }

    /// `redis-cli` in the server's namespace; trimmed stdout (empty when the command failed).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self.command("redis-cli");
        cmd.args(["-h", &self.ip.to_string(), "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `redis[s]://[:password@]ip:port`.
    pub fn url(&self) -> String {
        self.url_with_password(self.password.as_deref())
    }

    /// The URL with another password (or none), for clients that must be refused.
    pub fn url_with_password(&self, password: Option<&str>) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match password {
            Some(p) => format!("{scheme}://:{p}@{}:{}", self.ip, self.port),
            None => format!("{scheme}://{}:{}", self.ip, self.port),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The directory holding the server's log (and its certificates, for TLS).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.child.lock() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port nothing listens on right now (the kernel's pick, released at once).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}
