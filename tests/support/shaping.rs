//! A star of network namespaces for tests that need links of different quality: the hub is
//! the test thread's own namespace (the gateway and the report server it starts live
//! there), and every leaf is joined to the hub by its own veth pair, so a `tbf` rate limit
//! on one link (this kernel has no netem) shapes one client and nobody else.
#![allow(dead_code)]

use std::{net::Ipv4Addr, process::Command};

use crate::support::netns::TestNetns;

/// The hub's service address (on its loopback): every leaf reaches it through its own link.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// A token bucket refilled at the link's rate. The bucket holds a little more than one
/// full-size packet, as a plain rate limit does.
const TBF_BURST: &str = "16kbit";
/// How long a packet may wait in the link's queue before it is dropped. Access links buffer a
/// few hundred milliseconds; 50 ms at 300 kbit/s holds under two full packets, so even the
/// paced packets of one small frame would overflow it, and a delay-based estimator would never
/// see the queue grow before the loss.
const TBF_LATENCY: &str = "200ms";

fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// One leaf namespace and its link to the hub.
struct Leaf {
    label: String,
    netns: String,
    /// The hub's end of the veth pair (the leaf's end is `eth0`).
    hub_dev: String,
    addr: Ipv4Addr,
}

/// The hub (entered by the calling thread) and its leaves. Dropping it deletes the leaves,
/// then the hub, and moves the thread back; drop everything running in a leaf first.
pub struct Star {
    leaves: Vec<Leaf>,
    hub: TestNetns,
}

impl Star {
    /// Enter hub `rg<pid><tag>` and give it one leaf per label, `/30` links numbered from
    /// 198.51.100.0 (hub end `.4i+1`, leaf end `.4i+2`, the leaf's default route via the hub).
    pub fn enter(tag: &str, labels: &[&str]) -> Star {
        assert!(labels.len() < 60, "one /30 per leaf below {HUB_IP}");
        let hub = TestNetns::enter(tag);
        ip(&[
            "-n",
            &hub.name,
            "addr",
            "add",
            &format!("{HUB_IP}/32"),
            "dev",
            "lo",
        ]);
        // The star exists before its leaves, so a failure half-way still deletes them.
        let mut star = Star {
            leaves: Vec::new(),
            hub,
        };
        for (i, label) in labels.iter().enumerate() {
            let netns = format!("{}{}", star.hub.name, label.to_ascii_lowercase());
            let _ = Command::new("ip").args(["netns", "del", &netns]).output();
            ip(&["netns", "add", &netns]);
            let hub_dev = format!("to-{}", label.to_ascii_lowercase());
            let base = 4 * i as u8;
            let (hub_end, leaf_end) = (
                Ipv4Addr::new(198, 51, 100, base + 1),
                Ipv4Addr::new(198, 51, 100, base + 2),
            );
            star.leaves.push(Leaf {
                label: (*label).to_owned(),
                netns: netns.clone(),
                hub_dev: hub_dev.clone(),
                addr: leaf_end,
            });
            let hub_ns = star.hub.name.clone();
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub_ns, "link", "add", &hub_dev, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ]);
            ip(&[
                "-n",
                &hub_ns,
                "addr",
                "add",
                &format!("{hub_end}/30"),
                "dev",
                &hub_dev,
            ]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{leaf_end}/30"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &hub_ns, "link", "set", &hub_dev, "up"]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &hub_end.to_string(),
            ]);
        }
        star
    }

    pub fn hub_netns(&self) -> &str {
        &self.hub.name
    }

    fn leaf(&self, label: &str) -> &Leaf {
        self.leaves
            .iter()
            .find(|l| l.label == label)
            .unwrap_or_else(|| panic!("no leaf {label}"))
    }

    /// The namespace of leaf `label`, for `ip netns exec`.
    pub fn netns(&self, label: &str) -> &str {
        &self.leaf(label).netns
    }

    /// The leaf's own address on its link.
    pub fn addr(&self, label: &str) -> Ipv4Addr {
        self.leaf(label).addr
    }

    /// What the hub sends to leaf `label` (the hub's end of its veth).
    pub fn downlink(&self, label: &str) -> Link {
        Link {
            netns: self.hub.name.clone(),
            dev: self.leaf(label).hub_dev.clone(),
            what: format!("{label} downlink"),
        }
    }

    /// What leaf `label` sends to the hub (the leaf's end of its veth).
    pub fn uplink(&self, label: &str) -> Link {
        Link {
            netns: self.leaf(label).netns.clone(),
            dev: "eth0".to_owned(),
            what: format!("{label} uplink"),
        }
    }

    /// `tc -s qdisc` of every link in both directions, for failure messages.
    pub fn describe(&self) -> String {
        self.leaves
            .iter()
            .flat_map(|l| [self.downlink(&l.label), self.uplink(&l.label)])
            .map(|link| link.stats())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        for leaf in &self.leaves {
            let _ = Command::new("ip")
                .args(["netns", "del", &leaf.netns])
                .output();
        }
        // `hub` drops next: the thread goes home and the hub (with its veth ends) goes.
    }
}

/// One direction of a leaf's link: the egress of one veth end.
pub struct Link {
    netns: String,
    dev: String,
    what: String,
}

impl Link {
    /// Cap the link at `kbit` kbit/s (replacing an earlier cap).
    pub fn limit(&self, kbit: u32) {
        run(
            "tc",
            &[
                "-n",
                &self.netns,
                "qdisc",
                "replace",
                "dev",
                &self.dev,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                TBF_BURST,
                "latency",
                TBF_LATENCY,
            ],
        );
    }

    /// Remove the cap (the veth is back to no queue at all).
    pub fn lift(&self) {
        run(
            "tc",
            &["-n", &self.netns, "qdisc", "del", "dev", &self.dev, "root"],
        );
    }

    /// The link's qdisc with its counters (sent, dropped, overlimits).
    pub fn stats(&self) -> String {
        let out = Command::new("tc")
            .args(["-s", "-n", &self.netns, "qdisc", "show", "dev", &self.dev])
            .output();
        let text = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            Err(e) => format!("tc: {e}"),
        };
        format!("{} ({} in {}): {text}", self.what, self.dev, self.netns)
    }
}
