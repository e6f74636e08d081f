//! A logic thread's sockets: its member of the SO_REUSEPORT group and, in connected mode,
//! one socket connected to each pinned client. Receives in recvmmsg batches (quinn-udp);
//! every send goes through [`Sockets::send`], the one place to batch them later.
use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::SocketAddr,
};

use mio::{net::UdpSocket, Interest, Registry, Token};
use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

use crate::{net, stats::ThreadStats};

use super::{
    core::{canonical, Arrival, Transmit},
    table::ConnId,
};

pub const GROUP: Token = Token(0);
pub const WAKER: Token = Token(1);
const CONN_BASE: usize = 2;
/// Largest datagram we accept; WebRTC keeps packets under the path MTU.
pub const MAX_DATAGRAM: usize = 2048;

/// Which socket to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Group,
    Conn(ConnId),
}

impl Via {
    pub fn of(token: Token) -> Option<Via> {
        match token {
            GROUP => Some(Via::Group),
            WAKER => None,
            Token(t) => Some(Via::Conn(ConnId((t - CONN_BASE) as u32))),
        }
    }
}

struct ConnSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Canonical client address this socket is connected to.
    peer: SocketAddr,
    drops: net::DropTracker,
    /// Read since its drop count was last polled. The kernel only drops for a socket that
    /// has datagrams queued, and a socket with datagrams queued gets read, so polling
    /// just these finds every drop without a getsockopt per idle client.
    read: std::cell::Cell<bool>,
}

pub struct Sockets {
    registry: Registry,
    group: UdpSocket,
    group_state: UdpSocketState,
    group_drops: net::DropTracker,
    /// The group is IPv6 (dual stack): IPv4 clients are v4-mapped on it.
    group_v6: bool,
    /// The group is bound to one address, so every reply leaves from it without an
    /// IP_PKTINFO source (and the kernel parses no cmsg per datagram).
    group_fixed_source: bool,
    conns: Vec<Option<ConnSocket>>,
    free: Vec<u32>,
    /// Pin and unpin time only; the hot path carries the `ConnId`.
    by_peer: HashMap<SocketAddr, ConnId>,
    buffers: net::BufferSizes,
}

/// One received datagram.
pub struct Datagram<'a> {
    pub from: SocketAddr,
    pub local_ip: Option<std::net::IpAddr>,
    pub data: &'a mut [u8],
    /// It filled its receive slot, so it may have been cut short: the caller must drop
    /// it rather than act on a truncated packet.
    pub oversized: bool,
}

/// One recvmmsg batch: receive buffers for [`BATCH_SIZE`] datagrams and their metadata.
pub struct RecvBatch {
    buf: Box<[u8]>,
    meta: [RecvMeta; BATCH_SIZE],
}

impl RecvBatch {
    pub fn new() -> Self {
        RecvBatch {
            buf: vec![0u8; MAX_DATAGRAM * BATCH_SIZE].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// A placeholder holding no buffer (allocates nothing), for while the real batch is
    /// lent out.
    pub fn empty() -> Self {
        RecvBatch {
            buf: Box::default(),
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// The `n` datagrams of the last receive. GRO is off, so one slot holds one
    /// datagram; a stride is honoured anyway.
    pub fn for_each(&mut self, n: usize, mut f: impl FnMut(Datagram<'_>)) {
        for (i, m) in self.meta.iter().enumerate().take(n) {
            let slot = &mut self.buf[i * MAX_DATAGRAM..(i + 1) * MAX_DATAGRAM];
            let len = m.len.min(MAX_DATAGRAM);
            let stride = m.stride.max(1);
            if len == 0 {
                f(Datagram {
                    from: m.addr,
                    local_ip: m.dst_ip,
                    data: &mut slot[..0],
                    oversized: false,
                });
                continue;
            }
            // Without GRO a datagram is alone in its slot; one that fills the slot was
            // probably longer than it (the kernel truncates silently).
            let oversized = len == MAX_DATAGRAM && stride >= len;
            for chunk in slot[..len].chunks_mut(stride) {
                f(Datagram {
                    from: m.addr,
                    local_ip: m.dst_ip,
                    data: chunk,
                    oversized,
                });
            }
        }
    }
}

impl Sockets {
    pub fn new(
        registry: Registry,
        socket: std::net::UdpSocket,
        buffers: net::BufferSizes,
    ) -> io::Result<Self> {
        let group_state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let local = socket.local_addr()?;
        net::disable_gro(&socket);
        let mut group = UdpSocket::from_std(socket);
        registry.register(&mut group, GROUP, Interest::READABLE)?;
        Ok(Sockets {
            registry,
            group,
            group_state,
            group_drops: net::DropTracker::default(),
            group_v6: local.is_ipv6(),
            group_fixed_source: !local.ip().is_unspecified(),
            conns: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            buffers,
        })
    }

    fn conn(&self, id: ConnId) -> Option<&ConnSocket> {
        self.conns.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// How the core sees a datagram that arrived `via` this socket.
    pub fn arrival(&self, via: Via) -> Arrival {
        match via {
            Via::Group => Arrival::Group,
            Via::Conn(conn) => match self.conn(conn) {
                Some(c) => Arrival::Conn { conn, peer: c.peer },
                None => Arrival::Group,
            },
        }
    }

    /// One recvmmsg into `batch`; the number of datagrams read.
    pub fn recv(&self, via: Via, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut chunks = batch.buf.chunks_mut(MAX_DATAGRAM).map(IoSliceMut::new);
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        match via {
            Via::Group => {
                self.group_state
                    .recv(UdpSockRef::from(&self.group), &mut iovs, &mut batch.meta)
            }
            Via::Conn(id) => match self.conn(id) {
                Some(c) => {
                    c.read.set(true);
                    c.state
                        .recv(UdpSockRef::from(&c.socket), &mut iovs, &mut batch.meta)
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }

    /// One datagram, one sendmsg. On the client's connected socket it goes without a
    /// destination address: the kernel then reuses the socket's cached route instead of
    /// a route lookup per packet. On the group socket it leaves from the address the
    /// client sent to (IP_PKTINFO): on a multi-homed host routing might otherwise pick
    /// another source and the ICE agent would drop the reply.
    pub fn send(&self, t: &Transmit) -> io::Result<()> {
        match self.connected(t) {
            Some(c) => c.socket.send(&t.contents).map(|_| ()),
            None => self.group_state.try_send(
                UdpSockRef::from(&self.group),
                &UdpTransmit {
                    destination: t.to,
                    ecn: None,
                    contents: &t.contents,
                    segment_size: None,
                    src_ip: self.source(t),
                },
            ),
        }
    }

    /// The client's connected socket, if `t` leaves on one.
    fn connected(&self, t: &Transmit) -> Option<&ConnSocket> {
        t.conn
            .and_then(|id| self.conn(id))
            .filter(|c| c.peer == canonical(t.to))
    }

    /// `t` leaves on the group socket (no connected socket of its client).
    pub fn on_group(&self, t: &Transmit) -> bool {
        self.connected(t).is_none()
    }

    /// The IP_PKTINFO source for `t` on the group socket, if one is needed.
    pub fn source(&self, t: &Transmit) -> Option<std::net::IpAddr> {
        if self.group_fixed_source {
            None
        } else {
            t.src_ip
        }
    }

    /// Send group-socket transmits `n` at a time with one `sendmmsg`.
    pub fn send_many<'a>(
        &self,
        multi: &mut super::multi_send::MultiSend,
        n: usize,
        item: impl Fn(usize) -> &'a Transmit,
        result: impl FnMut(usize, Option<i32>),
    ) {
        multi.send(
            &self.group,
            self.group_v6,
            n,
            |i| {
                let t = item(i);
                super::multi_send::Item {
                    to: t.to,
                    src_ip: self.source(t),
                    contents: &t.contents,
                }
            },
            result,
        );
    }

    /// Datagrams one send may carry with UDP GSO on the group socket (1: no GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.group_state.max_gso_segments()
    }

    /// Send `contents`, `segment` bytes per datagram (the last may be shorter), to where
    /// `head` goes, in one `sendmsg` with `UDP_SEGMENT`.
    pub fn send_segments(
        &self,
        head: &Transmit,
        contents: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let transmit = |src_ip| UdpTransmit {
            destination: head.to,
            ecn: None,
            contents,
            segment_size: Some(segment),
            src_ip,
        };
        match self.connected(head) {
            Some(c) => c
                .state
                .try_send(UdpSockRef::from(&c.socket), &transmit(None)),
            None => self
                .group_state
                .try_send(UdpSockRef::from(&self.group), &transmit(self.source(head))),
        }
    }

    /// The connected socket of canonical `peer`, if it has one.
    pub fn conn_of(&self, peer: &SocketAddr) -> Option<ConnId> {
        self.by_peer.get(peer).copied()
    }

    /// Open a socket bound to `local` and connected to `to` (canonical `peer`).
    pub fn open_conn(
        &mut self,
        local: SocketAddr,
        to: SocketAddr,
        peer: SocketAddr,
        stats: &ThreadStats,
    ) -> io::Result<ConnId> {
        let std_socket = net::open_connected(local, to, self.buffers)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        net::disable_gro(&std_socket);
        let mut socket = UdpSocket::from_std(std_socket);
        let index = self.free.pop().unwrap_or(self.conns.len() as u32);
        if let Err(e) = self.registry.register(
            &mut socket,
            Token(CONN_BASE + index as usize),
            Interest::READABLE,
        ) {
            if (index as usize) < self.conns.len() {
                self.free.push(index);
            }
            return Err(e);
        }
        let conn = ConnSocket {
            socket,
            state,
            peer,
            drops: net::DropTracker::default(),
            read: std::cell::Cell::new(false),
        };
        if index as usize == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[index as usize] = Some(conn);
        }
        let id = ConnId(index);
        self.by_peer.insert(peer, id);
        stats.connected_sockets.set(self.by_peer.len() as u64);
        Ok(id)
    }

    /// Close the connected socket of canonical `peer`.
    pub fn close_conn(&mut self, peer: &SocketAddr, stats: &ThreadStats) {
        if let Some(id) = self.by_peer.remove(peer) {
            if let Some(mut conn) = self.conns.get_mut(id.0 as usize).and_then(Option::take) {
                // Its last drops, before the socket and its counter are gone.
                stats.socket_receive_drops[1].add(conn.drops.poll(&conn.socket));
                let _ = self.registry.deregister(&mut conn.socket);
                self.free.push(id.0);
            }
        }
        stats.connected_sockets.set(self.by_peer.len() as u64);
    }

    /// Fold the kernel's per-socket drop counts into the thread's counters. One
    /// getsockopt per socket per publication: cheap next to the datagrams a socket carries.
    pub fn poll_receive_drops(&mut self, stats: &ThreadStats) {
        stats.socket_receive_drops[0].add(self.group_drops.poll(&self.group));
        let mut connected = 0;
        for conn in self.conns.iter_mut().flatten() {
            if conn.read.replace(false) {
                connected += conn.drops.poll(&conn.socket);
            }
        }
        stats.socket_receive_drops[1].add(connected);
    }
}
