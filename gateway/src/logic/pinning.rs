//! Pinning a verified client address to this thread: an entry in the eBPF flow map, or a
//! socket connected to the client (connected mode). The core decides; this carries it out.
use std::{io, net::SocketAddr};

use tracing::warn;

use crate::{
    stats::ThreadStats,
    steering::{ebpf::FlowTable, flow_key, ActiveMode},
};

use super::{session::ReplyPath, sockets::Sockets, table::ConnId};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The address is pinned to another session (on this or another thread).
    #[error("address pinned to another session")]
    Conflict,
    #[error("no flow map handle")]
    NoFlowMap,
    #[error("flow map insert: {0}")]
    FlowMap(#[source] aya::maps::MapError),
    #[error("connected socket: {0}")]
    Socket(#[source] io::Error),
}

pub struct Pinning {
    mode: ActiveMode,
    index: usize,
    flows: Option<FlowTable>,
    /// The group's address; connected sockets bind it (or the arrival address).
    local_addr: SocketAddr,
}

impl Pinning {
    pub fn new(
        mode: ActiveMode,
        index: usize,
        flows: Option<FlowTable>,
        local_addr: SocketAddr,
    ) -> Self {
        Pinning {
            mode,
            index,
            flows,
            local_addr,
        }
    }

    /// Pin canonical `addr`, whose check arrived as `reply` says.
    pub fn pin(
        &mut self,
        sockets: &mut Sockets,
        addr: SocketAddr,
        reply: ReplyPath,
        stats: &ThreadStats,
    ) -> Result<Option<ConnId>, PinError> {
        match self.mode {
            ActiveMode::Ebpf => {
                let flows = self.flows.as_mut().ok_or(PinError::NoFlowMap)?;
                match flows.pin(flow_key(addr), self.index as u32) {
                    Ok(Ok(())) => Ok(None),
                    Ok(Err(_holder)) => Err(PinError::Conflict),
                    Err(e) => Err(PinError::FlowMap(e)),
                }
            }
            ActiveMode::Connected => {
                if let Some(id) = sockets.conn_of(&addr) {
                    return Ok(Some(id));
                }
                // With a wildcard group, bind the client's socket to the address its
                // request arrived on: connect() would otherwise pick a source by routing,
                // and on a multi-homed host the ICE agent drops replies from an address it
                // did not send to (and its later datagrams, sent to the arrival address,
                // would miss the socket).
                let local = match reply.local_ip {
                    Some(ip) if self.local_addr.ip().is_unspecified() => {
                        SocketAddr::new(ip, self.local_addr.port())
                    }
                    _ => self.local_addr,
                };
                sockets
                    .open_conn(local, reply.to, addr, stats)
                    .map(Some)
                    .map_err(PinError::Socket)
            }
        }
    }

    pub fn unpin(&mut self, sockets: &mut Sockets, addr: SocketAddr, stats: &ThreadStats) {
        match self.mode {
            ActiveMode::Ebpf => {
                if let Some(flows) = self.flows.as_mut() {
                    if let Err(e) = flows.unpin(&flow_key(addr)) {
                        stats.unpin_failures.inc();
                        warn!(thread = self.index, client = %addr, error = %e, "flow map remove");
                    }
                }
            }
            ActiveMode::Connected => sockets.close_conn(&addr, stats),
        }
    }
}
