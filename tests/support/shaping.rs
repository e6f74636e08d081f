//! A star of network namespaces for tests that need links of different quality: the hub is
//! the test thread's own namespace (the gateway and the report server it starts live
//! there), and every leaf is joined to the hub by its own veth pair, so a `tbf` rate limit
//! on one link (this kernel has no netem) shapes one client and nobody else. Random loss
//! is an nftables `numgen random` rule on the leaf's ingress, with counters that say how
//! much it really dropped.
#![allow(dead_code)]

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;

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
    /// Labels of the leaves whose downlink drops packets at random.
    lossy: Vec<String>,
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
            lossy: Vec::new(),
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

    /// `tc -s qdisc` of every link in both directions, and the loss rules' counters, for
    /// failure messages.
    pub fn describe(&self) -> String {
        self.leaves
            .iter()
            .flat_map(|l| [self.downlink(&l.label), self.uplink(&l.label)])
            .map(|link| link.stats())
            .chain(self.lossy.iter().map(|label| {
                let counts = self.loss_counts(label);
                format!(
                    "{label} downlink loss ({LOSS_TABLE} in {}): {counts:?}",
                    self.netns(label)
                )
            }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Drop `percent` % of the UDP datagrams `from` sends to leaf `label`, each on its own
    /// draw, and count what was dropped and what passed.
    ///
    /// The rule sits on the leaf's ingress, where datagrams arrive one by one, because the
    /// gateway sends runs of datagrams to one client as one UDP GSO buffer and a veth hands
    /// such a buffer on whole: dropped there, a whole run would go as one "packet". So the
    /// hub's end also gets `gso_max_segs 1`, which makes the hub's stack cut runs into
    /// datagrams before the link, as a NIC does on a wire.
    pub fn downlink_loss(&mut self, label: &str, percent: u32, from: SocketAddr) {
        assert!(percent <= 100, "a loss rate is a percentage");
        let (netns, hub_dev) = {
            let leaf = self.leaf(label);
            (leaf.netns.clone(), leaf.hub_dev.clone())
        };
        ip(&[
            "-n",
            &self.hub.name,
            "link",
            "set",
            "dev",
            &hub_dev,
            "gso_max_segs",
            "1",
        ]);
        let source = format!("ip saddr {} udp sport {}", from.ip(), from.port());
        // Whitespace is nft's own business; the rules read as they would in a file.
        let ruleset = format!(
            "table netdev {LOSS_TABLE} {{
                counter dropped {{ }}
                counter passed {{ }}
                counter dropped_tagged {{ }}
                counter passed_tagged {{ }}
                chain {LOSE_CHAIN} {{
                    counter name \"dropped\" drop
                }}
                chain {PASS_CHAIN} {{
                    counter name \"passed\"
                }}
                chain downlink {{
                    type filter hook ingress device \"eth0\" priority 0; policy accept;
                    {source} numgen random mod 100 < {percent} goto {LOSE_CHAIN}
                    {source} goto {PASS_CHAIN}
                }}
            }}
            "
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run nft: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ruleset.as_bytes())
                .unwrap_or_else(|e| panic!("write the ruleset to nft: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for nft: {e}"));
        assert!(
            out.status.success(),
            "nft -f - in {netns}: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.lossy.push(label.to_owned());
    }

    /// Count apart, from now on, the datagrams of RTP stream `ssrc` that the loss rule on
    /// `label`'s downlink drops and lets pass ([`LossCounts::tagged_dropped`] and
    /// [`LossCounts::tagged_passed`]), leaving out padding-only packets (a viewer's probes
    /// ride its RTX stream too). SRTP leaves the RTP header in the clear, so the rules
    /// match the padding bit (bit 2 of the UDP payload) and the SSRC (bytes 8-11); they
    /// decide nothing, the random draw before them already has.
    pub fn tag_ssrc(&self, label: &str, ssrc: u32) {
        let netns = self.netns(label);
        for (chain, counter) in [
            (LOSE_CHAIN, "dropped_tagged"),
            (PASS_CHAIN, "passed_tagged"),
        ] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    netns,
                    "nft",
                    "insert",
                    "rule",
                    "netdev",
                    LOSS_TABLE,
                    chain,
                    "@th,66,1",
                    "0",
                    "@th,128,32",
                    &ssrc.to_string(),
                    "counter",
                    "name",
                    counter,
                ],
            );
        }
    }

    /// What the loss rule on `label`'s downlink has dropped and let pass so far (an error
    /// says why nft could not tell).
    pub fn loss_counts(&self, label: &str) -> Result<LossCounts, String> {
        let netns = self.netns(label);
        let out = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(["nft", "-j", "list", "table", "netdev", LOSS_TABLE])
            .output()
            .map_err(|e| format!("run nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft list table netdev {LOSS_TABLE} in {netns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let listing: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nft -j printed no JSON ({e})"))?;
        let counter = |name: &str| -> Result<(u64, u64), String> {
            let c = listing["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| &item["counter"])
                .find(|c| c["name"] == name)
                .ok_or_else(|| format!("no counter {name} in {LOSS_TABLE}: {listing}"))?;
            let field = |key: &str| {
                c[key]
                    .as_u64()
                    .ok_or_else(|| format!("counter {name}: no {key}"))
            };
            Ok((field("packets")?, field("bytes")?))
        };
        let (dropped, dropped_bytes) = counter("dropped")?;
        let (passed, passed_bytes) = counter("passed")?;
        Ok(LossCounts {
            dropped,
            passed,
            bytes: dropped_bytes + passed_bytes,
            tagged_dropped: counter("dropped_tagged")?.0,
            tagged_passed: counter("passed_tagged")?.0,
        })
    }
}

/// The nftables table that holds a leaf's loss rule (one per leaf namespace).
const LOSS_TABLE: &str = "rgloss";
/// Its chains for the datagrams the draw drops and lets pass.
const LOSE_CHAIN: &str = "lose";
const PASS_CHAIN: &str = "pass";
const NFT: &str = "/usr/sbin/nft";

/// Whether the loss tests can run: without `nft` they fail, with the way to install it.
pub fn nft_available() -> bool {
    if Path::new(NFT).exists() {
        return true;
    }
    panic!(
        "{NFT} is missing: `apt-get install -y nftables` (cargo xtask test installs it); \
         the loss tests drop packets with nftables because this kernel has no netem"
    );
}

/// A loss rule's counters: datagrams dropped, datagrams let through, bytes of both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounts {
    pub dropped: u64,
    pub passed: u64,
    pub bytes: u64,
    /// The part of `dropped` and `passed` that belongs to the stream [`Star::tag_ssrc`] named.
    pub tagged_dropped: u64,
    pub tagged_passed: u64,
}

impl LossCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: LossCounts) -> LossCounts {
        LossCounts {
            dropped: self.dropped.saturating_sub(earlier.dropped),
            passed: self.passed.saturating_sub(earlier.passed),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            tagged_dropped: self.tagged_dropped.saturating_sub(earlier.tagged_dropped),
            tagged_passed: self.tagged_passed.saturating_sub(earlier.tagged_passed),
        }
    }

    pub fn total(self) -> u64 {
        self.dropped + self.passed
    }

    /// The share of datagrams dropped (0 when none were seen).
    pub fn rate(self) -> f64 {
        if self.total() == 0 {
            return 0.0;
        }
        self.dropped as f64 / self.total() as f64
    }

    /// Mean bytes per counted packet: at most a link MTU if every packet was one datagram.
    pub fn mean_size(self) -> f64 {
        if self.total() == 0 {
            return 0.0;
        }
        self.bytes as f64 / self.total() as f64
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

    /// Packets the link's root qdisc has dropped so far (an error says why tc could not
    /// tell).
    pub fn dropped(&self) -> Result<u64, String> {
        let out = Command::new("tc")
            .args([
                "-s",
                "-j",
                "-n",
                &self.netns,
                "qdisc",
                "show",
                "dev",
                &self.dev,
            ])
            .output()
            .map_err(|e| format!("run tc: {e}"))?;
        let qdiscs: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("tc -j printed no JSON ({e})"))?;
        qdiscs
            .as_array()
            .into_iter()
            .flatten()
            .find(|q| q["root"] == true)
            .and_then(|q| q["drops"].as_u64())
            .ok_or_else(|| format!("{}: no root qdisc with drops in {qdiscs}", self.what))
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
