//! Cluster-mode harness (issue 12): a real `redis-server` and real roomgate nodes, each in
//! its own network namespace, joined by veth to a hub namespace where Redis and the
//! clients live. Nothing leaves the namespaces the test creates; everything is removed on
//! drop, also when the test panics.
//!
//! Topology (198.51.100.0/24, a documentation range):
//! ```text
//!   hub ns: bridge br0 198.51.100.1 — redis-server :6379, test clients
//!     ├─ veth ─ node ns 0: 198.51.100.11  roomgate n1  udp :7000  http :8080
//!     ├─ veth ─ node ns 1: 198.51.100.12  roomgate n2
//!     └─ veth ─ node ns 2: 198.51.100.13  roomgate n3
//! ```
//!
//! API (kept stable; other test binaries use it):
//! - [`Cluster::start(tag, nodes)`](Cluster::start): net + Redis + nodes with default
//!   options, dropped in the right order (nodes, Redis, namespaces); prints the tail of
//!   each node's log when the test panics. Fields are public. `client(f)`, `key(kind,
//!   name)`, `redis_owner(room)`, `node(id)`, `node_of_url(url)`.
//! - [`ClusterNet::new(tag, n)`](ClusterNet::new): namespaces named `rg<pid><tag>h` and
//!   `rg<pid><tag>n<i>` (pid + tag: parallel tests never collide). `hub()`, `hub_ip()`,
//!   `node_ns(i)`, `node_ip(i)`, `prefix()` (a Redis key prefix unique to this net),
//!   `client(f)` runs `f` on a thread inside the hub namespace.
//! - [`RedisServer::start(&net)`](RedisServer::start) / `start_with(&net, Some(pass))`:
//!   `redis-server --port 6379 --bind 198.51.100.1 --save "" --appendonly no --dir TMP` in
//!   the hub, ready once it answers PING. `stop()` (SIGKILL, reaped, port closed),
//!   `start_again()` (same address, empty data), `cli(&[args])` (redis-cli in the hub,
//!   trimmed stdout), `url()`, `running()`.
//! - [`Node::start(&net, &redis, i, &extra)`](Node::start): the real binary in node
//!   namespace `i` with `--udp-bind IP:7000 --http-bind IP:8080 --advertise-http
//!   http://IP:8080 --cluster-redis URL --node-id n<i+1> --cluster-ttl 1500ms
//!   --cluster-prefix <net.prefix()>` plus `extra`; steering `connected` on node 1 and
//!   `ebpf` elsewhere (both modes covered), 1 logic thread. [`Node::builder`] changes any of
//!   that. Accessors: `id()`, `ip()`, `index()`, `prefix()`, `ttl()`, `mode()`, `ns()`,
//!   `base_url()`, `url(path)`, `pid()`, `stderr()`, `gateway()`.
//!   Process: `kill9()`, `sigterm()` (in cluster mode this DRAINS), `sigint()` (stops at
//!   once), `wait_exit(timeout) -> Option<i32>` (`Some(code)`, -signal when killed by a
//!   signal, `None` on timeout), `running()`.
//!   HTTP (from the hub namespace): `request(method, path, content_type, body)` (never
//!   follows redirects), `get_json(path)`, `status()` (/api/status), `cluster()`
//!   (/api/cluster), `sessions()`, `rooms()`, `owned_rooms()`, `metrics()` (text),
//!   `metric(name)` (sum over every sample, 0 when absent), `metric_with(name, label)`
//!   (sum over samples whose labels contain `label`, e.g. `outcome="won"`).
//! - Client side, to be called on a thread in the hub namespace (`net.client(..)`):
//!   [`request`] returns a [`Reply`] (status, Location, Retry-After, Content-Type, body)
//!   and never follows redirects; [`request_following`] re-sends the same method and body
//!   to each 307/308 Location (at most [`MAX_HOPS`]) and returns every reply in order.
//!   [`base_of`] / [`path_of`] split an absolute URL.
#![allow(dead_code)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    metric_sum,
    netns::{in_netns, ip},
    Gateway,
};

/// The hub's address on the bridge: Redis listens here and clients send from here.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const REDIS_PORT: u16 = 6379;
pub const NODE_UDP_PORT: u16 = 7000;
pub const NODE_HTTP_PORT: u16 = 8080;
/// Short so that a dead node's rooms are free again within a couple of seconds.
pub const DEFAULT_TTL: Duration = Duration::from_millis(1500);
/// Redirects [`request_following`] follows before giving up (a loop is a product bug).
pub const MAX_HOPS: usize = 3;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each node's log printed when a test using [`Cluster`] panics.
const LOG_TAIL: usize = 40;

/// The address of node `i` (0-based): 198.51.100.11, .12, ...
pub fn node_ip(i: usize) -> IpAddr {
    assert!(i < 200, "node index {i} out of the /24");
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11 + i as u8))
}

// ---------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------

/// The hub namespace (bridge, Redis, clients) and one namespace per node.
pub struct ClusterNet {
    hub: String,
    nodes: Vec<String>,
}

impl ClusterNet {
    pub fn new(tag: &str, n: usize) -> ClusterNet {
        let base = format!("rg{}{tag}", std::process::id() % 100_000);
        let hub = format!("{base}h");
        let nodes: Vec<String> = (0..n).map(|i| format!("{base}n{i}")).collect();
        // Constructed first so that a failure half-way still deletes what exists.
        let net = ClusterNet { hub, nodes };
        for ns in net.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let hub = net.hub.as_str();
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        for (i, ns) in net.nodes.iter().enumerate() {
            // Interface names are per namespace, so short fixed names cannot collide.
            let (h, c) = (format!("vh{i}"), "eth0".to_owned());
            ip(&[
                "-n", hub, "link", "add", &h, "type", "veth", "peer", "name", &c, "netns", ns,
            ]);
            ip(&["-n", hub, "link", "set", &h, "master", "br0"]);
            ip(&["-n", hub, "link", "set", &h, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                &c,
            ]);
            ip(&["-n", ns, "link", "set", &c, "up"]);
        }
        net
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.hub).chain(&self.nodes)
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }
    pub fn hub_ip(&self) -> IpAddr {
        IpAddr::V4(HUB_IP)
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn node_ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }
    pub fn node_ip(&self, i: usize) -> IpAddr {
        node_ip(i)
    }
    /// A Redis key prefix no other test shares (several tests may share one Redis).
    pub fn prefix(&self) -> &str {
        &self.hub
    }
    /// Run `f` on a thread inside the hub namespace, where the clients live.
    pub fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.hub, f)
    }
}

impl Drop for ClusterNet {
    fn drop(&mut self) {
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

pub use super::redis::RedisServer;

impl RedisServer {
    /// In the hub of `net`, on its address and [`REDIS_PORT`].
    pub fn start(net: &ClusterNet) -> RedisServer {
        Self::start_with(net, None)
    }

    pub fn start_with(net: &ClusterNet, password: Option<&str>) -> RedisServer {
        Self::start_in(net.hub(), net.hub_ip(), REDIS_PORT, password)
    }
}

// ---------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------

/// How to start a node; [`Node::builder`] fills in the defaults.
pub struct NodeBuilder<'a> {
    net: &'a ClusterNet,
    index: usize,
    redis_url: Option<String>,
    steering: String,
    threads: usize,
    ttl: Duration,
    id: String,
    prefix: String,
    extra: Vec<String>,
}

impl NodeBuilder<'_> {
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }
    /// `ebpf` or `connected`.
    pub fn steering(mut self, s: &str) -> Self {
        self.steering = s.to_owned();
        self
    }
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }
    pub fn prefix(mut self, p: &str) -> Self {
        self.prefix = p.to_owned();
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.extra.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn start(self) -> Node {
        let ip = self.net.node_ip(self.index);
        let redis = self
            .redis_url
            .expect("a node needs a Redis URL (Node::start or NodeBuilder::redis_url)");
        let gw = Gateway::builder(&self.steering, self.threads)
            .set("--udp-bind", format!("{ip}:{NODE_UDP_PORT}"))
            .set("--http-bind", format!("{ip}:{NODE_HTTP_PORT}"))
            .set("--advertise-http", format!("http://{ip}:{NODE_HTTP_PORT}"))
            .set("--cluster-redis", redis)
            .set("--node-id", self.id.clone())
            .set("--cluster-ttl", format!("{}ms", self.ttl.as_millis()))
            .set("--cluster-prefix", self.prefix.clone())
            .args(self.extra)
            .wrapper(["ip", "netns", "exec", self.net.node_ns(self.index)])
            .start();
        assert_eq!(
            gw.mode,
            self.steering,
            "node {} runs in another steering mode; stderr:\n{}",
            self.id,
            gw.stderr()
        );
        Node {
            gw,
            index: self.index,
            id: self.id,
            ip,
            prefix: self.prefix,
            ttl: self.ttl,
            ns: self.net.node_ns(self.index).to_owned(),
            hub: self.net.hub().to_owned(),
        }
    }
}

/// One roomgate process in its node namespace.
pub struct Node {
    gw: Gateway,
    index: usize,
    id: String,
    ip: IpAddr,
    prefix: String,
    ttl: Duration,
    ns: String,
    hub: String,
}

impl Node {
    /// Defaults: id `n<i+1>`, steering `connected` on node index 1 and `ebpf` elsewhere,
    /// 1 thread, ttl [`DEFAULT_TTL`], prefix `net.prefix()`, no Redis URL yet.
    pub fn builder(net: &ClusterNet, i: usize) -> NodeBuilder<'_> {
        NodeBuilder {
            net,
            index: i,
            redis_url: None,
            steering: if i == 1 { "connected" } else { "ebpf" }.to_owned(),
            threads: 1,
            ttl: DEFAULT_TTL,
            id: format!("n{}", i + 1),
            prefix: net.prefix().to_owned(),
            extra: Vec::new(),
        }
    }

    pub fn start(net: &ClusterNet, redis: &RedisServer, i: usize, extra: &[&str]) -> Node {
        Self::start_url(net, &redis.url(), i, extra)
    }

    pub fn start_url(net: &ClusterNet, url: &str, i: usize, extra: &[&str]) -> Node {
        Self::builder(net, i)
            .redis_url(url)
            .args(extra.iter().copied())
            .start()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn index(&self) -> usize {
        self.index
    }
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// Steering mode from the ready line (`ebpf` or `connected`).
    pub fn mode(&self) -> &str {
        &self.gw.mode
    }
    pub fn ns(&self) -> &str {
        &self.ns
    }
    pub fn udp(&self) -> SocketAddr {
        self.gw.udp
    }
    /// `http://IP:8080`, the advertised URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.gw.http)
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }
    pub fn pid(&self) -> u32 {
        self.gw.pid()
    }
    pub fn stderr(&self) -> String {
        self.gw.stderr()
    }
    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    fn signal(&self, sig: i32) {
        if !self.running() {
            return;
        }
        // SAFETY: a signal to our own child (`ip netns exec` execs roomgate in place),
        // which is not reaped yet (checked above), so the pid is still ours.
        unsafe { libc::kill(self.gw.pid() as i32, sig) };
    }
    pub fn kill9(&self) {
        self.signal(libc::SIGKILL);
    }
    /// In cluster mode: start draining.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }
    /// Stop at once.
    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    pub fn running(&self) -> bool {
        self.exit_status().is_none()
    }

    fn exit_status(&self) -> Option<i32> {
        // Polled through the pid instead of `Child::try_wait` (which needs `&mut`): WNOWAIT
        // leaves the zombie for `Child` to reap on drop, so the pid cannot be reused
        // while we may still signal it.
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, writing into the siginfo_t we own.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.gw.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled a SIGCHLD siginfo (or left zeroes: si_pid 0).
        let (pid, code) = unsafe { (info.si_pid(), info.si_status()) };
        if rc != 0 || pid == 0 {
            return None;
        }
        Some(if info.si_code == libc::CLD_EXITED {
            code
        } else {
            -code
        })
    }

    /// Wait for the process to end: `Some(exit code)`, `Some(-signal)` when a signal
    /// killed it, `None` when it still runs after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_status() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One request from the hub namespace; redirects are returned, not followed.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let url = self.url(path);
        in_netns(&self.hub, || request(method, &url, content_type, body))
    }

    /// GET `path`, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.request("GET", path, None, None);
        assert_eq!(r.status, 200, "GET {path} at {}: {}", self.id, r.body);
        r.json()
    }

    /// Wait until every listed participant's session in `room` here is DTLS-connected.
    pub fn wait_connected(&self, room: &str, participants: &[&str]) {
        let mut last = Value::Null;
        let ok = super::eventually(Duration::from_secs(10), || {
            last = self.get_json(&format!("/api/rooms/{room}"));
            participants.iter().all(|p| {
                last["participants"].as_array().is_some_and(|ps| {
                    ps.iter().any(|x| {
                        x["participant"].as_str() == Some(*p) && x["dtls_state"] == "connected"
                    })
                })
            })
        });
        assert!(
            ok,
            "not all DTLS-connected in {room} on {}: {last}",
            self.id()
        );
    }

    pub fn status(&self) -> Value {
        self.get_json("/api/status")
    }

    pub fn cluster(&self) -> Value {
        self.get_json("/api/cluster")
    }

    /// Sessions on this node (sum over its threads in /api/status).
    pub fn sessions(&self) -> u64 {
        super::status_total(&self.status(), "sessions")
    }

    /// Rooms on this node (sum over its threads in /api/status).
    pub fn rooms(&self) -> u64 {
        super::status_total(&self.status(), "rooms")
    }

    /// `owned_rooms` of /api/cluster, sorted.
    pub fn owned_rooms(&self) -> Vec<String> {
        let v = self.cluster();
        let mut rooms: Vec<String> = v["owned_rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("owned_rooms in /api/cluster of {}: {v}", self.id))
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        rooms.sort();
        rooms
    }

    pub fn metrics(&self) -> String {
        let r = self.request("GET", "/metrics", None, None);
        assert_eq!(r.status, 200, "GET /metrics at {}", self.id);
        r.body
    }

    /// Sum over every sample of `name`; 0 when the family has no sample.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name).unwrap_or(0.0)
    }

    /// Sum over the samples of `name` whose label set contains `label`
    /// (e.g. `outcome="won"`); 0 when none.
    pub fn metric_with(&self, name: &str, label: &str) -> f64 {
        metric_with(&self.metrics(), name, label)
    }
}

/// Sum of the samples of `name` in a Prometheus text whose labels contain `label`.
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            labels
                .split(',')
                .any(|kv| kv == label)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// A whole cluster
// ---------------------------------------------------------------------------------------

/// Namespaces, Redis and nodes of one test. Field order is drop order: nodes first (they
/// live in the namespaces), then Redis, then the namespaces.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub redis: RedisServer,
    pub net: ClusterNet,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The nodes' own account of a failure, before they are gone.
        for n in &self.nodes {
            let log = n.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL);
            eprintln!(
                "==== node {} ({}) stderr, last {} lines:\n{}",
                n.id(),
                n.mode(),
                lines.len() - start,
                lines[start..].join("\n")
            );
        }
    }
}

impl Cluster {
    /// `n` nodes with default options.
    pub fn start(tag: &str, n: usize) -> Cluster {
        Self::start_with(tag, &vec![Vec::new(); n])
    }

    /// One node per entry of `extra`, each with those extra arguments.
    pub fn start_with(tag: &str, extra: &[Vec<&str>]) -> Cluster {
        let net = ClusterNet::new(tag, extra.len());
        let redis = RedisServer::start(&net);
        let nodes = extra
            .iter()
            .enumerate()
            .map(|(i, args)| Node::start(&net, &redis, i, args))
            .collect();
        Cluster { nodes, redis, net }
    }

    /// Run `f` on a thread in the hub namespace.
    pub fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.net.client(f)
    }

    /// `P:kind:name` in this cluster's key space.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.net.prefix())
    }

    /// The owner recorded in Redis for `room` (empty when there is none).
    pub fn redis_owner(&self, room: &str) -> String {
        self.redis.cli(&["GET", &self.key("room", room)])
    }

    /// The node whose advertised URL `url` starts with.
    pub fn node_of_url(&self, url: &str) -> Option<&Node> {
        let base = base_of(url);
        self.nodes.iter().find(|n| n.base_url() == base)
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
}

// ---------------------------------------------------------------------------------------
// HTTP client (no redirects followed unless asked)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Reply {
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    /// Every response header, lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into()
}

/// One request; a 307 comes back as it is. Panics only when no HTTP answer arrives.
pub fn request(method: &str, url: &str, content_type: Option<&str>, body: Option<&str>) -> Reply {
    try_request(method, url, content_type, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// As [`request`], with the transport error (refused, timeout) as `Err`.
pub fn try_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let agent = agent();
    let result = match method {
        "POST" | "PATCH" | "PUT" => {
            let mut rb = match method {
                "POST" => agent.post(url),
                "PATCH" => agent.patch(url),
                _ => agent.put(url),
            };
            if let Some(ct) = content_type {
                rb = rb.header("Content-Type", ct);
            }
            rb.send(body.unwrap_or("").as_bytes())
        }
        "DELETE" => agent.delete(url).call(),
        "GET" => agent.get(url).call(),
        other => panic!("request: unsupported method {other}"),
    };
    let resp = result?;
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
        .collect();
    let find = |k: &str| {
        headers
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    Ok(Reply {
        url: url.to_owned(),
        status,
        location: find("location"),
        retry_after: find("retry-after"),
        content_type: find("content-type"),
        headers,
        body,
    })
}

/// Send, then re-send the same method and body to each 307/308 `Location`, as WHIP
/// clients do. Returns every reply in order (the last one is the final answer); panics on
/// a redirect without Location or more than [`MAX_HOPS`] redirects.
pub fn request_following(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Vec<Reply> {
    let mut replies = vec![request(method, url, content_type, body)];
    loop {
        let last = replies.last().expect("at least one reply");
        if !matches!(last.status, 307 | 308) {
            return replies;
        }
        assert!(
            replies.len() <= MAX_HOPS,
            "{method} {url}: more than {MAX_HOPS} redirects: {:?}",
            replies
                .iter()
                .map(|r| (r.status, r.location.clone()))
                .collect::<Vec<_>>()
        );
        let location = last
            .location
            .clone()
            .unwrap_or_else(|| panic!("{} from {} without Location", last.status, last.url));
        let next = resolve(&last.url, &location);
        replies.push(request(method, &next, content_type, body));
    }
}

/// `location` made absolute against `from`.
pub fn resolve(from: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else {
        format!("{}{location}", base_of(from))
    }
}

/// `http://host:port` of an absolute URL.
pub fn base_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or(url, |p| &url[..after_scheme + p])
}

/// Path (and query) of an absolute URL; `/` when it has none.
pub fn path_of(url: &str) -> &str {
    let base = base_of(url);
    match &url[base.len()..] {
        "" => "/",
        p => p,
    }
}
