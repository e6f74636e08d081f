//! Steering cost as the number of pinned clients grows.
//!
//! For each mode and client count: start the real gateway, create `clients` participants
//! over the REST API (rooms of `PER_ROOM`), pin every client with a real, signed STUN
//! Binding Request from its own source address (the gateway then writes the flow map in
//! eBPF mode, or opens one connected socket per client in connected mode), then blast
//! RTP-sized datagrams round-robin from all clients for a fixed time.
//!
//! On loopback the receive path (UDP socket lookup, the sk_reuseport program, queueing
//! to the socket) runs in the sending thread's context, so the sender's on-CPU time is
//! part of the steering cost and is reported next to the gateway's.
//!
//! Everything runs in a network namespace of its own (an unshared thread), so the
//! kernel's UDP counters and socket tables hold only this bench's traffic.
use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::support::{binding_request, decode_reply, sum_threads, Gateway, Participant, StunReply};
use super::util::{cpu_ns, gettid, rtp_payload, threads_named};

pub const DEFAULT_CLIENTS: [usize; 4] = [128, 1_024, 4_096, 16_384];
const PER_ROOM: usize = 4;
/// New clients pin one at a time: in connected mode, while the gateway opens a client's
/// socket (bind, then connect) that socket is an unconnected member of the group and
/// drops what the group's hash hands it (gateway/src/net.rs), so another new client's
/// request in flight would wait for a retransmission. Such drops are counted below.
const PIN_WINDOW: usize = 1;
/// Consent refreshes of pinned clients reach their own sockets: many in flight at once.
const REFRESH_WINDOW: usize = 32;
/// Retransmission timeout of a pinning check; loopback answers in well under a millisecond
/// (under TCG in a few), so a lost request costs little time.
const PIN_RTO: Duration = Duration::from_millis(200);
/// Source addresses the clients spread over (127.16.0.1 ...), each with ephemeral ports.
const SOURCE_ADDRESSES: usize = 1_000;
/// How often clients repeat their check while the others are still being pinned; a third
/// of the gateway's consent timeout.
const CONSENT_REFRESH: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Options {
    pub clients: Vec<usize>,
    pub modes: Vec<String>,
    pub secs: u64,
    pub threads: usize,
    /// Create and pin one client after the other (REST call, then its check), as the
    /// first version of this bench did: on a slow kernel the first pins can then grow
    /// older than ICE consent (30 s) before the blast ends.
    pub serial_pinning: bool,
}

impl Options {
    /// `--clients 128,1024 --modes ebpf,connected --secs 4` (all optional).
    pub fn from_args(args: &[String], threads: usize) -> Options {
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let clients = value("--clients")
            .map(|v| {
                v.split(',')
                    .map(|c| {
                        c.trim()
                            .replace('_', "")
                            .parse()
                            .expect("--clients N,N,...")
                    })
                    .collect()
            })
            .unwrap_or_else(|| DEFAULT_CLIENTS.to_vec());
        let modes = value("--modes")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_else(|| vec!["ebpf".to_owned(), "connected".to_owned()]);
        let secs = value("--secs").map_or(4, |s| s.parse().expect("--secs N"));
        Options {
            clients,
            modes,
            secs,
            threads,
            serial_pinning: args.iter().any(|a| a == "--serial-pinning"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Row {
    mode: String,
    clients: usize,
    sent: u64,
    delivered: u64,
    /// Datagrams a thread received for a client it does not own (`no_session`), or a
    /// connected socket received from a peer other than its own (`misdelivered`).
    no_session: u64,
    misdelivered: u64,
    flow_miss: u64,
    rcvbuf_errors: u64,
    consent_expired: u64,
    handoffs: u64,
    wall: Duration,
    gateway_cpu_ns: u64,
    sender_cpu_ns: u64,
    program: Option<(u64, u64)>,
    pin_time: Duration,
    pin_retransmits: u64,
    /// While pinning: datagrams a connected socket got from another peer, and datagrams
    /// the kernel dropped on receive (a socket filter's drop counts as UDP InErrors).
    pin_misdelivered: u64,
    pin_in_errors: u64,
    refresh_passes: u64,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.delivered as f64 / self.wall.as_secs_f64()
    }
    fn per_datagram(&self, ns: u64) -> f64 {
        ns as f64 / self.sent.max(1) as f64
    }
    fn wrong(&self) -> u64 {
        self.no_session + self.misdelivered
    }
    /// Sent but neither delivered, misdelivered nor counted as a kernel drop: should be 0.
    fn unaccounted(&self) -> i64 {
        self.sent as i64
            - (self.delivered + self.wrong() + self.rcvbuf_errors + self.flow_miss) as i64
    }
}

/// Run every (mode, count) in a fresh network namespace; returns the rows in order.
pub fn run(opts: &Options) -> Vec<Row> {
    let opts = opts.clone();
    std::thread::spawn(move || {
        enter_private_netns();
        raise_fd_limit(opts.clients.iter().copied().max().unwrap_or(0));
        let mut rows = Vec::new();
        for mode in &opts.modes {
            for &n in &opts.clients {
                eprintln!("scaling: {mode}, {n} clients");
                let row = run_one(mode, n, &opts);
                eprintln!(
                    "scaling: {mode} {n}: sent {} in {:.2} s, gateway {:.2} CPU-s, sender {:.2} CPU-s; {:.0} datagrams/s, wrong thread {}, pinned in {:.1} s, consent expired {}",
                    row.sent,
                    row.wall.as_secs_f64(),
                    row.gateway_cpu_ns as f64 / 1e9,
                    row.sender_cpu_ns as f64 / 1e9,
                    row.per_sec(),
                    row.wrong(),
                    row.pin_time.as_secs_f64(),
                    row.consent_expired
                );
                rows.push(row);
            }
        }
        rows
    })
    .join()
    .expect("scaling thread")
}

/// A network namespace for this thread (and the gateway it spawns), with loopback up.
fn enter_private_netns() {
    // SAFETY: unshare(2) with a flag constant; it affects only the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip link set lo up: {status}");
}

/// One client socket per pinned client here, one connected socket per client in the
/// gateway (which inherits this limit): each process needs `clients` descriptors and some.
fn raise_fd_limit(clients: usize) {
    let want = clients as u64 + 2048;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    if lim.rlim_cur >= want {
        return;
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a container's root may lack.
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: setrlimit with a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return;
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; the soft limit may always rise to the hard one.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    assert!(
        rc == 0 && lim.rlim_max >= want,
        "{clients} clients need RLIMIT_NOFILE >= {want}; the hard limit is {} and cannot be raised here ({})",
        lim.rlim_max,
        std::io::Error::last_os_error()
    );
}

/// Client `i`'s source address: 1,000 addresses in 127.16.0.0/16, ephemeral ports.
fn client_ip(i: usize) -> std::net::Ipv4Addr {
    let a = i % SOURCE_ADDRESSES;
    std::net::Ipv4Addr::new(127, 16, (a / 250) as u8, (a % 250 + 1) as u8)
}

fn run_one(mode: &str, n: usize, opts: &Options) -> Row {
    let gw = Gateway::builder(mode, opts.threads)
        .set("--log-level", "warn")
        .set("--max-sessions", (n + 64).to_string())
        .set("--max-participants-per-room", PER_ROOM.to_string())
        .start();
    assert_eq!(gw.mode, mode, "{}", gw.stderr());
    let clients: Vec<UdpSocket> = (0..n)
        .map(|i| UdpSocket::bind((client_ip(i), 0)).expect("bind client"))
        .collect();
    let snmp0 = udp_snmp();
    let mut t_pin = Instant::now();
    let (pin_retransmits, refresh_passes) = if opts.serial_pinning {
        (0..n)
            .map(|i| {
                let p = create_participants(&gw, i..i + 1);
                pin_all(&gw, &clients[i..i + 1], &p, false)
            })
            .fold((0, 0), |(r, p), (r1, p1)| (r + r1, p + p1))
    } else {
        let participants = create_participants(&gw, 0..n);
        eprintln!(
            "scaling: created {n} participants in {:.1} s",
            t_pin.elapsed().as_secs_f64()
        );
        t_pin = Instant::now();
        pin_all(&gw, &clients, &participants, true)
    };
    let pin_time = t_pin.elapsed();

    let pid = gw.pid();
    let tids = threads_named(pid, "roomgate-logic");
    let mid = gw.status();
    let snmp1 = udp_snmp();
    let me = gettid();
    let gw0 = cpu_ns(pid, &tids);
    let me0 = cpu_ns(std::process::id(), &[me]);
    let prog0 = program_run_stats(pid);
    let t0 = Instant::now();
    let sent = blast(&clients, gw.udp, Duration::from_secs(opts.secs));
    let sender_cpu_ns = cpu_ns(std::process::id(), &[me]) - me0;
    // Everything delivered was sent within the blast; at most a socket buffer's worth is
    // still queued when it ends.
    let wall = t0.elapsed();
    // Let the logic threads drain what is queued; their CPU keeps counting meanwhile.
    drain(&gw, &mid, snmp1.rcvbuf_errors, sent);
    let gateway_cpu_ns = cpu_ns(pid, &tids) - gw0;
    let prog1 = program_run_stats(pid);
    let after = gw.status();
    let snmp2 = udp_snmp();
    let delta = |k: &str| sum_threads(&after, k) - sum_threads(&mid, k);
    let ebpf_delta = |k: &str| ebpf(&after, k) - ebpf(&mid, k);
    Row {
        mode: mode.to_owned(),
        clients: n,
        sent,
        delivered: delta("session_datagrams"),
        no_session: delta("no_session"),
        misdelivered: delta("misdelivered"),
        flow_miss: ebpf_delta("flow_miss"),
        rcvbuf_errors: snmp2.rcvbuf_errors - snmp1.rcvbuf_errors,
        consent_expired: sum_threads(&after, "consent_expired"),
        handoffs: sum_threads(&after, "handoffs"),
        wall,
        gateway_cpu_ns,
        sender_cpu_ns,
        program: prog0
            .zip(prog1)
            .map(|((ns0, c0), (ns1, c1))| (ns1 - ns0, c1 - c0)),
        pin_time,
        pin_retransmits,
        pin_misdelivered: sum_threads(&mid, "misdelivered"),
        pin_in_errors: snmp1.in_errors - snmp0.in_errors,
        refresh_passes,
    }
}

/// Wait until the gateway has accounted for every datagram sent, or stops making progress.
fn drain(gw: &Gateway, mid: &Value, rcvbuf_errors: u64, sent: u64) {
    let accounted = |s: &Value| {
        ["session_datagrams", "no_session", "misdelivered"]
            .iter()
            .map(|k| sum_threads(s, k) - sum_threads(mid, k))
            .sum::<u64>()
            + ebpf(s, "flow_miss").saturating_sub(ebpf(mid, "flow_miss"))
            + (udp_snmp().rcvbuf_errors - rcvbuf_errors)
    };
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = accounted(&gw.status());
        if now >= sent || now == last {
            return;
        }
        last = now;
    }
}

fn ebpf(status: &Value, key: &str) -> u64 {
    status["ebpf"][key].as_u64().unwrap_or(0)
}

/// REST participants `range` over one keep-alive connection, `PER_ROOM` to a room.
fn create_participants(gw: &Gateway, range: std::ops::Range<usize>) -> Vec<Participant> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    range
        .map(|i| {
            let url = gw.url(&format!("/api/rooms/s{}/participants", i / PER_ROOM));
            let resp = agent
                .post(&url)
                .send_empty()
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            let code = resp.status().as_u16();
            let body = resp.into_body().read_to_string().unwrap_or_default();
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            assert_eq!(code, 201, "create participant {i}: {v}");
            Participant::from_json(&v)
        })
        .collect()
}

/// Pin every client with its own signed Binding Request, `PIN_WINDOW` in flight at a
/// time. With `refresh`, the clients already pinned repeat their check whenever
/// `CONSENT_REFRESH` has passed, as ICE agents do (RFC 7675): pinning thousands of
/// connected clients on a slow kernel takes longer than the gateway's 30 s consent
/// timeout, and an expired pin would turn the blast into a measurement of fallbacks.
/// Returns (retransmissions, refresh passes).
fn pin_all(
    gw: &Gateway,
    clients: &[UdpSocket],
    participants: &[Participant],
    refresh: bool,
) -> (u64, u64) {
    let (mut retransmits, mut passes) = (0, 0);
    let mut refreshed = Instant::now();
    let all: Vec<usize> = (0..clients.len()).collect();
    for (w, window) in all.chunks(PIN_WINDOW).enumerate() {
        retransmits += check(gw, clients, participants, window);
        if refresh && refreshed.elapsed() > CONSENT_REFRESH {
            let pinned = &all[..((w + 1) * PIN_WINDOW).min(all.len())];
            for window in pinned.chunks(REFRESH_WINDOW) {
                retransmits += check(gw, clients, participants, window);
            }
            passes += 1;
            refreshed = Instant::now();
        }
    }
    (retransmits, passes)
}

/// One signed Binding Request from each client of `window` (all in flight at once),
/// each answered with a verified success; unanswered ones are retransmitted as an ICE
/// agent would. Returns the number of retransmissions.
fn check(
    gw: &Gateway,
    clients: &[UdpSocket],
    participants: &[Participant],
    window: &[usize],
) -> u64 {
    let mut retransmits = 0;
    let mut buf = [0u8; 1500];
    let requests: Vec<Vec<u8>> = window
        .iter()
        .map(|&i| binding_request(&participants[i].ufrag, "cli1", &participants[i].pwd, true))
        .collect();
    for (&i, req) in window.iter().zip(&requests) {
        clients[i]
            .send_to(req, gw.udp)
            .expect("send binding request");
    }
    for (&i, req) in window.iter().zip(&requests) {
        let c = &clients[i];
        c.set_read_timeout(Some(PIN_RTO)).ok();
        let mut tries = 0;
        let reply = loop {
            match c.recv_from(&mut buf) {
                Ok((len, from)) => {
                    assert_eq!(from, gw.udp, "reply from the address we sent to");
                    break decode_reply(&buf[..len], &participants[i].pwd);
                }
                Err(_) if tries < 8 => {
                    tries += 1;
                    retransmits += 1;
                    c.send_to(req, gw.udp).expect("retransmit");
                }
                Err(e) => {
                    panic!("client {i}: no Binding response after {tries} retransmissions: {e}")
                }
            }
        };
        assert!(
            matches!(reply, StunReply::Success { .. }),
            "client {i}: {reply:?}"
        );
    }
    retransmits
}

/// Round-robin over all clients, one sender thread (this one), for `secs`.
fn blast(clients: &[UdpSocket], to: SocketAddr, run_for: Duration) -> u64 {
    let payload = rtp_payload();
    let deadline = Instant::now() + run_for;
    let mut sent = 0u64;
    loop {
        for (i, c) in clients.iter().enumerate() {
            if c.send_to(&payload, to).is_ok() {
                sent += 1;
            }
            if i % 256 == 255 && Instant::now() >= deadline {
                return sent;
            }
        }
        if Instant::now() >= deadline {
            return sent;
        }
    }
}

#[derive(Default)]
struct UdpSnmp {
    rcvbuf_errors: u64,
    in_errors: u64,
}

/// The kernel's UDP counters of this thread's network namespace.
fn udp_snmp() -> UdpSnmp {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return UdpSnmp::default();
    };
    let field = |k: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    UdpSnmp {
        rcvbuf_errors: field("RcvbufErrors"),
        in_errors: field("InErrors"),
    }
}

/// (run_time_ns, run_cnt) of the gateway's sk_reuseport program (kernel BPF statistics).
fn program_run_stats(pid: u32) -> Option<(u64, u64)> {
    super::program_stats(pid).map(|(time, count, _)| (time, count))
}

/// The markdown section for these rows.
pub fn report(rows: &[Row], opts: &Options, machine: &str, heading: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{heading}\n\nMachine: {machine}. {} logic threads; clients pinned through real, signed \
         STUN Binding Requests from {} source addresses in 127.16.0.0/16, {} per room; then one \
         sender thread sends 200-byte RTP-like datagrams round-robin from every client for {} s, \
         in a network namespace of the bench's own. Participants are {}. On loopback the socket lookup and the \
         sk_reuseport program run in the sender's context: \"sender\" is that thread's on-CPU \
         time, \"gateway\" the logic threads' (schedstat), both per datagram sent. \"Wrong \
         thread\" is counted by the gateway: `no_session` (a thread got a client it does not \
         own) plus `misdelivered` (a connected socket got another peer's datagram).\n",
        opts.threads,
        SOURCE_ADDRESSES,
        PER_ROOM,
        opts.secs,
        if opts.serial_pinning {
            "created and pinned one after the other (`--serial-pinning`)"
        } else {
            "created first, then pinned one after the other, every pinned client repeating its check every 10 s (ICE consent) until all are pinned"
        }
    );
    let _ = writeln!(
        t,
        "| mode | clients | datagrams/s delivered | gateway ns/datagram | sender ns/datagram | program ns/run | wrong thread | kernel drops (rcvbuf / flow miss) | unaccounted | consent expired | pinning |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} ({:.2}%) | {} / {} | {} | {} | {:.1} s, {} retransmits, {} refresh passes, {} handoffs, {} misdelivered, {} kernel receive errors |",
            r.mode,
            r.clients,
            r.per_sec(),
            r.per_datagram(r.gateway_cpu_ns),
            r.per_datagram(r.sender_cpu_ns),
            r.program.map_or("n/a".into(), |(ns, cnt)| format!(
                "{:.0}",
                ns as f64 / cnt.max(1) as f64
            )),
            r.wrong(),
            100.0 * r.wrong() as f64 / r.sent.max(1) as f64,
            r.rcvbuf_errors,
            r.flow_miss,
            r.unaccounted(),
            r.consent_expired,
            r.pin_time.as_secs_f64(),
            r.pin_retransmits,
            r.refresh_passes,
            r.handoffs,
            r.pin_misdelivered,
            r.pin_in_errors
        );
    }
    if rows.iter().any(|r| r.consent_expired > 0) {
        let _ = writeln!(
            t,
            "\n**Not a steering result:** in the rows with \"consent expired\" above 0, pinning took \
             longer than the gateway's 30 s ICE consent timeout; those clients had lost their pins \
             (and, in connected mode, their sockets) before the blast, so their datagrams were \
             counted as `no_session` on whichever thread the group's hash chose."
        );
    }
    for mode in &opts.modes {
        let of_mode: Vec<&Row> = rows.iter().filter(|r| &r.mode == mode).collect();
        if let (Some(first), Some(last)) = (of_mode.first(), of_mode.last()) {
            if first.clients != last.clients {
                let _ = writeln!(
                    t,
                    "\n{mode}: {} -> {} clients: {:.2}x the datagrams/s, {:.2}x the gateway + sender CPU per datagram.",
                    first.clients,
                    last.clients,
                    last.per_sec() / first.per_sec().max(1e-9),
                    (last.gateway_cpu_ns + last.sender_cpu_ns) as f64 / last.sent.max(1) as f64
                        / ((first.gateway_cpu_ns + first.sender_cpu_ns) as f64
                            / first.sent.max(1) as f64)
                            .max(1e-9),
                );
            }
        }
    }
    t
}
