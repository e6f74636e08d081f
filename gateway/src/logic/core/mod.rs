//! The logic thread's sans-IO core, in quinn's `Endpoint` shape: no socket, no clock.
//!
//! The shell feeds it datagrams, commands and time (`handle_*`, each with `now`) and
//! drains what it produced: datagrams to send ([`ThreadCore::poll_transmit`]), and
//! [`Action`]s that need the kernel (pin or unpin a flow, hand a datagram to another
//! thread, read the sockets' drop counters). [`ThreadCore::poll_timeout`] says when it
//! next needs [`ThreadCore::handle_timeout`]. After every `handle_*` the shell drains
//! actions before calling in again: a [`Action::Pin`] is answered with
//! [`ThreadCore::handle_pin_result`] before anything else happens.
//!
//! - [`checks`]: STUN checks, pins and handoffs.
//! - [`media`]: DTLS records, SRTP and forwarding (the hot path).
//! - [`sessions`]: creation, deletion, timeouts, room views.
//! - [`restart`]: WHIP/WHEP PATCH: trickle and ICE restarts.
mod checks;
mod media;
mod restart;
mod sessions;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use roomgate_common::{classify, PacketClass};
use tracing::trace;

use crate::{
    media::{DtlsDriver, Identity},
    net::SendErrno,
    sfu::MemberId,
    stats::{SessionEnd, ThreadStats},
    steering::ActiveMode,
};

use super::{
    api::{Command, Limits},
    reply_limit::ReplyLimiter,
    session::ReplyPath,
    stats::{add_forward_stats, state_index},
    table::{ConnId, RoomKey, SessionId, Table},
};

const PWD_LEN: usize = 24;
/// Random characters in a WHIP/WHEP resource URL (~131 bits).
const RESOURCE_KEY_LEN: usize = 22;
/// Counters the rooms keep are folded into the exported ones, and the sessions-by-state
/// gauges refreshed, this often. Only publication is periodic: protocol timers are
/// deadlines of their own.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Where a datagram came from, as far as the core needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The thread's socket in the SO_REUSEPORT group.
    Group,
    /// A connected socket (connected mode), connected to canonical `peer`.
    Conn { conn: ConnId, peer: SocketAddr },
    /// Passed on by another thread (connected mode).
    Handoff,
}

/// A datagram to send. `contents` of forwarded media is a buffer of the room's pool:
/// hand the transmit back with [`ThreadCore::handle_sent`] so it is reused.
#[derive(Debug)]
pub struct Transmit {
    /// As the socket reported the peer (may be v4-mapped).
    pub to: SocketAddr,
    /// Leave from the address the client sent to (IP_PKTINFO), on the group socket.
    pub src_ip: Option<IpAddr>,
    /// Send on this connected socket if it is still connected to `to`.
    pub conn: Option<ConnId>,
    pub contents: Vec<u8>,
    session: Option<SessionId>,
    recycle: Option<RoomKey>,
}

/// Work that needs the kernel, for the shell.
#[derive(Debug)]
pub enum Action {
    /// Pin canonical `addr` to this thread; answer with [`ThreadCore::handle_pin_result`].
    Pin(PinRequest),
    /// Release the pin of canonical `addr` (its connected socket `conn`, if any).
    Unpin {
        addr: SocketAddr,
        conn: Option<ConnId>,
    },
    /// Pass a Binding Request to the thread that owns its room.
    Handoff {
        owner: usize,
        datagram: Vec<u8>,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
    },
    /// Fold the sockets' kernel receive-drop counters into the thread's stats.
    PollSocketDrops,
}

/// A verified check from an address not pinned yet: the answer waits for the pin.
#[derive(Debug)]
pub struct PinRequest {
    pub addr: SocketAddr,
    pub reply: ReplyPath,
    session: SessionId,
    arrival: Arrival,
    response: Vec<u8>,
    use_candidate: bool,
    evicted: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Session(SessionId),
    Room(RoomKey),
}

/// What the core is built with.
pub struct CoreConfig {
    pub index: usize,
    pub threads: usize,
    pub mode: ActiveMode,
    pub local_addr: SocketAddr,
    pub identity: Arc<Identity>,
    /// Host candidates written into SDP answers.
    pub candidates: Vec<SocketAddr>,
    pub limits: Limits,
}

pub struct ThreadCore {
    index: usize,
    threads: usize,
    mode: ActiveMode,
    local_addr: SocketAddr,
    identity: Arc<Identity>,
    candidates: Vec<SocketAddr>,
    limits: Limits,
    stats: Arc<ThreadStats>,
    table: Table,
    /// Budgets for error responses to unauthenticated checks (see `reply_limit`).
    reply_limit: ReplyLimiter<SessionId>,
    /// Session and room deadlines. Entries are not removed when a deadline moves: an
    /// entry only counts while its owner's `armed` still equals it.
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    dtls: DtlsDriver,
    /// DTLS records were fed, a flight timer fell due or a handshake was dropped since
    /// the DTLS runtime last ran.
    dtls_pending: bool,
    next_member: MemberId,
    next_publish: Option<Instant>,
    /// The latest `now` handed in: "immediately" for `poll_timeout`.
    last_now: Option<Instant>,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<Action>,
}

impl ThreadCore {
    pub fn new(config: CoreConfig, stats: Arc<ThreadStats>) -> std::io::Result<Self> {
        Ok(ThreadCore {
            index: config.index,
            threads: config.threads,
            mode: config.mode,
            local_addr: config.local_addr,
            dtls: DtlsDriver::new(config.identity.clone())?,
            identity: config.identity,
            candidates: config.candidates,
            limits: config.limits,
            stats,
            table: Table::default(),
            reply_limit: ReplyLimiter::default(),
            timers: BinaryHeap::new(),
            dtls_pending: false,
            next_member: 1,
            next_publish: None,
            last_now: None,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
        })
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// A transmit was sent (or failed with `errno`); its buffer goes back to its room.
    pub fn handle_sent(&mut self, t: Transmit, result: Result<(), SendErrno>) {
        match result {
            Ok(()) => {
                self.stats.tx_datagrams.inc();
                self.stats.tx_bytes.add(t.contents.len() as u64);
                if let Some(s) = t.session.and_then(|id| self.table.get_mut(id)) {
                    s.tx_datagrams += 1;
                }
            }
            Err(errno) => {
                self.stats.send_errors[errno as usize].inc();
                trace!(thread = self.index, to = %t.to, ?errno, "send failed");
            }
        }
        if let Some(room) = t.recycle.and_then(|k| self.table.room_mut(k)) {
            room.core.recycle(t.contents);
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the core next needs [`ThreadCore::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dtls_pending {
            return self.last_now;
        }
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        super::session::earliest(timer, self.next_publish)
    }

    /// Run what is due: session and room deadlines, webrtc-dtls's runtime, publication
    /// of the counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match key {
                TimerKey::Session(id) => {
                    let Some(s) = self.table.get_mut(id).filter(|s| s.armed == Some(at)) else {
                        continue;
                    };
                    s.armed = None;
                    self.session_timeout(id, now);
                }
                TimerKey::Room(key) => {
                    let Some(r) = self.table.room_mut(key).filter(|r| r.armed == Some(at)) else {
                        continue;
                    };
                    r.armed = None;
                    r.core.handle_timeout(now);
                    self.forward_outputs(key);
                    self.arm_room(key);
                }
            }
        }
        if self.dtls_pending {
            self.pump_dtls(now);
        }
        match self.next_publish {
            Some(at) if now < at => {}
            _ => {
                self.publish();
                self.next_publish = Some(now + PUBLISH_EVERY);
            }
        }
    }

    /// One datagram from the network, in a buffer the core may rewrite in place
    /// (SRTP is decrypted where it lies).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from_raw: SocketAddr,
        local_ip: Option<IpAddr>,
        arrival: Arrival,
        data: &mut [u8],
    ) {
        self.last_now = Some(now);
        self.stats.rx_datagrams.inc();
        self.stats.rx_bytes.add(data.len() as u64);
        self.on_datagram(now, from_raw, local_ip, arrival, data);
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        from_raw: SocketAddr,
        local_ip: Option<IpAddr>,
        arrival: Arrival,
        data: &mut [u8],
    ) {
        let from = canonical(from_raw);
        if let Arrival::Conn { peer, .. } = arrival {
            if peer != from {
                self.stats.misdelivered.inc();
                trace!(thread = self.index, %from, "datagram from a foreign source on a connected socket");
                return;
            }
        }
        let Some(&first) = data.first() else {
            self.stats.empty.inc();
            trace!(thread = self.index, %from, ?arrival, decision = "drop_empty");
            return;
        };
        match classify(first) {
            PacketClass::Stun => self.on_stun(data, from_raw, from, local_ip, arrival, now),
            PacketClass::Dtls | PacketClass::Rtp => self.on_session_datagram(data, from, now),
            PacketClass::Unknown => {
                self.stats.unknown_type.inc();
                trace!(thread = self.index, %from, ?arrival, first, decision = "drop_unknown_type");
            }
        }
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.last_now = Some(now);
        match cmd {
            Command::CreateParticipant { room, reply } => {
                // The caller may have given up (timeout, client gone): then nobody
                // knows the credentials, so the session would only hold a slot.
                match self.create_participant(&room, now) {
                    Ok((id, created)) => {
                        if reply.send(Ok(created)).is_err() {
                            self.remove_session(id, SessionEnd::Abandoned, now);
                        }
                    }
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                    }
                }
            }
            Command::DeleteParticipant {
                room,
                participant,
                resource,
                reply,
            } => {
                let found = self.delete_participant(&room, &participant, resource, now);
                let _ = reply.send(found);
            }
            Command::GetRoom { room, reply } => {
                let _ = reply.send(self.room_view(&room, now));
            }
            Command::CreateMediaSession {
                room,
                role,
                offer,
                publisher,
                layer,
                reply,
            } => match self.create_media_session(&room, role, &offer, publisher, layer, now) {
                Ok((id, created)) => {
                    self.set_remote_ufrag(id, &offer.ice_ufrag);
                    if reply.send(Ok(created)).is_err() {
                        self.remove_session(id, SessionEnd::Abandoned, now);
                    }
                }
                Err(refused) => {
                    let _ = reply.send(Err(refused));
                }
            },
            Command::PatchIce {
                room,
                participant,
                resource,
                if_match,
                fragment,
                reply,
            } => {
                let result = self.patch_ice(&room, &participant, resource, if_match, &fragment);
                let _ = reply.send(result);
            }
            Command::SetLayer {
                room,
                participant,
                layer,
                reply,
            } => {
                let _ = reply.send(self.set_layer(&room, &participant, layer, now));
            }
            Command::ListRooms { reply } => {
                let _ = reply.send(self.table.room_ids().cloned().collect());
            }
            Command::CloseRoom { room, reply } => {
                let ids: Vec<_> = self
                    .table
                    .room_key(&room)
                    .and_then(|key| self.table.room(key))
                    .map(|r| r.sessions.clone())
                    .unwrap_or_default();
                for id in &ids {
                    self.remove_session(*id, SessionEnd::RoomClosed, now);
                }
                let _ = reply.send(ids.len());
            }
            Command::Handoff {
                mut datagram,
                from,
                local_ip,
            } => {
                // Counted by the receiver, so handoffs == handoffs_received proves
                // every handed-off datagram arrived.
                // The sending thread counted it as received already.
                self.stats.handoffs_received.inc();
                self.on_datagram(now, from, local_ip, Arrival::Handoff, &mut datagram);
            }
        }
    }

    /// Release every session (the thread is stopping).
    pub fn release_all(&mut self, now: Instant) {
        for id in self.table.ids() {
            self.remove_session(id, SessionEnd::Shutdown, now);
        }
    }

    /// Put the session's next deadline in the timer queue unless an earlier entry is
    /// already there.
    fn arm_session(&mut self, id: SessionId) {
        let Some(s) = self.table.get_mut(id) else {
            return;
        };
        if let Some(at) = s.poll_timeout() {
            if s.armed.is_none_or(|armed| at < armed) {
                s.armed = Some(at);
                self.timers.push(Reverse((at, TimerKey::Session(id))));
            }
        }
    }

    fn arm_room(&mut self, key: RoomKey) {
        let Some(r) = self.table.room_mut(key) else {
            return;
        };
        if let Some(at) = r.core.poll_timeout() {
            if r.armed.is_none_or(|armed| at < armed) {
                r.armed = Some(at);
                self.timers.push(Reverse((at, TimerKey::Room(key))));
            }
        }
    }

    /// Fold the rooms' counters into the thread's, refresh the gauges, and have the
    /// shell read the kernel's drop counters.
    fn publish(&mut self) {
        for (_, room) in self.table.rooms_mut() {
            add_forward_stats(&self.stats, &room.core.take_stats());
        }
        let mut by_state = [0u64; 4];
        for session in self.table.sessions() {
            by_state[state_index(session.ice.state())] += 1;
        }
        for (counter, n) in self.stats.sessions_by_state.iter().zip(by_state) {
            counter.set(n);
        }
        self.update_gauges();
        self.actions.push_back(Action::PollSocketDrops);
    }

    fn update_gauges(&self) {
        self.stats.rooms.set(self.table.room_count() as u64);
        self.stats.sessions.set(self.table.session_count() as u64);
    }
}

pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
