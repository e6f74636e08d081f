//! Shared helpers for the integration tests: start the real `roomgate` binary, talk to
//! its HTTP API, and act as an ICE client with real STUN over real UDP sockets.
#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod redis;

use std::{
    io::{BufRead, BufReader, Read},
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use stun_rs::{
    attributes::{
        ice::{IceControlling, Priority, UseCandidate},
        stun::{Fingerprint, MessageIntegrity, UserName, XorMappedAddress},
    },
    methods::BINDING,
    HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_roomgate");

/// The binary to start: `ROOMGATE_BIN` lets a benchmark compare another build (an older
/// commit) under the same load; tests never set it.
fn binary() -> String {
    std::env::var("ROOMGATE_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// Privileged tests (eBPF, namespaces) need root. CI runs as root; elsewhere they fail
/// loudly rather than pass vacuously, unless explicitly skipped.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("ROOMGATE_SKIP_PRIVILEGED").is_some() {
        eprintln!("SKIPPED: needs root (ROOMGATE_SKIP_PRIVILEGED is set)");
        return false;
    }
    panic!("this test needs root (CAP_BPF, CAP_NET_ADMIN); run it via `sudo cargo xtask test` or set ROOMGATE_SKIP_PRIVILEGED=1");
}

/// A running gateway process, stopped with SIGTERM on drop.
pub struct Gateway {
    child: Option<Child>,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub mode: String,
    pub threads: usize,
    /// The separate metrics listener, when started with --metrics-addr.
    pub metrics: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

pub struct GatewayBuilder {
    args: Vec<String>,
    wrapper: Vec<String>,
}

impl GatewayBuilder {
    /// Set `flag` to `value`, replacing a default the builder already has.
    pub fn set(mut self, flag: &str, value: impl Into<String>) -> Self {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.into(),
            _ => {
                self.args.push(flag.into());
                self.args.push(value.into());
            }
        }
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Run the binary under a wrapper command (e.g. `ip netns exec NS`, `setpriv ...`).
    pub fn wrapper<I: IntoIterator<Item = S>, S: Into<String>>(mut self, w: I) -> Self {
        self.wrapper = w.into_iter().map(Into::into).collect();
        self
    }
    pub fn start(self) -> Gateway {
        Gateway::spawn(self.wrapper, self.args)
    }
}

impl Gateway {
    /// Defaults for tests: loopback UDP and HTTP on free ports, trace logs.
    pub fn builder(steering: &str, threads: usize) -> GatewayBuilder {
        GatewayBuilder {
            args: vec![
                "--steering".into(),
                steering.into(),
                "--threads".into(),
                threads.to_string(),
                "--udp-bind".into(),
                "127.0.0.1:0".into(),
                "--http-bind".into(),
                "127.0.0.1:0".into(),
                "--log-level".into(),
                "debug".into(),
            ],
            wrapper: Vec::new(),
        }
    }

    pub fn start(steering: &str, threads: usize) -> Gateway {
        Self::builder(steering, threads).start()
    }

    /// Start with exactly these arguments (no test defaults).
    pub fn spawn_raw(args: Vec<String>) -> Gateway {
        Self::spawn(Vec::new(), args)
    }

    fn spawn(wrapper: Vec<String>, args: Vec<String>) -> Gateway {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = cmd
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn roomgate");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().expect("stderr piped");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("roomgate ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "roomgate {args:?} did not become ready; stderr:\n{}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        };
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("ready line {line:?} lacks {k}"))
                .to_owned()
        };
        Gateway {
            udp: field("udp").parse().expect("udp addr"),
            http: field("http").parse().expect("http addr"),
            mode: field("mode"),
            threads: field("threads").parse().expect("threads"),
            metrics: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("metrics="))
                .and_then(|a| a.parse().ok()),
            child: Some(child),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGSTOP the gateway and wait until every one of its threads has stopped, as a
    /// descheduled gateway would be: what is sent now queues in its sockets. kill()
    /// returns before the signal took effect, hence the wait.
    pub fn freeze(&self) {
        let pid = self.pid();
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let stopped = eventually(Duration::from_secs(5), || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat"))
                            .ok()
                            .and_then(|st| {
                                st.rsplit_once(')')
                                    .map(|(_, r)| r.trim_start().starts_with('T'))
                            })
                            .unwrap_or(true)
                    })
                })
                .unwrap_or(false)
        });
        assert!(stopped, "roomgate did not stop");
    }

    /// Undo [`Gateway::freeze`].
    pub fn thaw(&self) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn post(&self, path: &str) -> (u16, Value) {
        http("POST", &self.url(path))
    }
    pub fn get(&self, path: &str) -> (u16, Value) {
        http("GET", &self.url(path))
    }
    pub fn delete(&self, path: &str) -> (u16, Value) {
        http("DELETE", &self.url(path))
    }

    pub fn status(&self) -> Value {
        let (code, v) = self.get("/api/status");
        assert_eq!(code, 200, "status: {v}");
        v
    }

    /// Sum over every sample of `name` in `/metrics` (all threads and labels); `None`
    /// when the family has no sample.
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let (code, v) = self.get("/metrics");
        let Value::String(text) = v else {
            panic!("GET /metrics: {code} {v}");
        };
        metric_sum(&text, name)
    }

    /// `(layer, requested)` of subscriber `participant`'s first video slot in
    /// `GET /api/rooms/{room}`; layer `none` while nothing flows.
    pub fn listed_layer(&self, room: &str, participant: &str) -> Option<(String, String)> {
        let (code, v) = self.get(&format!("/api/rooms/{room}"));
        if code != 200 {
            return None;
        }
        let p = v["participants"]
            .as_array()?
            .iter()
            .find(|p| p["participant"] == participant)?;
        let video = p["video"].as_array()?.first()?;
        Some((
            video["layer"].as_str().unwrap_or("none").to_owned(),
            video["requested"].as_str()?.to_owned(),
        ))
    }

    pub fn create(&self, room: &str) -> Participant {
        let (code, v) = self.post(&format!("/api/rooms/{room}/participants"));
        assert_eq!(code, 201, "create participant in {room}: {v}");
        Participant::from_json(&v)
    }

    /// Stop with SIGTERM and return the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("roomgate did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET that reports a refused connection as `None` (for services still starting).
pub fn try_get(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

pub fn http(method: &str, url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let resp = match method {
        "POST" => agent.post(url).send_empty(),
        "DELETE" => agent.delete(url).call(),
        _ => agent.get(url).call(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (code, v)
}

#[derive(Clone, Debug)]
pub struct Participant {
    pub room: String,
    pub participant: String,
    pub thread: usize,
    pub ufrag: String,
    pub pwd: String,
    pub candidate: SocketAddr,
}

impl Participant {
    pub fn from_json(v: &Value) -> Participant {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{p} in {v}"))
                .to_owned()
        };
        let ip: IpAddr = s("/candidates/0/ip").parse().expect("candidate ip");
        let port = v
            .pointer("/candidates/0/port")
            .and_then(Value::as_u64)
            .expect("port") as u16;
        Participant {
            room: s("/room"),
            participant: s("/participant"),
            thread: v["thread"].as_u64().expect("thread") as usize,
            ufrag: s("/ice/ufrag"),
            pwd: s("/ice/pwd"),
            candidate: SocketAddr::new(ip, port),
        }
    }
}

/// Build a Binding Request as a full ICE agent (controlling) would.
pub fn binding_request(
    server_ufrag: &str,
    client_ufrag: &str,
    pwd: &str,
    use_candidate: bool,
) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_attribute(UserName::new(format!("{server_ufrag}:{client_ufrag}")).expect("username"))
        .with_attribute(Priority::new(0x6e7f_1eff))
        .with_attribute(IceControlling::new(0x1234_5678_9abc_def0));
    if use_candidate {
        b = b.with_attribute(UseCandidate::default());
    }
    let msg = b
        .with_attribute(MessageIntegrity::new(
            HMACKey::new_short_term(pwd).expect("key"),
        ))
        .with_attribute(Fingerprint::default())
        .build();
    let mut buf = vec![0u8; 512];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .expect("encode binding request");
    buf.truncate(n);
    buf
}

#[derive(Debug, PartialEq, Eq)]
pub enum StunReply {
    Success { mapped: SocketAddr },
    Error { code: u16 },
}

/// Decode a gateway reply, verifying MESSAGE-INTEGRITY of success responses with `pwd`.
pub fn decode_reply(bytes: &[u8], pwd: &str) -> StunReply {
    let ctx = stun_rs::DecoderContextBuilder::default()
        .with_key(HMACKey::new_short_term(pwd).expect("key"))
        .with_validation()
        .build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    match decoder.decode(bytes) {
        Ok((msg, _)) if msg.class() == MessageClass::SuccessResponse => {
            let mapped = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address())
                .expect("XOR-MAPPED-ADDRESS in success response");
            StunReply::Success { mapped }
        }
        _ => {
            // Error responses carry no MESSAGE-INTEGRITY (401) or one we need not check.
            let plain = MessageDecoderBuilder::default().build();
            let (msg, _) = plain.decode(bytes).expect("reply is STUN");
            let code = msg
                .get::<stun_rs::attributes::stun::ErrorCode>()
                .and_then(|a| a.as_error_code().ok())
                .map(|e| e.error_code().error_code())
                .expect("ERROR-CODE in error response");
            StunReply::Error { code }
        }
    }
}

/// One ICE client endpoint: a real UDP socket on its own source address/port.
pub struct Client {
    pub socket: UdpSocket,
}

impl Client {
    pub fn bind(ip: &str) -> Client {
        let socket = UdpSocket::bind((ip, 0)).expect("bind client");
        socket
            .set_read_timeout(Some(Duration::from_millis(400)))
            .expect("timeout");
        Client { socket }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local addr")
    }

    /// A real connectivity check with retransmissions (up to 5 tries), like an ICE agent.
    pub fn ice_check(&self, to: SocketAddr, p: &Participant) -> StunReply {
        self.ice_check_with(to, &p.ufrag, &p.pwd, &p.pwd)
    }

    pub fn ice_check_with(
        &self,
        to: SocketAddr,
        server_ufrag: &str,
        sign_pwd: &str,
        verify_pwd: &str,
    ) -> StunReply {
        let req = binding_request(server_ufrag, "cli1", sign_pwd, true);
        let mut buf = [0u8; 1500];
        for _ in 0..5 {
            self.socket.send_to(&req, to).expect("send binding request");
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, to, "reply must come from the address we sent to");
                    return decode_reply(&buf[..n], verify_pwd);
                }
                Err(_) => continue,
            }
        }
        panic!("no STUN reply from {to} for {server_ufrag} after 5 tries");
    }

    /// Send once and wait briefly; None if nothing came back.
    pub fn send_and_maybe_recv(
        &self,
        to: SocketAddr,
        data: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        self.socket.send_to(data, to).expect("send");
        self.socket.set_read_timeout(Some(wait)).ok()?;
        let mut buf = [0u8; 1500];
        let r = self
            .socket
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec());
        let _ = self
            .socket
            .set_read_timeout(Some(Duration::from_millis(400)));
        r
    }

    pub fn send(&self, to: SocketAddr, data: &[u8]) {
        self.socket.send_to(data, to).expect("send");
    }
}

/// A DTLS-looking datagram (first byte 22 = handshake record) tagged with a sequence number.
pub fn fake_dtls(seq: u32) -> Vec<u8> {
    let mut d = vec![22u8, 0xfe, 0xfd, 0, 0];
    d.extend_from_slice(&seq.to_be_bytes());
    d.resize(64, 0xab);
    d
}

/// An RTP-looking datagram (version 2).
pub fn fake_rtp(seq: u16) -> Vec<u8> {
    let mut d = vec![0x80u8, 96];
    d.extend_from_slice(&seq.to_be_bytes());
    d.resize(200, 0x5a);
    d
}

/// Per-thread counter `key` from `/api/status`.
pub fn thread_counter(status: &Value, thread: usize, key: &str) -> u64 {
    status["threads"][thread][key]
        .as_u64()
        .unwrap_or_else(|| panic!("threads[{thread}].{key} in {status}"))
}

pub fn sum_threads(status: &Value, key: &str) -> u64 {
    status["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t[key].as_u64().unwrap_or(0))
        .sum()
}

/// Sum over threads of a field of `/api/status` (`a.b` for nested objects). A missing
/// field panics, so a renamed counter fails the test instead of reading as zero.
pub fn status_total(status: &Value, path: &str) -> u64 {
    status["threads"]
        .as_array()
        .expect("threads in /api/status")
        .iter()
        .map(|t| {
            path.split('.')
                .fold(t, |v, k| &v[k])
                .as_u64()
                .unwrap_or_else(|| panic!("threads[].{path} in /api/status"))
        })
        .sum()
}

pub fn stun_counter(status: &Value, outcome: &str) -> u64 {
    status["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["stun"][outcome].as_u64().unwrap_or(0))
        .sum()
}

pub fn ebpf_counter(status: &Value, name: &str) -> u64 {
    status["ebpf"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("ebpf.{name} in {status}"))
}

/// Poll `f` until it returns true or `timeout` passes (datagrams are asynchronous).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sum of the samples of `name` in a Prometheus text exposition (`None` if there are none).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.split_whitespace().last()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
