//! Multi-host: the gateway in its own network namespace, multi-homed on two veth links,
//! bound to the dual-stack wildcard `[::]`; one client host reaches it over IPv4, the
//! other over IPv6. Proves, with the program's counters, that the kernel steers clients
//! of other hosts (IPv4 flow keys built from a v4-mapped userspace address, IPv6 keys),
//! and that replies leave from the address each request arrived on (IP_PKTINFO):
//! `Client::ice_check` rejects a reply from any other source.
mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use support::{
    netns::{in_netns, ip},
    *,
};

const PER_HOST: usize = 8;
const MEDIA: u64 = 6;

/// Network namespaces and veth links created for one test, removed on drop.
struct Topology {
    gw: String,
    hosts: Vec<String>,
}

impl Topology {
    /// Names carry the pid and a per-test tag so tests of one run never collide.
    fn new_tagged(test: &str) -> Topology {
        let tag = format!("{}{}", std::process::id() % 10_000, &test[..1]);
        let gw = format!("rg{tag}gw");
        let hosts: Vec<String> = (1..=2).map(|i| format!("rg{tag}h{i}")).collect();
        let t = Topology {
            gw: gw.clone(),
            hosts: hosts.clone(),
        };
        for ns in std::iter::once(&gw).chain(&hosts) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, host) in hosts.iter().enumerate() {
            let n = i + 1;
            let (g, h) = (format!("rg{tag}g{n}"), format!("rg{tag}c{n}"));
            ip(&[
                "link", "add", &g, "netns", &gw, "type", "veth", "peer", "name", &h, "netns", host,
            ]);
            ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("10.201.{n}.1/24"),
                "dev",
                &g,
            ]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("10.201.{n}.2/24"),
                "dev",
                &h,
            ]);
            ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("fd01:{n}::1/64"),
                "dev",
                &g,
                "nodad",
            ]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("fd01:{n}::2/64"),
                "dev",
                &h,
                "nodad",
            ]);
            ip(&["-n", &gw, "link", "set", &g, "up"]);
            ip(&["-n", host, "link", "set", &h, "up"]);
        }
        // Host 1 may also reach the gateway's *other* address (10.201.2.1) through its own
        // link: the gateway then receives on 10.201.1.1's interface a request for
        // 10.201.2.1, and routing alone would answer from 10.201.1.1.
        ip(&[
            "-n",
            &hosts[0],
            "route",
            "add",
            "10.201.2.1/32",
            "via",
            "10.201.1.1",
        ]);
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.gw).chain(&self.hosts) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn client_in(ns: &str, ip: &str) -> Client {
    let socket: UdpSocket = in_netns(ns, || UdpSocket::bind((ip, 0)).expect("bind client"));
    socket
        .set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    Client { socket }
}

#[test]
fn ebpf_mode_steers_clients_on_other_hosts_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    other_hosts("ebpf");
}

#[test]
fn connected_mode_serves_clients_on_other_hosts_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    other_hosts("connected");
}

fn other_hosts(steering: &str) {
    let topo = Topology::new_tagged(steering);
    let gw = Gateway::builder(steering, 2)
        .set("--udp-bind", "[::]:0")
        .wrapper(["ip", "netns", "exec", topo.gw.as_str()])
        .start();
    assert_eq!(gw.mode, steering, "{}", gw.stderr());
    let port = gw.udp.port();
    let before = in_netns(&topo.gw, || gw.status());

    // Host 1 talks IPv4 to 10.201.1.1, host 2 IPv6 to fd01:2::1: two different local
    // addresses of one wildcard socket group.
    let targets = [
        (
            &topo.hosts[0],
            "10.201.1.2",
            SocketAddr::from(([10, 201, 1, 1], port)),
        ),
        (
            &topo.hosts[0],
            "10.201.1.2",
            SocketAddr::from(([10, 201, 2, 1], port)),
        ),
        (
            &topo.hosts[1],
            "fd01:2::2",
            format!("[fd01:2::1]:{port}").parse().expect("addr"),
        ),
    ];
    let mut sessions = Vec::new();
    for (h, (ns, client_ip, target)) in targets.iter().enumerate() {
        for i in 0..PER_HOST {
            let room = format!("host{h}-room{}", i % 4);
            let p = in_netns(&topo.gw, || gw.create(&room));
            let c = client_in(ns, client_ip);
            // ice_check asserts the reply came from `target` itself.
            match c.ice_check(*target, &p) {
                StunReply::Success { mapped } => assert_eq!(mapped, c.addr(), "XOR-MAPPED-ADDRESS"),
                other => panic!("{room}: {other:?}\n{}", gw.stderr()),
            }
            for s in 0..MEDIA {
                c.send(*target, &fake_rtp(s as u16));
            }
            sessions.push((p, c));
        }
    }
    let total_media = sessions.len() as u64 * MEDIA;
    let delivered = || sum_threads(&in_netns(&topo.gw, || gw.status()), "session_datagrams");
    assert!(
        eventually(Duration::from_secs(10), || delivered() == total_media),
        "delivered {} of {total_media}",
        delivered()
    );
    let after = in_netns(&topo.gw, || gw.status());
    if steering == "ebpf" {
        let d = |k: &str| ebpf_counter(&after, k) - ebpf_counter(&before, k);
        assert_eq!(d("steered_by_flow"), total_media, "{after}");
        assert!(d("steered_by_room") >= sessions.len() as u64, "{after}");
        assert_eq!(
            d("flow_miss"),
            0,
            "IPv4 keys from v4-mapped addresses match: {after}"
        );
    } else {
        assert_eq!(
            sum_threads(&after, "connected_sockets"),
            sessions.len() as u64,
            "one connected socket per client, bound to its arrival address: {after}"
        );
    }
    for t in 0..gw.threads {
        assert_eq!(thread_counter(&after, t, "misdelivered"), 0, "{after}");
        assert_eq!(thread_counter(&after, t, "no_session"), 0, "{after}");
    }
    // Every participant's datagrams reached its own session on its room's thread.
    for (p, c) in &sessions {
        let (_, room) = in_netns(&topo.gw, || gw.get(&format!("/api/rooms/{}", p.room)));
        assert_eq!(room["thread"].as_u64(), Some(p.thread as u64));
        let me = room["participants"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|x| x["participant"] == p.participant.as_str())
                    .cloned()
            })
            .expect("participant listed");
        assert_eq!(me["rx_datagrams"].as_u64(), Some(MEDIA), "{me}");
        assert_eq!(me["addresses"][0], c.addr().to_string(), "{me}");
    }
    drop(gw);
    drop(topo);
}
