//! The logic thread's I/O shell: mio, the sockets, the command queues, and the thread's
//! only clock reads. It feeds the [`ThreadCore`] and carries out what the core asks for,
//! sleeping until the core's next deadline.
use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mio::{Events, Poll, Waker};
use tracing::{debug, trace, warn};

use crate::{
    media::Identity,
    net,
    stats::ThreadStats,
    steering::{ebpf::FlowTable, ActiveMode},
};

use super::{
    api::{Command, Limits, ThreadHandle},
    core::{Action, CoreConfig, ThreadCore},
    pinning::Pinning,
    sockets::{RecvBatch, Sockets, Via, WAKER},
    transmit::TransmitBatch,
};

/// Bound on queued commands and handoffs per thread; beyond it we shed, never block.
const QUEUE_DEPTH: usize = 4096;
/// recvmmsg batches per socket per wake-up. A flood on one socket must not starve the
/// others, the command queue or the timers; the rest is read on the next pass.
const MAX_BATCHES_PER_WAKE: usize = 64;
/// Transmits held back for GSO before they are sent even mid-batch: bounds the room
/// buffers in flight (the pool keeps at most 1,024) while leaving runs long enough to
/// coalesce.
const SEND_AT: usize = 512;

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
    /// Coalesce runs of datagrams to one destination with UDP GSO.
    pub gso: bool,
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
        let shell = Shell::new(setup, poll, rx, stats, stop, peers.clone())?;
        joins.push(
            std::thread::Builder::new()
                .name(format!("roomgate-logic-{index}"))
                .spawn(move || shell.run())?,
        );
    }
    Ok((handles, joins))
}

struct Shell {
    index: usize,
    mode: ActiveMode,
    poll: Poll,
    sockets: Sockets,
    pinning: Pinning,
    core: ThreadCore,
    rx: Receiver<Command>,
    handoff_rx: Receiver<Command>,
    peers: Arc<[ThreadHandle]>,
    stats: Arc<ThreadStats>,
    stop: Arc<AtomicBool>,
    batch: RecvBatch,
    /// Sockets left readable because a wake-up hit MAX_BATCHES_PER_WAKE (edge-triggered
    /// epoll will not report them again until new data arrives).
    pending: Vec<Via>,
    /// What the core queued to send, sent once per receive batch.
    tx: TransmitBatch,
    gso: bool,
}

impl Shell {
    fn new(
        setup: ThreadSetup,
        poll: Poll,
        (rx, handoff_rx): (Receiver<Command>, Receiver<Command>),
        stats: Arc<ThreadStats>,
        stop: Arc<AtomicBool>,
        peers: Arc<[ThreadHandle]>,
    ) -> io::Result<Self> {
        let sockets = Sockets::new(poll.registry().try_clone()?, setup.socket, setup.buffers)?;
        let core = ThreadCore::new(
            CoreConfig {
                index: setup.index,
                threads: setup.threads,
                mode: setup.mode,
                local_addr: setup.local_addr,
                identity: setup.identity,
                candidates: setup.candidates,
                limits: setup.limits,
            },
            stats.clone(),
        )?;
        Ok(Shell {
            index: setup.index,
            mode: setup.mode,
            poll,
            sockets,
            pinning: Pinning::new(setup.mode, setup.index, setup.flows, setup.local_addr),
            core,
            rx,
            handoff_rx,
            peers,
            stats,
            stop,
            batch: RecvBatch::new(),
            pending: Vec::new(),
            tx: TransmitBatch::default(),
            gso: setup.gso,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        debug!(
            thread = self.index,
            mode = self.mode.as_str(),
            "logic thread started"
        );
        self.core.handle_timeout(Instant::now());
        self.flush();
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if self.pending.is_empty() {
                self.core
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
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
                if let Some(via) = Via::of(event.token()) {
                    self.drain(via);
                }
            }
            self.drain_commands();
            self.core.handle_timeout(Instant::now());
            self.flush();
            self.stats.busy_ns.add(woke.elapsed().as_nanos() as u64);
        }
        self.core.release_all(Instant::now());
        self.flush();
        // The group socket's drops since the last publication, before it closes.
        self.sockets.poll_receive_drops(&self.stats);
        debug!(thread = self.index, "logic thread stopped");
    }

    /// Read until the socket would block; batches of up to BATCH_SIZE via recvmmsg.
    fn drain(&mut self, via: Via) {
        let mut errors = 0;
        for batch in 0.. {
            if batch == MAX_BATCHES_PER_WAKE {
                if !self.pending.contains(&via) {
                    self.pending.push(via);
                }
                return;
            }
            let n = match self.sockets.recv(via, &mut self.batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors surface here on connected sockets; reading clears them and
                    // datagrams may still be queued behind, so keep reading (bounded).
                    trace!(thread = self.index, error = %e, "recv error");
                    errors += 1;
                    if errors > 8 {
                        return;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let arrival = self.sockets.arrival(via);
            let mut datagrams = 0u64;
            let mut batch = std::mem::replace(&mut self.batch, RecvBatch::empty());
            batch.for_each(n, |d| {
                datagrams += 1;
                if d.oversized {
                    self.stats.oversized.inc();
                    trace!(thread = self.index, from = %d.from, decision = "drop_oversized");
                    return;
                }
                // A bug reachable from one datagram (here or in a protocol library)
                // must cost that datagram, not the thread and every room on it.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.core
                        .handle_datagram(now, d.from, d.local_ip, arrival, d.data)
                }));
                if handled.is_err() {
                    self.stats.datagram_panics.inc();
                    warn!(thread = self.index, from = %d.from, "a datagram caused a panic; dropped it");
                }
                // Pins take effect before the next datagram; sends wait for the batch's
                // end so that runs to one destination can leave together.
                self.collect();
                if self.tx.len() >= SEND_AT {
                    self.send_collected();
                }
            });
            self.send_collected();
            self.batch = batch;
            if let Some(each) = (now.elapsed().as_nanos() as u64).checked_div(datagrams) {
                self.stats.processing.observe_n(each, datagrams);
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
            self.core.handle_command(Instant::now(), cmd);
            self.flush();
        }
    }

    /// Carry out what the core asked for, then send what it queued.
    fn flush(&mut self) {
        self.collect();
        self.send_collected();
    }

    fn send_collected(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let core = &mut self.core;
        self.tx
            .send_all(&self.sockets, self.gso, &self.stats, |t, r| {
                core.handle_sent(t, r)
            });
    }

    /// Carry out what the core asked for and take what it queued to send. A pin is
    /// answered before the core sees anything else.
    fn collect(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Pin(req) => {
                    let result =
                        self.pinning
                            .pin(&mut self.sockets, req.addr, req.reply, &self.stats);
                    self.core.handle_pin_result(Instant::now(), req, result);
                }
                Action::Unpin { addr, .. } => {
                    self.pinning.unpin(&mut self.sockets, addr, &self.stats);
                }
                Action::Handoff {
                    owner,
                    datagram,
                    from,
                    local_ip,
                } => self.hand_off(owner, datagram, from, local_ip),
                Action::PollSocketDrops => self.sockets.poll_receive_drops(&self.stats),
            }
        }
        while let Some(t) = self.core.poll_transmit() {
            self.tx.push(t);
        }
    }

    fn hand_off(
        &mut self,
        owner: usize,
        datagram: Vec<u8>,
        from: SocketAddr,
        local_ip: Option<std::net::IpAddr>,
    ) {
        let Some(peer) = self.peers.get(owner) else {
            self.stats.misdelivered.inc();
            return;
        };
        match peer.send(Command::Handoff {
            datagram,
            from,
            local_ip,
        }) {
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
}
