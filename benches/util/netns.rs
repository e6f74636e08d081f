//! The benchmarks' two-namespace path: the system under test (roomgate, the plain relay,
//! Janus) runs in namespace [`NS`] behind a veth pair, the load generator stays in the root
//! namespace. Every datagram then crosses veth the way it would cross a NIC driver, and
//! Janus (which never gathers loopback candidates) sees a real interface. All baselines use
//! these names and addresses so that they are measured on the same path.
use std::process::Command;

/// Namespace the system under test runs in.
pub const NS: &str = "rgb-gw";
/// Root-namespace end of the veth pair (the load generator's side).
pub const HOST_IF: &str = "rgb-h";
/// Namespace end of the veth pair (the server's side).
pub const NS_IF: &str = "rgb-g";
/// Load generator address (root namespace), documentation range (RFC 5737).
pub const HOST_IP: &str = "198.51.100.1";
/// Server address inside [`NS`].
pub const NS_IP: &str = "198.51.100.2";
pub const PREFIX_LEN: u8 = 24;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("namespace {NS} is in use by processes {0} (another bench run?)")]
    InUse(String),
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The namespace and its veth pair; dropping it (also while a panic unwinds) deletes the
/// namespace, which takes the veth pair with it.
pub struct VethNs {
    _private: (),
}

impl VethNs {
    /// Create [`NS`] with the veth pair, replacing what a crashed earlier run left behind.
    /// A namespace that still has processes belongs to a run in progress and is left alone.
    pub fn create() -> Result<VethNs, NetnsError> {
        let pids = Command::new("ip").args(["netns", "pids", NS]).output()?;
        let pids = String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !pids.is_empty() {
            return Err(NetnsError::InUse(pids));
        }
        remove_leftovers();
        // The guard exists before the first step so a failure halfway is cleaned up too.
        let guard = VethNs { _private: () };
        let host_addr = format!("{HOST_IP}/{PREFIX_LEN}");
        let ns_addr = format!("{NS_IP}/{PREFIX_LEN}");
        ip(&["netns", "add", NS])?;
        ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS,
        ])?;
        ip(&["addr", "add", &host_addr, "dev", HOST_IF])?;
        ip(&["link", "set", HOST_IF, "up"])?;
        ip(&["-n", NS, "addr", "add", &ns_addr, "dev", NS_IF])?;
        ip(&["-n", NS, "link", "set", NS_IF, "up"])?;
        ip(&["-n", NS, "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// Command prefix that runs a program inside [`NS`], pinned to `cpu` when given.
    pub fn wrapper(&self, cpu: Option<usize>) -> Vec<String> {
        let mut w: Vec<String> = ["ip", "netns", "exec", NS]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        w.extend(pin_wrapper(cpu));
        w
    }
}

/// `taskset -c CPU` (both exec in place, so the child's pid is the program's pid).
pub fn pin_wrapper(cpu: Option<usize>) -> Vec<String> {
    match cpu {
        Some(c) => vec!["taskset".into(), "-c".into(), c.to_string()],
        None => Vec::new(),
    }
}

fn remove_leftovers() {
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
}

impl Drop for VethNs {
    fn drop(&mut self) {
        remove_leftovers();
    }
}

/// Where the system under test runs relative to the load generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Everything on 127.0.0.1 in the root namespace.
    Loopback,
    /// Server in [`NS`], load generator in the root namespace, across the veth pair.
    Veth,
}

impl Path {
    pub fn parse(s: &str) -> Option<Path> {
        match s {
            "loopback" => Some(Path::Loopback),
            "veth" => Some(Path::Veth),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Path::Loopback => "loopback",
            Path::Veth => "veth",
        }
    }
    pub fn server_ip(self) -> &'static str {
        match self {
            Path::Loopback => "127.0.0.1",
            Path::Veth => NS_IP,
        }
    }
    pub fn client_ip(self) -> &'static str {
        match self {
            Path::Loopback => "127.0.0.1",
            Path::Veth => HOST_IP,
        }
    }
}
