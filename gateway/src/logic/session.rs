//! What a logic thread keeps per session.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use crate::{
    ice::{IceSession, IceState},
    media::Transport,
    sdp::Role,
    sfu::MemberId,
};

use super::{
    api::ParticipantView,
    table::{ConnId, RoomKey},
};

/// A WHIP/WHEP session whose client never completes an ICE check (or never starts
/// DTLS) in this time is released.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One session: a participant's ICE state, the client addresses pinned for it and, for
/// WHIP/WHEP, its media transport.
pub struct Session {
    /// The public id of the session in the control API.
    pub participant: String,
    pub room: RoomKey,
    pub ice: IceSession,
    /// Canonical client addresses pinned to this thread (flow map entries or connected
    /// sockets), each only after a Binding Request with valid MESSAGE-INTEGRITY. Changed
    /// only through `Table::pin`/`Table::unpin`, which keep the address index in step.
    pub pinned: Vec<Pin>,
    /// Where replies go: the address as the socket reported it (may be v4-mapped) and the
    /// local address the client sent to, so replies leave from that address.
    pub reply: Option<ReplyPath>,
    pub valid_checks: u64,
    /// Non-request datagrams (DTLS, SRTP, SRTCP, STUN indications) delivered to the session.
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    /// WHIP/WHEP sessions carry media; REST participants (ICE only) do not.
    pub media: Option<MediaSession>,
    /// Deadline the thread's timer queue holds for this session.
    pub armed: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub addr: SocketAddr,
    /// The connected socket for this address (connected mode).
    pub conn: Option<ConnId>,
}

/// A WHIP/WHEP session's place in its room and its DTLS-SRTP transport.
pub struct MediaSession {
    pub member: MemberId,
    pub role: Role,
    /// Secret part of the session's WHIP/WHEP resource URL: the participant id is public
    /// (room listings show it), so knowing it must not be enough to DELETE the session.
    pub resource_key: String,
    pub created: Instant,
    pub transport: Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyPath {
    pub to: SocketAddr,
    pub local_ip: Option<IpAddr>,
    /// The connected socket to `to`, while it is pinned (connected mode).
    pub conn: Option<ConnId>,
}

impl Session {
    pub fn pin_of(&self, addr: SocketAddr) -> Option<&Pin> {
        self.pinned.iter().find(|p| p.addr == addr)
    }

    /// Never connected: no ICE check, or checks but never a DTLS handshake. Either way
    /// the session only holds a slot.
    pub fn never_connected(&self) -> bool {
        self.media
            .as_ref()
            .is_some_and(|m| self.ice.state() == IceState::New || m.transport.is_new())
    }

    /// The earliest time this session needs [`ThreadCore::handle_timeout`]: consent
    /// expiry, the connect and handshake deadlines, webrtc-dtls's flight timer.
    ///
    /// [`ThreadCore::handle_timeout`]: super::ThreadCore::handle_timeout
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut deadline = self.ice.poll_timeout();
        if let Some(m) = &self.media {
            if self.never_connected() {
                deadline = earliest(deadline, Some(m.created + CONNECT_TIMEOUT));
            }
            deadline = earliest(deadline, m.transport.poll_timeout());
        }
        deadline
    }

    pub fn view(&self) -> ParticipantView {
        ParticipantView {
            participant: self.participant.clone(),
            ice_state: self.ice.state().name(),
            ufrag: self.ice.credentials().ufrag.clone(),
            addresses: self.pinned.iter().map(|p| p.addr.to_string()).collect(),
            selected: self.ice.selected().map(|a| a.to_string()),
            valid_checks: self.valid_checks,
            rx_datagrams: self.rx_datagrams,
            rx_bytes: self.rx_bytes,
            tx_datagrams: self.tx_datagrams,
            role: Some(match &self.media {
                None => "ice",
                Some(m) if m.role == Role::Publisher => "publisher",
                Some(_) => "subscriber",
            }),
            dtls_state: self.media.as_ref().map(|m| m.transport.state_name()),
            video: Vec::new(),
        }
    }
}

pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
