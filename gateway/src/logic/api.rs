//! What the control plane (and other threads) send a logic thread, and what comes back.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{SyncSender, TrySendError},
        Arc,
    },
};

use mio::Waker;
use serde::Serialize;

use crate::{
    ice::{
        patch::{IfMatch, PatchRefused, Patched},
        sdpfrag::Fragment,
        RandomError,
    },
    room::RoomId,
    sdp::{Offer, Role, SdpError},
    sfu::LayerRequest,
    stats::ThreadStats,
};

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
        reply: tokio::sync::oneshot::Sender<Result<ParticipantCreated, CreateRefused>>,
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
        /// WHEP only: the simulcast layer the viewer asked for.
        layer: LayerRequest,
        reply: tokio::sync::oneshot::Sender<Result<MediaCreated, CreateRefused>>,
    },
    /// WHIP/WHEP PATCH (RFC 9725 §4.3): a validated SDP fragment for one session
    /// resource, with trickled candidates or an ICE restart.
    PatchIce {
        room: RoomId,
        participant: String,
        /// Only a session of this role with this resource key matches (as for DELETE).
        resource: (Role, String),
        /// The request's `If-Match`, `None` when absent.
        if_match: Option<IfMatch>,
        fragment: Box<Fragment>,
        reply: tokio::sync::oneshot::Sender<Result<Patched, PatchRefused>>,
    },
    /// A viewer's simulcast layer request, live. Replies whether the subscriber exists.
    SetLayer {
        room: RoomId,
        participant: String,
        layer: LayerRequest,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// Cluster mode: the rooms this thread holds, so the node renews exactly the claims
    /// of rooms that still have participants.
    ListRooms {
        reply: tokio::sync::oneshot::Sender<Vec<RoomId>>,
    },
    /// Cluster mode: end every session of a room this node turned out not to own (its
    /// claim was lost during a partition); replies how many sessions ended.
    CloseRoom {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<usize>,
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
    pub(super) tx: SyncSender<Command>,
    /// Handoffs have their own queue: they come from unauthenticated network input, and a
    /// flood of them must not crowd out the control plane's commands.
    pub(super) handoff_tx: SyncSender<Command>,
    pub(super) waker: Arc<Waker>,
    /// Set to stop the thread; separate from the queue so a full queue cannot delay it.
    pub(super) stop: Arc<AtomicBool>,
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

/// Why no session was created; nothing of it was kept. `control/` picks the status.
#[derive(Debug, thiserror::Error)]
pub enum CreateRefused {
    #[error("{0}")]
    Offer(#[from] SdpError),
    #[error("no publisher {publisher:?} in room {room}")]
    NoSuchPublisher { publisher: String, room: RoomId },
    #[error("room {room} is full ({max} participants, --max-participants-per-room)")]
    RoomFull { room: RoomId, max: usize },
    #[error("gateway is full ({max} sessions, --max-sessions)")]
    GatewayFull { max: usize },
    #[error("{0}")]
    Random(#[from] RandomError),
    #[error("could not allocate a unique participant id")]
    NoUniqueId,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParticipantView {
    pub participant: String,
    pub ice_state: &'static str,
    pub ufrag: String,
    pub addresses: Vec<String>,
    pub selected: Option<String>,
    pub valid_checks: u64,
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtls_state: Option<&'static str>,
    /// Subscribers: what each video m-line receives.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub video: Vec<VideoView>,
}

/// One video m-line of a subscriber, as `GET /api/rooms/{room}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VideoView {
    pub mid: String,
    /// `low`, `mid` or `high` among the publisher's active layers (`high` without
    /// simulcast); `null` while nothing flows.
    pub layer: Option<&'static str>,
    /// `auto` or the layer the viewer asked for.
    pub requested: &'static str,
    /// The congestion controller's estimate of the viewer's link, when it sends
    /// transport-wide feedback.
    pub estimate_bps: Option<u64>,
    pub simulcast: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoomView {
    pub room: String,
    pub thread: usize,
    pub participants: Vec<ParticipantView>,
}

#[derive(Clone, Debug)]
pub struct ParticipantCreated {
    pub participant: String,
    pub ufrag: String,
    pub pwd: String,
    pub thread: usize,
}

/// A WHIP/WHEP session the thread created, with its SDP answer.
#[derive(Clone, Debug)]
pub struct MediaCreated {
    pub participant: String,
    pub resource_key: String,
    pub answer: String,
    pub thread: usize,
}
