//! What a logic thread keeps per participant and per room.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use serde::Serialize;

use crate::{
    ice::IceSession,
    media::{DtlsHandle, SrtpSession},
    room::RoomId,
    sdp::Role,
    sfu::{ForwardConfig, MemberId, RoomCore},
};

/// One participant: its ICE state and the client addresses pinned for it.
pub struct Session {
    pub participant: String,
    pub ice: IceSession,
    /// Canonical client addresses pinned to this thread (flow map entries or connected
    /// sockets), each only after a Binding Request with valid MESSAGE-INTEGRITY.
    pub pinned: Vec<SocketAddr>,
    /// Where replies go: the address as the socket reported it (may be v4-mapped) and the
    /// local address the client sent to, so replies leave from that address.
    pub reply: Option<ReplyPath>,
    pub valid_checks: u64,
    /// Non-request datagrams (DTLS, SRTP, SRTCP, STUN indications) delivered to the session.
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    /// WHIP/WHEP sessions carry media; REST participants (ICE only) do not.
    pub media: Option<MediaState>,
}

/// A WHIP/WHEP session's place in its room and its DTLS-SRTP association.
pub struct MediaState {
    pub member: MemberId,
    pub room: RoomId,
    pub role: Role,
    /// SHA-256 fingerprint from the client's SDP; the DTLS client must present it.
    pub remote_fingerprint: String,
    /// Secret part of the session's WHIP/WHEP resource URL: the participant id is public
    /// (room listings show it), so knowing it must not be enough to DELETE the session.
    pub resource_key: String,
    pub dtls: DtlsPhase,
    pub created: Instant,
    pub dtls_started: Option<Instant>,
    /// DTLS records accepted during the handshake (bounded by a budget).
    pub dtls_records: u32,
}

pub enum DtlsPhase {
    /// Waiting for the client's ClientHello (roomgate is always the DTLS server).
    New,
    Handshaking(DtlsHandle),
    Connected {
        /// Kept so a close_notify from the client is still read.
        _handle: DtlsHandle,
        srtp: Box<SrtpSession>,
    },
}

impl DtlsPhase {
    pub fn name(&self) -> &'static str {
        match self {
            DtlsPhase::New => "new",
            DtlsPhase::Handshaking(_) => "connecting",
            DtlsPhase::Connected { .. } => "connected",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ReplyPath {
    pub to: SocketAddr,
    pub local_ip: Option<IpAddr>,
}

impl Session {
    pub fn view(&self) -> ParticipantView {
        ParticipantView {
            participant: self.participant.clone(),
            ice_state: self.ice.state().name(),
            ufrag: self.ice.credentials().ufrag.clone(),
            addresses: self.pinned.iter().map(ToString::to_string).collect(),
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
            dtls_state: self.media.as_ref().map(|m| m.dtls.name()),
        }
    }
}

pub struct Room {
    /// Server ufrags of the room's sessions.
    pub sessions: BTreeSet<String>,
    /// Forwarding state of the room's WHIP/WHEP sessions.
    pub core: RoomCore,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            sessions: BTreeSet::new(),
            core: RoomCore::new(ForwardConfig::default()),
        }
    }
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

/// Why a WHIP/WHEP session was not created; nothing of it was kept.
#[derive(Clone, Debug)]
pub struct CreateRefused {
    pub status: u16,
    pub message: String,
}
