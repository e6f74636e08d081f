//! How datagrams reach the thread that owns their room: eBPF or connected fallback.
pub mod ebpf;
pub mod live;
mod verifier;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Mutex,
};

use roomgate_common::{Counter, FlowKey};

use crate::config::{Config, SteeringMode};

/// The mode that actually runs (after `auto` resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveMode {
    Ebpf,
    Connected,
}

impl ActiveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveMode::Ebpf => "ebpf",
            ActiveMode::Connected => "connected",
        }
    }
}

/// Result of the pre-bind phase: the program loaded (or why not).
pub enum Prepared {
    Ebpf(Box<ebpf::Loaded>),
    Connected { fallback_reason: Option<String> },
}

/// Steering as it runs. The eBPF handle lives here for the process lifetime; the
/// control plane reads counters through the mutex (never touched by logic threads).
pub struct Steering {
    pub mode: ActiveMode,
    pub fallback_reason: Option<String>,
    ebpf: Option<Mutex<ebpf::Loaded>>,
}

/// Load the program before any port is bound. `ebpf` mode fails hard; `auto` logs the
/// reason (with the verifier log) and falls back to connected.
pub fn prepare(config: &Config) -> Result<Prepared, ebpf::EbpfError> {
    match config.steering {
        SteeringMode::Connected => Ok(Prepared::Connected {
            fallback_reason: None,
        }),
        SteeringMode::Ebpf => Ok(Prepared::Ebpf(Box::new(ebpf::Loaded::load(
            config.ebpf_object.as_deref(),
            config.threads as u32,
        )?))),
        SteeringMode::Auto => {
            match ebpf::Loaded::load(config.ebpf_object.as_deref(), config.threads as u32) {
                Ok(loaded) => Ok(Prepared::Ebpf(Box::new(loaded))),
                Err(e) => Ok(Prepared::Connected {
                    fallback_reason: Some(fall_back(&e)),
                }),
            }
        }
    }
}

fn fall_back(e: &ebpf::EbpfError) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !reason.contains(&c) {
            reason = format!("{reason}: {c}");
        }
        source = cause.source();
    }
    tracing::warn!(reason = %reason, "eBPF steering unavailable; FALLING BACK to connected-UDP steering");
    reason
}

/// After the group is bound: attach the program, or stay connected.
pub fn activate(
    prepared: Prepared,
    config: &Config,
    sockets: &[UdpSocket],
) -> Result<Steering, ebpf::EbpfError> {
    match prepared {
        Prepared::Connected { fallback_reason } => Ok(Steering {
            mode: ActiveMode::Connected,
            fallback_reason,
            ebpf: None,
        }),
        Prepared::Ebpf(mut loaded) => match loaded.attach(sockets) {
            Ok(()) => {
                // Before any session exists: the logic threads start after activation.
                match loaded.live_ufrag_fds() {
                    Ok((ufrags, config)) => {
                        if let Err(e) = live::install(ufrags, config) {
                            tracing::warn!(error = %e, "cannot switch on the kernel's live-ufrag filter");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no live-ufrag map: the kernel will not drop checks for unknown sessions");
                    }
                }
                Ok(Steering {
                    mode: ActiveMode::Ebpf,
                    fallback_reason: None,
                    ebpf: Some(Mutex::new(*loaded)),
                })
            }
            Err(e) if config.steering == SteeringMode::Auto => Ok(Steering {
                mode: ActiveMode::Connected,
                fallback_reason: Some(fall_back(&e)),
                ebpf: None,
            }),
            Err(e) => Err(e),
        },
    }
}

impl Steering {
    /// A flow-map handle per logic thread (eBPF mode only).
    pub fn flow_table(&self) -> Result<Option<ebpf::FlowTable>, ebpf::EbpfError> {
        match &self.ebpf {
            Some(loaded) => loaded
                .lock()
                .map_err(|_| ebpf::EbpfError::MissingMap("poisoned"))?
                .flow_table()
                .map(Some),
            None => Ok(None),
        }
    }

    /// The program's per-branch counters, summed over CPUs; `None` in connected mode.
    pub fn ebpf_counters(&self) -> Option<Vec<(&'static str, u64)>> {
        let loaded = self.ebpf.as_ref()?.lock().ok()?;
        let values = loaded.counters().ok()?;
        Some(
            Counter::ALL
                .iter()
                .map(|c| (c.name(), values[*c as usize]))
                .collect(),
        )
    }

    /// Instructions the verifier processed to accept the program (eBPF mode, when the
    /// kernel tells).
    pub fn verified_insns(&self) -> Option<u32> {
        self.ebpf.as_ref()?.lock().ok()?.verified_insns()
    }

    pub fn flows_capacity(&self) -> Option<u32> {
        Some(self.ebpf.as_ref()?.lock().ok()?.flows_capacity())
    }

    pub fn detach(&self, sockets: &[UdpSocket]) {
        if self.ebpf.is_some() {
            if let Some(first) = sockets.first() {
                if let Err(e) = ebpf::Loaded::detach(first) {
                    tracing::warn!(error = %e, "detaching the steering program failed");
                }
            }
        }
    }
}

/// The flow-map key of a client address as the kernel program builds it. IPv4 clients of
/// a dual-stack socket appear as v4-mapped IPv6 in userspace but as IPv4 in the kernel.
pub fn flow_key(addr: SocketAddr) -> FlowKey {
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => FlowKey::v4(v4.octets(), addr.port()),
        std::net::IpAddr::V6(v6) => FlowKey::v6(v6.octets(), addr.port()),
    }
}
