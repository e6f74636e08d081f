//! Logic threads: one event loop per core, each owning its sockets, rooms and sessions.
//!
//! Nothing here is shared with another thread except the command channel (control
//! plane -> thread) and the thread's own counters (thread -> control plane, read-only).
//! In eBPF mode a datagram is only ever touched by the thread the kernel chose.
mod session;

pub use session::{ParticipantCreated, ParticipantView, RoomView};

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mio::{net::UdpSocket, Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use roomgate_common::{classify, ufrag::PARTICIPANT_PART_LEN, PacketClass};
use session::{ReplyPath, Room, Session};
use tracing::{debug, trace, warn};

use crate::{
    ice::{self, Answer, Credentials, IceSession, IceState, StunOutcome},
    net,
    room::{owner_of_server_ufrag, RoomId},
    stats::ThreadStats,
    steering::{ebpf::FlowTable, flow_key, ActiveMode},
};

const GROUP: Token = Token(0);
const WAKER: Token = Token(1);
const CONN_BASE: usize = 2;
/// Largest datagram we accept; WebRTC keeps packets under the path MTU.
const MAX_DATAGRAM: usize = 2048;
/// Bound on queued commands and handoffs per thread; beyond it we shed, never block.
const QUEUE_DEPTH: usize = 4096;
/// recvmmsg batches per socket per wake-up. A flood on one socket must not starve the
/// others, the command queue or the consent sweep; the rest is read on the next pass.
const MAX_BATCHES_PER_WAKE: usize = 64;
/// Consent freshness is checked at this granularity.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
const PWD_LEN: usize = 24;

/// Messages to a logic thread.
pub enum Command {
    CreateParticipant {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<Result<ParticipantCreated, String>>,
    },
    DeleteParticipant {
        room: RoomId,
        participant: String,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    GetRoom {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<Option<RoomView>>,
    },
    /// Connected mode only: a first datagram that landed on a thread that does not own
    /// its room.
    Handoff {
        datagram: Vec<u8>,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
    },
}

/// The control plane's (and other threads') handle on a logic thread.
#[derive(Clone)]
pub struct ThreadHandle {
    tx: SyncSender<Command>,
    /// Handoffs have their own queue: they come from unauthenticated network input, and a
    /// flood of them must not crowd out the control plane's commands.
    handoff_tx: SyncSender<Command>,
    waker: Arc<Waker>,
    /// Set to stop the thread; separate from the queue so a full queue cannot delay it.
    stop: Arc<AtomicBool>,
    pub stats: Arc<ThreadStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("logic thread queue is full")]
    Full,
    #[error("logic thread has stopped")]
    Stopped,
}

impl ThreadHandle {
    pub fn send(&self, cmd: Command) -> Result<(), SendError> {
        let queue = match cmd {
            Command::Handoff { .. } => &self.handoff_tx,
            _ => &self.tx,
        };
        queue.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => SendError::Full,
            TrySendError::Disconnected(_) => SendError::Stopped,
        })?;
        self.waker.wake().map_err(|_| SendError::Stopped)
    }

    /// Ask the thread to release its flows and exit.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// Everything a thread needs, built on the main thread before spawning so that every
/// thread can hold every other thread's handle (for connected-mode handoffs).
pub struct ThreadSetup {
    pub index: usize,
    pub threads: usize,
    pub mode: ActiveMode,
    pub socket: std::net::UdpSocket,
    pub local_addr: SocketAddr,
    pub flows: Option<FlowTable>,
}

pub fn spawn_all(setups: Vec<ThreadSetup>) -> io::Result<(Vec<ThreadHandle>, Vec<JoinHandle<()>>)> {
    let mut handles = Vec::with_capacity(setups.len());
    let mut parts = Vec::with_capacity(setups.len());
    for setup in setups {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let (handoff_tx, handoff_rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let stats = Arc::new(ThreadStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        handles.push(ThreadHandle {
            tx,
            handoff_tx,
            waker,
            stop: stop.clone(),
            stats: stats.clone(),
        });
        parts.push((setup, poll, (rx, handoff_rx), stats, stop));
    }
    let peers: Arc<[ThreadHandle]> = handles.clone().into();
    let mut joins = Vec::with_capacity(parts.len());
    for (setup, poll, rx, stats, stop) in parts {
        let index = setup.index;
        let thread = LogicThread::new(setup, poll, rx, stats, stop, peers.clone())?;
        joins.push(
            std::thread::Builder::new()
                .name(format!("roomgate-logic-{index}"))
                .spawn(move || thread.run())?,
        );
    }
    Ok((handles, joins))
}

enum PinError {
    /// The address is pinned to another session (on this or another thread).
    Conflict,
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Group,
    Conn(usize),
    Handoff,
}

struct ConnSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Canonical client address this socket is connected to.
    peer: SocketAddr,
}

struct LogicThread {
    index: usize,
    threads: usize,
    mode: ActiveMode,
    local_addr: SocketAddr,
    poll: Poll,
    group: UdpSocket,
    group_state: UdpSocketState,
    conns: Vec<Option<ConnSocket>>,
    free_conns: Vec<usize>,
    conn_by_peer: HashMap<SocketAddr, usize>,
    flows: Option<FlowTable>,
    rx: Receiver<Command>,
    handoff_rx: Receiver<Command>,
    peers: Arc<[ThreadHandle]>,
    stats: Arc<ThreadStats>,
    rooms: HashMap<RoomId, Room>,
    /// Sessions by server ufrag.
    sessions: HashMap<String, Session>,
    /// Canonical client address -> server ufrag of the session it is pinned to.
    by_addr: HashMap<SocketAddr, String>,
    recv_buf: Box<[u8]>,
    next_sweep: Instant,
    stop: Arc<AtomicBool>,
    /// Sockets left readable because a wake-up hit MAX_BATCHES_PER_WAKE (edge-triggered
    /// epoll will not report them again until new data arrives).
    pending: Vec<Via>,
}

impl LogicThread {
    fn new(
        setup: ThreadSetup,
        poll: Poll,
        (rx, handoff_rx): (Receiver<Command>, Receiver<Command>),
        stats: Arc<ThreadStats>,
        stop: Arc<AtomicBool>,
        peers: Arc<[ThreadHandle]>,
    ) -> io::Result<Self> {
        let group_state = UdpSocketState::new(UdpSockRef::from(&setup.socket))?;
        net::disable_gro(&setup.socket);
        let mut group = UdpSocket::from_std(setup.socket);
        poll.registry()
            .register(&mut group, GROUP, Interest::READABLE)?;
        Ok(LogicThread {
            index: setup.index,
            threads: setup.threads,
            mode: setup.mode,
            local_addr: setup.local_addr,
            poll,
            group,
            group_state,
            conns: Vec::new(),
            free_conns: Vec::new(),
            conn_by_peer: HashMap::new(),
            flows: setup.flows,
            rx,
            handoff_rx,
            peers,
            stats,
            rooms: HashMap::new(),
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            recv_buf: vec![0u8; MAX_DATAGRAM * BATCH_SIZE].into_boxed_slice(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            stop,
            pending: Vec::new(),
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        debug!(
            thread = self.index,
            mode = self.mode.as_str(),
            "logic thread started"
        );
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if self.pending.is_empty() {
                self.next_sweep.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(thread = self.index, error = %e, "poll failed; stopping thread");
                break;
            }
            let woke = Instant::now();
            for via in std::mem::take(&mut self.pending) {
                self.drain(via);
            }
            for event in events.iter() {
                match event.token() {
                    GROUP => self.drain(Via::Group),
                    WAKER => {}
                    Token(t) => self.drain(Via::Conn(t - CONN_BASE)),
                }
            }
            self.drain_commands();
            let now = Instant::now();
            if now >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now + SWEEP_EVERY;
            }
            self.stats.busy_ns.add(woke.elapsed().as_nanos() as u64);
        }
        self.release_all();
        debug!(thread = self.index, "logic thread stopped");
    }

    /// Read until the socket would block; batches of up to BATCH_SIZE via recvmmsg.
    fn drain(&mut self, via: Via) {
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let mut errors = 0;
        for batch in 0.. {
            if batch == MAX_BATCHES_PER_WAKE {
                if !self.pending.contains(&via) {
                    self.pending.push(via);
                }
                return;
            }
            let mut buf = std::mem::take(&mut self.recv_buf);
            let result = {
                let mut chunks = buf.chunks_mut(MAX_DATAGRAM).map(IoSliceMut::new);
                let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut []))
                });
                match via {
                    Via::Group => {
                        self.group_state
                            .recv(UdpSockRef::from(&self.group), &mut iovs, &mut meta)
                    }
                    Via::Conn(i) => match self.conns.get(i).and_then(Option::as_ref) {
                        Some(c) => c
                            .state
                            .recv(UdpSockRef::from(&c.socket), &mut iovs, &mut meta),
                        None => Err(io::ErrorKind::WouldBlock.into()),
                    },
                    Via::Handoff => Err(io::ErrorKind::WouldBlock.into()),
                }
            };
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.recv_buf = buf;
                    return;
                }
                Err(e) => {
                    // ICMP errors surface here on connected sockets; reading clears them and
                    // datagrams may still be queued behind, so keep reading (bounded).
                    trace!(thread = self.index, error = %e, "recv error");
                    self.recv_buf = buf;
                    errors += 1;
                    if errors > 8 {
                        return;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let mut datagrams = 0u64;
            for (i, m) in meta.iter().enumerate().take(n) {
                let start = i * MAX_DATAGRAM;
                // GRO is off, so one slot holds one datagram; stride guards anyway.
                let stride = m.stride.max(1);
                let mut off = 0;
                while off < m.len.min(MAX_DATAGRAM) || (m.len == 0 && off == 0) {
                    let end = (off + stride).min(m.len).min(MAX_DATAGRAM);
                    let datagram = &buf[start + off..start + end];
                    self.stats.rx_datagrams.inc();
                    self.stats.rx_bytes.add(datagram.len() as u64);
                    self.on_datagram(datagram, m.addr, m.dst_ip, via, now);
                    datagrams += 1;
                    if m.len == 0 {
                        break;
                    }
                    off = end;
                }
            }
            if let Some(each) = (now.elapsed().as_nanos() as u64).checked_div(datagrams) {
                self.stats.processing.observe_n(each, datagrams);
            }
            self.recv_buf = buf;
        }
    }

    fn on_datagram(
        &mut self,
        data: &[u8],
        from_raw: SocketAddr,
        local_ip: Option<IpAddr>,
        via: Via,
        now: Instant,
    ) {
        let from = canonical(from_raw);
        if let Via::Conn(i) = via {
            if self.conns.get(i).and_then(Option::as_ref).map(|c| c.peer) != Some(from) {
                self.stats.misdelivered.inc();
                trace!(thread = self.index, %from, "datagram from a foreign source on a connected socket");
                return;
            }
        }
        let Some(&first) = data.first() else {
            self.stats.empty.inc();
            trace!(thread = self.index, %from, ?via, decision = "drop_empty");
            return;
        };
        match classify(first) {
            PacketClass::Stun => self.on_stun(data, from_raw, from, local_ip, via, now),
            PacketClass::Dtls | PacketClass::Rtp => self.on_session_datagram(data, from),
            PacketClass::Unknown => {
                self.stats.unknown_type.inc();
                trace!(thread = self.index, %from, ?via, first, decision = "drop_unknown_type");
            }
        }
    }

    fn on_session_datagram(&mut self, data: &[u8], from: SocketAddr) {
        match self
            .by_addr
            .get(&from)
            .and_then(|u| self.sessions.get_mut(u))
        {
            Some(session) => {
                session.rx_datagrams += 1;
                session.rx_bytes += data.len() as u64;
                self.stats.session_datagrams.inc();
                trace!(thread = self.index, %from, participant = %session.participant, decision = "session");
            }
            None => {
                self.stats.no_session.inc();
                trace!(thread = self.index, %from, decision = "drop_no_session");
            }
        }
    }

    fn on_stun(
        &mut self,
        data: &[u8],
        from_raw: SocketAddr,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        via: Via,
        now: Instant,
    ) {
        let view = match ice::parse(data) {
            Ok(v) => v,
            Err(e) => {
                self.stats.stun(StunOutcome::Malformed).inc();
                trace!(thread = self.index, %from, error = %e, decision = "drop_malformed_stun");
                return;
            }
        };
        if !view.is_binding_request() {
            if self.by_addr.contains_key(&from) {
                self.on_session_datagram(data, from);
            } else {
                self.stats.stun(StunOutcome::NotARequest).inc();
            }
            return;
        }
        let reply = ReplyPath {
            to: from_raw,
            local_ip,
        };
        let Some(server_ufrag) = view.server_ufrag() else {
            // RFC 8489 9.1.3: a request without USERNAME gets 400 Bad Request.
            let response = ice::bad_request(&view, "USERNAME missing");
            self.stats.stun(StunOutcome::BadRequest).inc();
            self.send(via, reply, &response);
            return;
        };
        if self
            .by_addr
            .get(&from)
            .is_some_and(|holder| holder != server_ufrag)
        {
            self.stats.pin_conflicts.inc();
            trace!(thread = self.index, %from, decision = "drop_pinned_elsewhere");
            return;
        }
        match owner_of_server_ufrag(server_ufrag, self.threads) {
            None => {
                self.stats.stun(StunOutcome::UnknownUfrag).inc();
                trace!(thread = self.index, %from, decision = "drop_foreign_ufrag");
                return;
            }
            Some(owner) if owner != self.index => {
                self.not_my_room(owner, data, from_raw, local_ip, via);
                return;
            }
            Some(_) => {}
        }
        let Some(session) = self.sessions.get_mut(server_ufrag) else {
            // Unknown ufrag: silent drop, so the port is no reflector for scanners.
            self.stats.stun(StunOutcome::UnknownUfrag).inc();
            trace!(thread = self.index, %from, decision = "drop_unknown_ufrag");
            return;
        };
        match ice::answer(&view, session.ice.credentials(), from) {
            Answer::Success {
                response,
                use_candidate,
            } => {
                let ufrag = server_ufrag.to_owned();
                session.valid_checks += 1;
                let newly_valid = session.ice.on_valid_check(from, use_candidate, now);
                // Evictions are applied only once the new address is pinned: a refused pin
                // must not cost the session an address it already had.
                let evicted: Vec<SocketAddr> = session.ice.take_evicted().collect();
                if let Some(addr) = newly_valid {
                    match self.pin(&ufrag, addr, reply) {
                        Ok(()) => {}
                        Err(PinError::Conflict) => {
                            // The address is pinned to another session. Valid credentials for
                            // one session must never move another session's flow (a spoofed
                            // source is enough to try), so refuse and stay silent.
                            self.stats.pin_conflicts.inc();
                            if let Some(s) = self.sessions.get_mut(&ufrag) {
                                s.ice.forget(addr);
                            }
                            debug!(thread = self.index, %from, ufrag = %ufrag, "address pinned to another session; refused");
                            return;
                        }
                        Err(PinError::Failed(e)) => {
                            // Without a pin the client's DTLS would be dropped; better no answer
                            // than a success that leads nowhere. The client retries.
                            self.stats.pin_failures.inc();
                            if let Some(s) = self.sessions.get_mut(&ufrag) {
                                s.ice.forget(addr);
                            }
                            warn!(thread = self.index, %from, error = %e, "pinning the flow failed");
                            return;
                        }
                    }
                }
                for addr in evicted {
                    self.unpin_addr(&ufrag, addr);
                }
                if let Some(s) = self.sessions.get_mut(&ufrag) {
                    s.reply = Some(reply);
                }
                self.stats.stun(StunOutcome::Success).inc();
                trace!(thread = self.index, %from, ufrag = %ufrag, decision = "binding_success");
                let via = self.conn_by_peer.get(&from).map_or(via, |&i| Via::Conn(i));
                self.send(via, reply, &response);
            }
            Answer::Reject { response, outcome } => {
                self.stats.stun(outcome).inc();
                trace!(thread = self.index, %from, ?outcome, decision = "binding_reject");
                self.send(via, reply, &response);
            }
            Answer::Drop { outcome } => {
                self.stats.stun(outcome).inc();
                trace!(thread = self.index, %from, ?outcome, decision = "binding_drop");
            }
        }
    }

    /// A Binding Request for a room another thread owns.
    fn not_my_room(
        &mut self,
        owner: usize,
        data: &[u8],
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        via: Via,
    ) {
        match (self.mode, via) {
            (ActiveMode::Connected, Via::Group | Via::Conn(_)) => {
                let Some(peer) = self.peers.get(owner) else {
                    self.stats.misdelivered.inc();
                    return;
                };
                let cmd = Command::Handoff {
                    datagram: data.to_vec(),
                    from,
                    local_ip,
                };
                match peer.send(cmd) {
                    Ok(()) => {
                        self.stats.handoffs.inc();
                        trace!(thread = self.index, owner, %from, decision = "handoff");
                    }
                    Err(e) => {
                        self.stats.handoff_failures.inc();
                        trace!(thread = self.index, owner, %from, error = %e, decision = "handoff_failed");
                    }
                }
            }
            _ => {
                // eBPF mode steers by room, and a handed-off datagram went to its owner:
                // arriving here means the steering is wrong. Count it, never forward it.
                self.stats.misdelivered.inc();
                trace!(thread = self.index, owner, %from, decision = "misdelivered");
            }
        }
    }

    fn pin(&mut self, ufrag: &str, addr: SocketAddr, reply: ReplyPath) -> Result<(), PinError> {
        if self
            .by_addr
            .get(&addr)
            .is_some_and(|holder| holder != ufrag)
        {
            return Err(PinError::Conflict);
        }
        match self.mode {
            ActiveMode::Ebpf => {
                let flows = self
                    .flows
                    .as_mut()
                    .ok_or(PinError::Failed("no flow map handle".into()))?;
                match flows.pin(flow_key(addr), self.index as u32) {
                    Ok(Ok(())) => {}
                    Ok(Err(_holder)) => return Err(PinError::Conflict),
                    Err(e) => return Err(PinError::Failed(format!("flow map insert: {e}"))),
                }
            }
            ActiveMode::Connected => {
                if !self.conn_by_peer.contains_key(&addr) {
                    self.open_conn(addr, reply)
                        .map_err(|e| PinError::Failed(format!("connected socket: {e}")))?;
                }
            }
        }
        self.by_addr.insert(addr, ufrag.to_owned());
        if let Some(s) = self
            .sessions
            .get_mut(ufrag)
            .filter(|s| !s.pinned.contains(&addr))
        {
            s.pinned.push(addr);
        }
        self.stats.pins.inc();
        debug!(thread = self.index, client = %addr, ufrag, mode = self.mode.as_str(), "flow pinned");
        Ok(())
    }

    fn open_conn(&mut self, peer: SocketAddr, reply: ReplyPath) -> io::Result<()> {
        // With a wildcard group, bind the client's socket to the address its request
        // arrived on: connect() would otherwise pick a source by routing, and on a
        // multi-homed host the ICE agent drops replies from an address it did not send to
        // (and its later datagrams, sent to the arrival address, would miss the socket).
        let local = match reply.local_ip {
            Some(ip) if self.local_addr.ip().is_unspecified() => {
                SocketAddr::new(ip, self.local_addr.port())
            }
            _ => self.local_addr,
        };
        let std_socket = net::open_connected(local, reply.to)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        net::disable_gro(&std_socket);
        let mut socket = UdpSocket::from_std(std_socket);
        let index = self.free_conns.pop().unwrap_or(self.conns.len());
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, Token(CONN_BASE + index), Interest::READABLE)
        {
            if index < self.conns.len() {
                self.free_conns.push(index);
            }
            return Err(e);
        }
        let conn = ConnSocket {
            socket,
            state,
            peer,
        };
        if index == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[index] = Some(conn);
        }
        self.conn_by_peer.insert(peer, index);
        self.stats
            .connected_sockets
            .set(self.conn_by_peer.len() as u64);
        Ok(())
    }

    fn unpin_addr(&mut self, ufrag: &str, addr: SocketAddr) {
        if self.by_addr.get(&addr).map(String::as_str) == Some(ufrag) {
            self.by_addr.remove(&addr);
            match self.mode {
                ActiveMode::Ebpf => {
                    if let Some(flows) = self.flows.as_mut() {
                        if let Err(e) = flows.unpin(&flow_key(addr)) {
                            self.stats.unpin_failures.inc();
                            warn!(thread = self.index, client = %addr, error = %e, "flow map remove");
                        }
                    }
                }
                ActiveMode::Connected => {
                    if let Some(index) = self.conn_by_peer.remove(&addr) {
                        if let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) {
                            let _ = self.poll.registry().deregister(&mut conn.socket);
                            self.free_conns.push(index);
                        }
                    }
                    self.stats
                        .connected_sockets
                        .set(self.conn_by_peer.len() as u64);
                }
            }
            self.stats.unpins.inc();
            debug!(thread = self.index, client = %addr, ufrag, "flow unpinned");
        }
        if let Some(s) = self.sessions.get_mut(ufrag) {
            s.pinned.retain(|a| *a != addr);
        }
    }

    fn unpin_session(&mut self, ufrag: &str) {
        let addrs = self
            .sessions
            .get(ufrag)
            .map(|s| s.pinned.clone())
            .unwrap_or_default();
        for addr in addrs {
            self.unpin_addr(ufrag, addr);
        }
    }

    fn send(&mut self, via: Via, reply: ReplyPath, contents: &[u8]) {
        let result = match via {
            Via::Conn(i) => match self.conns.get(i).and_then(Option::as_ref) {
                Some(c) => c.state.try_send(
                    UdpSockRef::from(&c.socket),
                    &Transmit {
                        destination: reply.to,
                        ecn: None,
                        contents,
                        segment_size: None,
                        src_ip: None,
                    },
                ),
                None => Err(io::ErrorKind::NotConnected.into()),
            },
            Via::Group | Via::Handoff => self.group_state.try_send(
                UdpSockRef::from(&self.group),
                &Transmit {
                    destination: reply.to,
                    ecn: None,
                    contents,
                    segment_size: None,
                    // Leave from the address the client sent to (IP_PKTINFO); on a
                    // multi-homed host routing might otherwise pick another source and
                    // the ICE agent would drop the response.
                    src_ip: reply.local_ip,
                },
            ),
        };
        match result {
            Ok(()) => {
                self.stats.tx_datagrams.inc();
                self.stats.tx_bytes.add(contents.len() as u64);
                if let Some(s) = self
                    .by_addr
                    .get(&canonical(reply.to))
                    .and_then(|u| self.sessions.get_mut(u))
                {
                    s.tx_datagrams += 1;
                }
            }
            Err(e) => {
                self.stats.send_errors.inc();
                trace!(thread = self.index, to = %reply.to, error = %e, "send failed");
            }
        }
    }

    fn drain_commands(&mut self) {
        // Control-plane commands first, then at most one queue's worth of handoffs.
        let commands = std::iter::from_fn(|| self.rx.try_recv().ok()).collect::<Vec<_>>();
        let handoffs = std::iter::from_fn(|| self.handoff_rx.try_recv().ok())
            .take(QUEUE_DEPTH)
            .collect::<Vec<_>>();
        for cmd in commands.into_iter().chain(handoffs) {
            match cmd {
                Command::CreateParticipant { room, reply } => {
                    let _ = reply.send(self.create_participant(room));
                }
                Command::DeleteParticipant {
                    room,
                    participant,
                    reply,
                } => {
                    let _ = reply.send(self.delete_participant(&room, &participant));
                }
                Command::GetRoom { room, reply } => {
                    let _ = reply.send(self.room_view(&room));
                }
                Command::Handoff {
                    datagram,
                    from,
                    local_ip,
                } => {
                    // Counted by the receiver, so handoffs == handoffs_received proves
                    // every handed-off datagram arrived.
                    self.stats.handoffs_received.inc();
                    let now = Instant::now();
                    self.on_datagram(&datagram, from, local_ip, Via::Handoff, now);
                }
            }
        }
    }

    fn create_participant(&mut self, room: RoomId) -> Result<ParticipantCreated, String> {
        let room_part = room.ufrag_part();
        // Retry on the (astronomically unlikely) collision of an 8-char participant part.
        for _ in 0..8 {
            let participant =
                ice::random_ice_chars(PARTICIPANT_PART_LEN).map_err(|e| e.to_string())?;
            let ufrag = format!("{room_part}{participant}");
            if self.sessions.contains_key(&ufrag) {
                continue;
            }
            let pwd = ice::random_ice_chars(PWD_LEN).map_err(|e| e.to_string())?;
            let credentials = Credentials {
                ufrag: ufrag.clone(),
                pwd: pwd.clone(),
            };
            self.sessions.insert(
                ufrag.clone(),
                Session {
                    participant: participant.clone(),
                    ice: IceSession::new(credentials, Instant::now()),
                    pinned: Vec::new(),
                    reply: None,
                    valid_checks: 0,
                    rx_datagrams: 0,
                    rx_bytes: 0,
                    tx_datagrams: 0,
                },
            );
            self.rooms
                .entry(room.clone())
                .or_default()
                .sessions
                .insert(ufrag.clone());
            self.update_gauges();
            debug!(thread = self.index, room = %room, participant, "participant created");
            return Ok(ParticipantCreated {
                participant,
                ufrag,
                pwd,
                thread: self.index,
            });
        }
        Err("could not allocate a unique participant id".into())
    }

    fn delete_participant(&mut self, room: &RoomId, participant: &str) -> bool {
        let ufrag = format!("{}{participant}", room.ufrag_part());
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if !r.sessions.remove(&ufrag) {
            return false;
        }
        if r.sessions.is_empty() {
            self.rooms.remove(room);
        }
        self.unpin_session(&ufrag);
        self.sessions.remove(&ufrag);
        self.update_gauges();
        debug!(thread = self.index, room = %room, participant, "participant deleted");
        true
    }

    fn room_view(&self, room: &RoomId) -> Option<RoomView> {
        let r = self.rooms.get(room)?;
        Some(RoomView {
            room: room.to_string(),
            thread: self.index,
            participants: r
                .sessions
                .iter()
                .filter_map(|u| self.sessions.get(u))
                .map(Session::view)
                .collect(),
        })
    }

    /// Consent freshness (RFC 7675): a session with no valid check for 30 s loses its
    /// pins; it stays listed (state "expired") until the backend deletes it.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .sessions
            .iter_mut()
            .filter_map(|(u, s)| s.ice.handle_timeout(now).then(|| u.clone()))
            .collect();
        let mut by_state = [0u64; 4];
        for session in self.sessions.values() {
            by_state[state_index(session.ice.state())] += 1;
        }
        for (counter, n) in self.stats.sessions_by_state.iter().zip(by_state) {
            counter.set(n);
        }
        for ufrag in expired {
            debug!(thread = self.index, ufrag = %ufrag, "consent expired");
            self.stats.consent_expired.inc();
            self.unpin_session(&ufrag);
        }
    }

    fn update_gauges(&self) {
        self.stats.rooms.set(self.rooms.len() as u64);
        self.stats.sessions.set(self.sessions.len() as u64);
    }

    fn release_all(&mut self) {
        let ufrags: Vec<String> = self.sessions.keys().cloned().collect();
        for u in ufrags {
            self.unpin_session(&u);
        }
    }
}

/// Index into `ThreadStats::sessions_by_state`, in the order of [`STATE_NAMES`].
fn state_index(state: IceState) -> usize {
    match state {
        IceState::New => 0,
        IceState::Connected => 1,
        IceState::Nominated => 2,
        IceState::Expired => 3,
    }
}

/// Label values of `ThreadStats::sessions_by_state`.
pub const STATE_NAMES: [&str; 4] = ["new", "connected", "nominated", "expired"];

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
