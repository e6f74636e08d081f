//! What a logic thread keeps per participant and per room.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use crate::ice::IceSession;

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
        }
    }
}

#[derive(Default)]
pub struct Room {
    /// Server ufrags of the room's sessions.
    pub sessions: BTreeSet<String>,
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
