//! Logic threads: one event loop per core, each owning its sockets, rooms and sessions.
//!
//! Nothing here is shared with another thread except the command channel (control
//! plane -> thread) and the thread's own counters (thread -> control plane, read-only).
//! In eBPF mode a datagram is only ever touched by the thread the kernel chose.
mod session;

pub use session::{CreateRefused, MediaCreated, ParticipantCreated, ParticipantView, RoomView};

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mio::{net::UdpSocket, Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use roomgate_common::{classify, ufrag::PARTICIPANT_PART_LEN, PacketClass};
use session::{DtlsPhase, MediaState, ReplyPath, Room, Session};
use tracing::{debug, trace, warn};

use crate::{
    ice::{self, Answer, Credentials, IceSession, IceState, StunOutcome},
    media::{DtlsDriver, DtlsEvent, Identity, SrtpSession},
    net,
    room::{owner_of_server_ufrag, RoomId},
    sdp::{self, Offer, Role},
    sfu::{MemberId, Output, PublishedTrack, SubscribedSlot},
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
/// While a DTLS handshake is in flight the thread wakes at least this often to run
/// webrtc-dtls's retransmission timers.
const DTLS_TICK: Duration = Duration::from_millis(20);
/// A WHIP/WHEP session whose client never completes an ICE check in this time is released.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// ClientHello to keys; a client that stalls longer loses its session.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Random characters in a WHIP/WHEP resource URL (~131 bits).
const RESOURCE_KEY_LEN: usize = 22;
/// DTLS records accepted from one client while its handshake runs.
const HANDSHAKE_RECORD_BUDGET: u32 = 256;

/// Admission limits, checked on the owning thread before anything is created.
#[derive(Clone)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_participants_per_room: usize,
    /// Live sessions over all threads: only touched when a session is created or released.
    pub sessions_total: Arc<AtomicUsize>,
}

/// Messages to a logic thread.
pub enum Command {
    CreateParticipant {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<Result<ParticipantCreated, String>>,
    },
    DeleteParticipant {
        room: RoomId,
        participant: String,
        /// WHIP/WHEP resources: only a session of this role and with this resource key
        /// matches (a WHIP URL must not delete a WHEP session, and a participant id alone
        /// must not delete anything); `None` for the REST API, which deletes any.
        resource: Option<(Role, String)>,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    GetRoom {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<Option<RoomView>>,
    },
    /// WHIP (publisher) or WHEP (subscriber): negotiate `offer` and create the session.
    CreateMediaSession {
        room: RoomId,
        role: Role,
        offer: Box<Offer>,
        /// WHEP only: watch this participant instead of the room's earliest publisher.
        publisher: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<MediaCreated, CreateRefused>>,
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
    pub identity: Arc<Identity>,
    /// Host candidates written into SDP answers.
    pub candidates: Vec<SocketAddr>,
    pub limits: Limits,
    /// Kernel buffer sizes for the connected sockets this thread opens.
    pub buffers: net::BufferSizes,
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
    drops: net::DropTracker,
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
    dtls: DtlsDriver,
    identity: Arc<Identity>,
    candidates: Vec<SocketAddr>,
    limits: Limits,
    /// Media member id -> server ufrag.
    members: HashMap<MemberId, String>,
    next_member: MemberId,
    /// Sessions between ClientHello and keys; while > 0 the DTLS runtime is ticked.
    handshaking: usize,
    /// DTLS records were fed since the runtime last ran.
    dtls_fed: bool,
    /// Reused buffer for a room's forwarding output.
    outputs: Vec<Output>,
    buffers: net::BufferSizes,
    group_drops: net::DropTracker,
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
        let dtls = DtlsDriver::new(setup.identity.clone())?;
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
            dtls,
            identity: setup.identity,
            candidates: setup.candidates,
            limits: setup.limits,
            members: HashMap::new(),
            next_member: 1,
            handshaking: 0,
            dtls_fed: false,
            outputs: Vec::new(),
            buffers: setup.buffers,
            group_drops: net::DropTracker::default(),
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
                let until_sweep = self.next_sweep.saturating_duration_since(Instant::now());
                if self.handshaking > 0 {
                    until_sweep.min(DTLS_TICK)
                } else {
                    until_sweep
                }
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
            if self.dtls_fed || self.handshaking > 0 {
                self.pump_dtls();
            }
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
                    // A bug reachable from one datagram (here or in a protocol library)
                    // must cost that datagram, not the thread and every room on it.
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.on_datagram(datagram, m.addr, m.dst_ip, via, now)
                    }));
                    if handled.is_err() {
                        self.stats.datagram_panics.inc();
                        warn!(thread = self.index, from = %m.addr, "a datagram caused a panic; dropped it");
                    }
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
            PacketClass::Dtls | PacketClass::Rtp => self.on_session_datagram(data, from, now),
            PacketClass::Unknown => {
                self.stats.unknown_type.inc();
                trace!(thread = self.index, %from, ?via, first, decision = "drop_unknown_type");
            }
        }
    }

    fn on_session_datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let Some(session) = self
            .by_addr
            .get(&from)
            .and_then(|u| self.sessions.get_mut(u))
        else {
            self.stats.no_session.inc();
            trace!(thread = self.index, %from, decision = "drop_no_session");
            return;
        };
        session.rx_datagrams += 1;
        session.rx_bytes += data.len() as u64;
        self.stats.session_datagrams.inc();
        trace!(thread = self.index, %from, participant = %session.participant, decision = "session");
        let Some(media) = session.media.as_mut() else {
            return;
        };
        let member = media.member;
        let m = &self.stats.media;
        match data.first().copied().map(classify) {
            Some(PacketClass::Dtls) => match &media.dtls {
                DtlsPhase::New => {
                    let handle = self.dtls.start(
                        member,
                        media.remote_fingerprint.clone(),
                        self.local_addr,
                        from,
                    );
                    handle.feed(data);
                    media.dtls = DtlsPhase::Handshaking(handle);
                    media.dtls_started = Some(now);
                    self.handshaking += 1;
                    self.dtls_fed = true;
                    m.dtls_started.inc();
                }
                DtlsPhase::Handshaking(handle) => {
                    // A handshake needs a few dozen records; webrtc-dtls buffers early
                    // epoch-1 records without limit, so a flooding client is cut off here.
                    media.dtls_records += 1;
                    if media.dtls_records <= HANDSHAKE_RECORD_BUDGET && handle.feed(data) {
                        self.dtls_fed = true;
                    } else {
                        m.dtls_records_dropped.inc();
                    }
                }
                DtlsPhase::Connected {
                    _handle: handle, ..
                } => {
                    if crate::media::acceptable_after_handshake(data) && handle.feed(data) {
                        self.dtls_fed = true;
                    } else {
                        m.dtls_records_dropped.inc();
                        trace!(thread = self.index, %from, decision = "drop_bad_dtls_record");
                    }
                }
            },
            Some(PacketClass::Rtp) => {
                let DtlsPhase::Connected { srtp, .. } = &mut media.dtls else {
                    m.srtp_before_keys.inc();
                    return;
                };
                // RFC 5761 4: RTCP packet types 192..=223 share the port with RTP.
                let is_rtcp = data.get(1).is_some_and(|pt| (192..=223).contains(pt));
                let plain = if is_rtcp {
                    srtp.unprotect_rtcp(data)
                } else {
                    srtp.unprotect_rtp(data)
                };
                let plain = match plain {
                    Ok(p) => p,
                    Err(failure) => {
                        let counters = if is_rtcp {
                            &m.srtcp_unprotect_failures
                        } else {
                            &m.srtp_unprotect_failures
                        };
                        counters[failure as usize].inc();
                        trace!(thread = self.index, %from, ?failure, rtcp = is_rtcp, decision = "drop_unprotect");
                        return;
                    }
                };
                let Some(room) = self.rooms.get_mut(&media.room) else {
                    return;
                };
                let result = if is_rtcp {
                    room.core.handle_rtcp(member, &plain, now)
                } else {
                    room.core.handle_rtp(member, &plain, now)
                };
                if let Err(e) = result {
                    trace!(thread = self.index, %from, error = %e, "forwarding refused a packet");
                }
                drain_core(&mut room.core, &mut self.outputs);
                self.send_outputs();
            }
            _ => {}
        }
    }

    /// Protect and send what a room's forwarding core produced.
    fn send_outputs(&mut self) {
        let mut outputs = std::mem::take(&mut self.outputs);
        for output in outputs.drain(..) {
            let (to, packet, rtcp) = match output {
                Output::Rtp { to, packet } => (to, packet, false),
                Output::Rtcp { to, packet } => (to, packet, true),
            };
            let Some(session) = self.members.get(&to).and_then(|u| self.sessions.get_mut(u)) else {
                continue;
            };
            let (Some(reply), Some(media)) = (session.reply, session.media.as_mut()) else {
                continue;
            };
            let DtlsPhase::Connected { srtp, .. } = &mut media.dtls else {
                continue;
            };
            let protected = if rtcp {
                srtp.protect_rtcp(&packet)
            } else {
                srtp.protect_rtp(&packet)
            };
            match protected {
                Ok(bytes) => {
                    let via = self.via_for(reply.to);
                    self.send(via, reply, &bytes);
                }
                Err(e) => {
                    self.stats.media.srtp_protect_failures.inc();
                    trace!(thread = self.index, error = %e, "SRTP protect failed");
                }
            }
        }
        self.outputs = outputs;
    }

    /// The socket a session's packets leave on: its connected socket, else the group.
    fn via_for(&self, to: SocketAddr) -> Via {
        self.conn_by_peer
            .get(&canonical(to))
            .map_or(Via::Group, |&i| Via::Conn(i))
    }

    /// Run the DTLS runtime and act on what the handshakes produced.
    fn pump_dtls(&mut self) {
        self.dtls_fed = false;
        self.dtls.drive();
        let now = Instant::now();
        while let Some(event) = self.dtls.poll_event() {
            match event {
                DtlsEvent::Transmit { id, datagram } => {
                    let Some(reply) = self
                        .members
                        .get(&id)
                        .and_then(|u| self.sessions.get(u))
                        .and_then(|s| s.reply)
                    else {
                        continue;
                    };
                    let via = self.via_for(reply.to);
                    self.send(via, reply, &datagram);
                }
                DtlsEvent::Connected { id, keys } => self.on_dtls_connected(id, keys, now),
                DtlsEvent::Failed { id, reason } => {
                    if self.members.contains_key(&id) {
                        self.stats.media.dtls_failed.inc();
                        debug!(thread = self.index, member = id, %reason, "DTLS handshake failed; session ends");
                        self.end_member(id);
                    }
                }
                DtlsEvent::Closed { id } => {
                    if self.members.contains_key(&id) {
                        self.stats.media.dtls_closed.inc();
                        debug!(
                            thread = self.index,
                            member = id,
                            "DTLS closed by the client; session ends"
                        );
                        self.end_member(id);
                    }
                }
            }
        }
    }

    fn on_dtls_connected(&mut self, id: MemberId, keys: crate::media::SrtpKeys, now: Instant) {
        let Some(ufrag) = self.members.get(&id).cloned() else {
            return;
        };
        let Some(media) = self.sessions.get_mut(&ufrag).and_then(|s| s.media.as_mut()) else {
            return;
        };
        let phase = std::mem::replace(&mut media.dtls, DtlsPhase::New);
        let DtlsPhase::Handshaking(handle) = phase else {
            media.dtls = phase;
            return;
        };
        self.handshaking = self.handshaking.saturating_sub(1);
        match SrtpSession::new(&keys) {
            Ok(srtp) => {
                media.dtls = DtlsPhase::Connected {
                    _handle: handle,
                    srtp: Box::new(srtp),
                };
                let m = &self.stats.media;
                m.dtls_completed.inc();
                if let Some(started) = media.dtls_started {
                    m.dtls_handshake
                        .observe(now.saturating_duration_since(started).as_millis() as u64);
                }
                debug!(thread = self.index, member = id, profile = ?keys.profile, "DTLS-SRTP established");
                let room_id = media.room.clone();
                if let Some(room) = self.rooms.get_mut(&room_id) {
                    room.core.set_ready(id, now);
                    drain_core(&mut room.core, &mut self.outputs);
                    self.send_outputs();
                }
            }
            Err(e) => {
                self.stats.media.dtls_failed.inc();
                warn!(thread = self.index, member = id, error = %e, "SRTP setup failed; session ends");
                self.end_member(id);
            }
        }
    }

    /// Release a media session completely: forwarding state, pins, credentials.
    fn end_member(&mut self, id: MemberId) {
        if let Some(ufrag) = self.members.get(&id).cloned() {
            self.remove_session(&ufrag);
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
                self.on_session_datagram(data, from, now);
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
                // Media and DTLS follow the nominated pair only: a check proves knowledge of
                // the password, not ownership of its source address, so an unnominated
                // (possibly spoofed) check must not redirect a session's media.
                if let Some(s) = self.sessions.get_mut(&ufrag) {
                    if use_candidate || s.reply.is_none() {
                        s.reply = Some(reply);
                    }
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
        let std_socket = net::open_connected(local, reply.to, self.buffers)?;
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
            drops: net::DropTracker::default(),
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
                            // Its last drops, before the socket and its counter are gone.
                            self.stats.socket_receive_drops[1].add(conn.drops.poll(&conn.socket));
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
                self.stats.send_errors[net::SendErrno::of(&e) as usize].inc();
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
                    // The caller may have given up (timeout, client gone): then nobody
                    // knows the credentials, so the session would only hold a slot.
                    if let Err(Ok(created)) = reply.send(self.create_participant(room)) {
                        self.remove_session(&created.ufrag);
                    }
                }
                Command::DeleteParticipant {
                    room,
                    participant,
                    resource,
                    reply,
                } => {
                    let _ = reply.send(self.delete_participant(&room, &participant, resource));
                }
                Command::GetRoom { room, reply } => {
                    let _ = reply.send(self.room_view(&room));
                }
                Command::CreateMediaSession {
                    room,
                    role,
                    offer,
                    publisher,
                    reply,
                } => {
                    let ufrag_part = room.ufrag_part();
                    let result = self.create_media_session(room, role, &offer, publisher);
                    if let Err(Ok(created)) = reply.send(result) {
                        self.remove_session(&format!("{ufrag_part}{}", created.participant));
                    }
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
        self.admit(&room).map_err(|r| r.message)?;
        let created = self.insert_session(&room, None);
        if created.is_err() {
            self.limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
        }
        created
    }

    /// Reserve a place for one more session in `room`, or say why not (503).
    fn admit(&mut self, room: &RoomId) -> Result<(), CreateRefused> {
        let in_room = self.rooms.get(room).map_or(0, |r| r.sessions.len());
        if in_room >= self.limits.max_participants_per_room {
            return Err(CreateRefused {
                status: 503,
                message: format!(
                    "room {room} is full ({} participants, --max-participants-per-room)",
                    self.limits.max_participants_per_room
                ),
            });
        }
        let total = self.limits.sessions_total.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max_sessions {
            self.limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
            return Err(CreateRefused {
                status: 503,
                message: format!(
                    "gateway is full ({} sessions, --max-sessions)",
                    self.limits.max_sessions
                ),
            });
        }
        Ok(())
    }

    /// Allocate credentials and insert a session (already admitted).
    fn insert_session(
        &mut self,
        room: &RoomId,
        media: Option<MediaState>,
    ) -> Result<ParticipantCreated, String> {
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
            if let Some(m) = &media {
                self.members.insert(m.member, ufrag.clone());
                match m.role {
                    Role::Publisher => self.stats.media.publishers.add(1),
                    Role::Subscriber => self.stats.media.subscribers.add(1),
                }
            }
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
                    media,
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

    /// WHIP/WHEP: negotiate first, so an offer we cannot serve leaves nothing behind.
    fn create_media_session(
        &mut self,
        room: RoomId,
        role: Role,
        offer: &Offer,
        publisher: Option<String>,
    ) -> Result<MediaCreated, CreateRefused> {
        let refused = |status: u16, message: String| CreateRefused { status, message };
        let prefer = self
            .rooms
            .get(&room)
            .map(|r| r.core.published_codecs())
            .unwrap_or_default();
        let negotiated = sdp::negotiate(offer, role, &prefer)
            .map_err(|e| refused(e.http_status(), e.to_string()))?;
        let watch = match publisher {
            None => None,
            Some(p) => {
                let ufrag = format!("{}{p}", room.ufrag_part());
                // Same thread, other room: "a" + "bXXXXXXX" names room "ab"'s session too.
                let in_room = self
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.sessions.contains(&ufrag));
                let member = self
                    .sessions
                    .get(&ufrag)
                    .filter(|_| in_room)
                    .and_then(|s| s.media.as_ref())
                    .filter(|m| m.role == Role::Publisher)
                    .map(|m| m.member)
                    .ok_or_else(|| refused(404, format!("no publisher {p:?} in room {room}")))?;
                Some(member)
            }
        };
        let resource_key =
            ice::random_ice_chars(RESOURCE_KEY_LEN).map_err(|e| refused(503, e.to_string()))?;
        self.admit(&room)?;
        let member = self.next_member;
        self.next_member = self.next_member.wrapping_add(1).max(1);
        let media = MediaState {
            member,
            room: room.clone(),
            role,
            remote_fingerprint: offer.fingerprint.value.clone(),
            resource_key: resource_key.clone(),
            dtls: DtlsPhase::New,
            created: Instant::now(),
            dtls_started: None,
            dtls_records: 0,
        };
        let created = match self.insert_session(&room, Some(media)) {
            Ok(c) => c,
            Err(e) => {
                self.limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
                return Err(refused(503, e));
            }
        };
        let mut outbound = Vec::with_capacity(negotiated.media.len());
        let mut tracks = Vec::new();
        let mut slots = Vec::new();
        for m in &negotiated.media {
            let mut out = None;
            if let (true, Some(kind), Some(codec)) = (m.accepted, m.kind, &m.codec) {
                match (role, m.direction) {
                    (Role::Publisher, sdp::Direction::RecvOnly) => tracks.push(PublishedTrack {
                        kind,
                        ssrc: m.ssrcs.first().copied(),
                        codec: codec.clone(),
                    }),
                    (Role::Subscriber, sdp::Direction::SendOnly) => {
                        let ssrc = random_ssrc();
                        slots.push(SubscribedSlot {
                            kind,
                            out_ssrc: ssrc,
                            codec: codec.clone(),
                        });
                        out = Some(sdp::OutboundTrack {
                            ssrc,
                            cname: format!("roomgate-{}", created.participant),
                            stream_id: format!("roomgate-{}", created.participant),
                            track_id: format!("{}-{}", created.participant, m.mid),
                        });
                    }
                    _ => {}
                }
            }
            outbound.push(out);
        }
        let answer = sdp::build_answer(
            offer,
            &negotiated,
            &sdp::AnswerParams {
                ice_ufrag: &created.ufrag,
                ice_pwd: &created.pwd,
                fingerprint_sha256: &self.identity.fingerprint,
                candidates: &self.candidates,
                session_id: u64::from(member) << 32 | u64::from(random_ssrc()),
                outbound: &outbound,
            },
        );
        let now = Instant::now();
        if let Some(r) = self.rooms.get_mut(&room) {
            match role {
                Role::Publisher => r.core.add_publisher(member, tracks, now),
                Role::Subscriber => r.core.add_subscriber(member, slots, watch, now),
            }
        }
        debug!(thread = self.index, room = %room, participant = %created.participant, ?role, "media session created");
        Ok(MediaCreated {
            participant: created.participant,
            resource_key,
            answer,
            thread: self.index,
        })
    }

    fn delete_participant(
        &mut self,
        room: &RoomId,
        participant: &str,
        resource: Option<(Role, String)>,
    ) -> bool {
        let ufrag = format!("{}{participant}", room.ufrag_part());
        if !self
            .rooms
            .get(room)
            .is_some_and(|r| r.sessions.contains(&ufrag))
        {
            return false;
        }
        if let Some((role, key)) = resource {
            let matches = self
                .sessions
                .get(&ufrag)
                .and_then(|s| s.media.as_ref())
                .is_some_and(|m| {
                    m.role == role
                        && ice::constant_time_eq(m.resource_key.as_bytes(), key.as_bytes())
                });
            if !matches {
                return false;
            }
        }
        self.remove_session(&ufrag);
        debug!(thread = self.index, room = %room, participant, "participant deleted");
        true
    }

    /// Release a session: its forwarding state, its DTLS task, its pins, its room slot.
    fn remove_session(&mut self, ufrag: &str) {
        self.unpin_session(ufrag);
        let Some(session) = self.sessions.remove(ufrag) else {
            return;
        };
        self.limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
        let room_id = match &session.media {
            Some(media) => {
                self.members.remove(&media.member);
                if matches!(media.dtls, DtlsPhase::Handshaking(_)) {
                    self.handshaking = self.handshaking.saturating_sub(1);
                }
                let gauge = match media.role {
                    Role::Publisher => &self.stats.media.publishers,
                    Role::Subscriber => &self.stats.media.subscribers,
                };
                gauge.set(gauge.get().saturating_sub(1));
                let room_id = media.room.clone();
                if let Some(room) = self.rooms.get_mut(&room_id) {
                    room.core.remove_member(media.member, Instant::now());
                    drain_core(&mut room.core, &mut self.outputs);
                }
                Some(room_id)
            }
            None => self
                .rooms
                .iter()
                .find(|(_, r)| r.sessions.contains(ufrag))
                .map(|(id, _)| id.clone()),
        };
        // Dropping the session drops its DtlsHandle, which aborts the handshake task.
        drop(session);
        // The handle's abort takes effect when the runtime next runs.
        self.dtls_fed = true;
        if let Some(room_id) = room_id {
            if let Some(r) = self.rooms.get_mut(&room_id) {
                r.sessions.remove(ufrag);
                if r.sessions.is_empty() {
                    // Fold in what the room counted since the last sweep before it goes.
                    add_forward_stats(&self.stats, &r.core.take_stats());
                    self.rooms.remove(&room_id);
                }
            }
        }
        self.send_outputs();
        self.update_gauges();
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
        self.poll_receive_drops();
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
            if self.sessions.get(&ufrag).is_some_and(|s| s.media.is_some()) {
                // A WHIP/WHEP session has no backend to delete it: consent loss ends it.
                self.stats.media.sessions_timed_out.inc();
                self.remove_session(&ufrag);
            } else {
                self.unpin_session(&ufrag);
            }
        }
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let Some(m) = &s.media else { return false };
                // No ICE check, or checks but never a DTLS handshake: either way the
                // session only holds a slot.
                let never_connected = (s.ice.state() == IceState::New
                    || matches!(m.dtls, DtlsPhase::New))
                    && now.saturating_duration_since(m.created) > CONNECT_TIMEOUT;
                let handshake_stalled = matches!(m.dtls, DtlsPhase::Handshaking(_))
                    && m.dtls_started
                        .is_some_and(|t| now.saturating_duration_since(t) > HANDSHAKE_TIMEOUT);
                never_connected || handshake_stalled
            })
            .map(|(u, _)| u.clone())
            .collect();
        for ufrag in stale {
            if let Some(DtlsPhase::Handshaking(_)) = self
                .sessions
                .get(&ufrag)
                .and_then(|s| s.media.as_ref())
                .map(|m| &m.dtls)
            {
                self.stats.media.dtls_failed.inc();
            }
            debug!(thread = self.index, ufrag = %ufrag, "media session timed out");
            self.stats.media.sessions_timed_out.inc();
            self.remove_session(&ufrag);
        }
        let room_ids: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room_id in room_ids {
            if let Some(room) = self.rooms.get_mut(&room_id) {
                room.core.handle_timeout(now);
                drain_core(&mut room.core, &mut self.outputs);
                let delta = room.core.take_stats();
                add_forward_stats(&self.stats, &delta);
            }
            self.send_outputs();
        }
    }

    /// Fold the kernel's per-socket drop counts into the thread's counters. One
    /// getsockopt per socket per sweep: cheap next to the datagrams a socket carries.
    fn poll_receive_drops(&mut self) {
        let group = self.group_drops.poll(&self.group);
        self.stats.socket_receive_drops[0].add(group);
        let mut connected = 0;
        for conn in self.conns.iter_mut().flatten() {
            connected += conn.drops.poll(&conn.socket);
        }
        self.stats.socket_receive_drops[1].add(connected);
    }

    fn update_gauges(&self) {
        self.stats.rooms.set(self.rooms.len() as u64);
        self.stats.sessions.set(self.sessions.len() as u64);
    }

    fn release_all(&mut self) {
        let ufrags: Vec<String> = self.sessions.keys().cloned().collect();
        for u in ufrags {
            self.remove_session(&u);
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

fn drain_core(core: &mut crate::sfu::RoomCore, out: &mut Vec<Output>) {
    while let Some(o) = core.poll_output() {
        out.push(o);
    }
}

fn add_forward_stats(stats: &ThreadStats, d: &crate::sfu::ForwardStats) {
    let m = &stats.media;
    m.rtp_received.add(d.rtp_in);
    m.rtp_forwarded.add(d.rtp_forwarded);
    m.rtp_unknown_ssrc.add(d.rtp_unknown_ssrc);
    m.rtp_malformed.add(d.rtp_malformed);
    m.rtp_payload_type_mismatch.add(d.rtp_payload_type_mismatch);
    m.rtp_dropped_before_bind.add(d.rtp_dropped_before_bind);
    m.rtcp_unknown_ssrc.add(d.rtcp_unknown_ssrc);
    m.rtcp_received.add(d.rtcp_in);
    m.rtcp_malformed.add(d.rtcp_malformed);
    m.nacks_received.add(d.nacks_received);
    m.retransmissions.add(d.retransmissions);
    m.nack_misses.add(d.nack_misses);
    m.plis_received.add(d.plis_received);
    m.firs_received.add(d.firs_received);
    m.plis_sent.add(d.plis_sent);
    m.plis_rate_limited.add(d.plis_rate_limited);
    m.receiver_reports_sent.add(d.rr_sent);
    m.sender_reports_forwarded.add(d.sr_forwarded);
    m.codec_mismatch.add(d.codec_mismatch);
}

fn random_ssrc() -> u32 {
    let mut b = [0u8; 4];
    // A failed OS RNG only costs SSRC uniqueness, which the answer scopes per session.
    let _ = getrandom::fill(&mut b);
    u32::from_be_bytes(b).max(1)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
