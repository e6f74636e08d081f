//! STUN policy: where a Binding Request goes and what a verified check changes. Pure
//! decisions; the thread core carries them out (pins through the shell, hands off, replies).
use std::net::SocketAddr;

use crate::{
    ice::{self, StunError, StunView},
    room::owner_of_server_ufrag,
    steering::ActiveMode,
};

use super::{
    core::Arrival,
    table::{SessionId, Table},
};

/// Where a STUN datagram goes, decided from the message and the table alone.
pub enum Route<'a> {
    Malformed(StunError),
    /// An indication or a response: session traffic if the source is pinned.
    NotARequest,
    /// A request without USERNAME names no session. RFC 8489 9.1.3 would answer 400,
    /// but it can come from any (spoofed) source, so roomgate drops it as the kernel
    /// program does in eBPF mode: answering would make the port a reflector.
    NoUsername,
    /// The source address is pinned to another session: never answered, so valid
    /// credentials for one session cannot move another session's flow.
    PinnedElsewhere,
    /// Not one of our ufrags (the room part does not parse).
    NotOurs,
    /// The room belongs to another thread.
    Foreign {
        owner: usize,
    },
    /// Ours, but no such session: silent, so the port is no reflector for scanners.
    UnknownUfrag,
    /// A check for a session of this thread; its MESSAGE-INTEGRITY is not verified yet.
    Check {
        session: SessionId,
        view: StunView<'a>,
    },
}

pub fn route<'a>(
    data: &'a [u8],
    from: SocketAddr,
    table: &Table,
    threads: usize,
    index: usize,
) -> Route<'a> {
    let view = match ice::parse(data) {
        Ok(v) => v,
        Err(e) => return Route::Malformed(e),
    };
    if !view.is_binding_request() {
        return Route::NotARequest;
    }
    let Some(server_ufrag) = view.server_ufrag() else {
        return Route::NoUsername;
    };
    let holder = table.by_addr(&from);
    let named = table.by_ufrag(server_ufrag);
    if holder.is_some_and(|h| Some(h) != named) {
        return Route::PinnedElsewhere;
    }
    match owner_of_server_ufrag(server_ufrag, threads) {
        None => return Route::NotOurs,
        Some(owner) if owner != index => return Route::Foreign { owner },
        Some(_) => {}
    }
    match named {
        Some(session) => Route::Check { session, view },
        None => Route::UnknownUfrag,
    }
}

/// What to do with a Binding Request for another thread's room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// Connected mode: pass the datagram to the owner (the one handoff per client).
    Handoff,
    /// eBPF mode steers by room, and a handed-off datagram went to its owner: arriving
    /// here means the steering is wrong. Count it, never forward it.
    Misdelivered,
}

pub fn foreign(mode: ActiveMode, arrival: Arrival) -> Foreign {
    match (mode, arrival) {
        (ActiveMode::Connected, Arrival::Group | Arrival::Conn { .. }) => Foreign::Handoff,
        _ => Foreign::Misdelivered,
    }
}

/// Whether a verified check moves the session's media to its source. Media and DTLS
/// follow the nominated pair only: a check proves knowledge of the password, not
/// ownership of its source address, so an unnominated (possibly spoofed) check must not
/// redirect a session's media. The first check sets a path so DTLS can start.
pub fn moves_media(use_candidate: bool, has_path: bool) -> bool {
    use_candidate || !has_path
}
