//! STUN checks: answering Binding Requests, pinning their sources through the shell,
//! handing off or counting foreign ones, and releasing pins.
use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use tracing::{debug, trace, warn};

use crate::ice::{self, Answer, StunOutcome};

use super::{
    super::{
        pinning::PinError,
        session::{Pin, ReplyPath},
        stun::{self, Foreign, Route},
        table::{ConnId, SessionId},
    },
    Action, Arrival, PinRequest, ThreadCore, Transmit,
};

impl ThreadCore {
    pub(super) fn on_stun(
        &mut self,
        data: &[u8],
        from_raw: SocketAddr,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        arrival: Arrival,
        now: Instant,
    ) {
        let reply = ReplyPath {
            to: from_raw,
            local_ip,
            conn: match arrival {
                Arrival::Conn { conn, .. } => Some(conn),
                _ => None,
            },
        };
        let (id, view) = match stun::route(data, from, &self.table, self.threads, self.index) {
            Route::Check { session, view } => (session, view),
            Route::Malformed(e) => {
                self.stats.stun(StunOutcome::Malformed).inc();
                trace!(thread = self.index, %from, error = %e, decision = "drop_malformed_stun");
                return;
            }
            Route::NotARequest => {
                if let Some(id) = self.table.by_addr(&from) {
                    self.deliver(id, data.len());
                } else {
                    self.stats.stun(StunOutcome::NotARequest).inc();
                }
                return;
            }
            Route::NoUsername => {
                self.stats.stun(StunOutcome::BadRequest).inc();
                trace!(thread = self.index, %from, decision = "drop_no_username");
                return;
            }
            Route::PinnedElsewhere => {
                self.stats.pin_conflicts.inc();
                trace!(thread = self.index, %from, decision = "drop_pinned_elsewhere");
                return;
            }
            Route::NotOurs => {
                self.stats.stun(StunOutcome::UnknownUfrag).inc();
                trace!(thread = self.index, %from, decision = "drop_foreign_ufrag");
                return;
            }
            Route::Foreign { owner } => {
                match stun::foreign(self.mode, arrival) {
                    Foreign::Handoff => self.hand_off(data, owner, from_raw, local_ip, now),
                    Foreign::Misdelivered => {
                        self.stats.misdelivered.inc();
                        trace!(thread = self.index, owner, %from, decision = "misdelivered");
                    }
                }
                return;
            }
            Route::UnknownUfrag => {
                self.stats.stun(StunOutcome::UnknownUfrag).inc();
                trace!(thread = self.index, %from, decision = "drop_unknown_ufrag");
                return;
            }
        };
        let Some(session) = self.table.get_mut(id) else {
            return;
        };
        // An unauthenticated check's error response goes wherever its source says: it
        // is charged to the claimed session's budget and the thread's, and built only
        // when both allow it.
        let (limiter, stats) = (&mut self.reply_limit, &self.stats);
        let mut limited = None;
        let answer = ice::stun::answer_limited(&view, session.ice.credentials(), from, |_| {
            match limiter.allow(id, now) {
                Ok(()) => {
                    stats.stun_error_replies.inc();
                    true
                }
                Err(reason) => {
                    limited = Some(reason);
                    false
                }
            }
        });
        match answer {
            Answer::Success {
                response,
                use_candidate,
            } => {
                session.valid_checks += 1;
                let path_before = session.ice.selected();
                let newly_valid = session.ice.on_valid_check(from, use_candidate, now);
                // A check that moved the media path (a nomination, or a nominate-once
                // client's consent checks arriving from a new address after the old one
                // went silent) carries the reply path along like a nomination.
                let moves = use_candidate
                    || (path_before != Some(from) && session.ice.selected() == Some(from));
                // Evictions are applied only once the new address is pinned: a refused pin
                // must not cost the session an address it already had.
                let evicted: Vec<SocketAddr> = session.ice.take_evicted().collect();
                match newly_valid {
                    Some(addr) => self.actions.push_back(Action::Pin(PinRequest {
                        addr,
                        reply,
                        session: id,
                        arrival,
                        response,
                        use_candidate: moves,
                        evicted,
                    })),
                    None => {
                        self.finish_check(id, from, reply, arrival, response, moves, evicted);
                        self.arm_session(id);
                    }
                }
            }
            Answer::Reject { response, outcome } => {
                self.stats.stun(outcome).inc();
                trace!(thread = self.index, %from, ?outcome, decision = "binding_reject");
                self.reply(reply, response, self.table.by_addr(&from));
            }
            Answer::Drop { outcome } => {
                self.stats.stun(outcome).inc();
                match limited {
                    Some(reason) => {
                        self.stats.stun_replies_limited[reason as usize].inc();
                        trace!(thread = self.index, %from, ?outcome, ?reason, decision = "binding_reject_limited");
                    }
                    None => {
                        trace!(thread = self.index, %from, ?outcome, decision = "binding_drop")
                    }
                }
            }
        }
    }

    /// Pass an unauthenticated check to the thread that owns its room, within the
    /// handoff budgets of its claimed server ufrag and of this thread (see
    /// `reply_limit`): decided before the datagram is copied, so what a flood naming one
    /// session costs here is a walk and a bucket, and the owner's queue keeps room for
    /// other sessions' first checks.
    fn hand_off(
        &mut self,
        data: &[u8],
        owner: usize,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        now: Instant,
    ) {
        // `route` parsed it already and found a server ufrag; walked again here, on this
        // path only, rather than carried out of `route`.
        let view = ice::parse(data).ok();
        let Some(ufrag) = view.as_ref().and_then(|v| v.server_ufrag()) else {
            self.stats.stun(StunOutcome::Malformed).inc();
            return;
        };
        if let Err(reason) = self.reply_limit.allow_handoff(ufrag, now) {
            self.stats.handoffs_limited[reason as usize].inc();
            trace!(thread = self.index, owner, %from, ?reason, decision = "handoff_limited");
            return;
        }
        self.actions.push_back(Action::Handoff {
            owner,
            datagram: data.to_vec(),
            from,
            local_ip,
        });
    }

    /// The shell's answer to an [`Action::Pin`].
    pub fn handle_pin_result(
        &mut self,
        now: Instant,
        req: PinRequest,
        result: Result<Option<ConnId>, PinError>,
    ) {
        self.last_now = Some(now);
        let PinRequest {
            addr,
            reply,
            session: id,
            arrival,
            response,
            // The request carries whether the check moved the media path.
            use_candidate: moves,
            evicted,
        } = req;
        let result = match result {
            Ok(conn) if self.table.pin(id, addr, conn) => Ok(conn),
            Ok(conn) => {
                // The session went away or the address was taken meanwhile: give the
                // kernel side back.
                self.actions.push_back(Action::Unpin { addr, conn });
                Err(PinError::Conflict)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                self.stats.pins.inc();
                debug!(thread = self.index, client = %addr, mode = self.mode.as_str(), "flow pinned");
                self.finish_check(id, addr, reply, arrival, response, moves, evicted);
            }
            Err(PinError::Conflict) => {
                // The address is pinned to another session (here or on another thread).
                // Valid credentials for one session must never move another session's
                // flow (a spoofed source is enough to try), so refuse and stay silent.
                self.stats.pin_conflicts.inc();
                if let Some(s) = self.table.get_mut(id) {
                    s.ice.forget(addr);
                    // The evicted addresses are still pinned: keep tracking them.
                    s.ice.restore(evicted);
                }
                debug!(thread = self.index, from = %addr, "address pinned to another session; refused");
            }
            Err(e) => {
                // Without a pin the client's DTLS would be dropped; better no answer
                // than a success that leads nowhere. The client retries.
                self.stats.pin_failures.inc();
                if let Some(s) = self.table.get_mut(id) {
                    s.ice.forget(addr);
                    s.ice.restore(evicted);
                }
                warn!(thread = self.index, from = %addr, error = %e, "pinning the flow failed");
            }
        }
        self.arm_session(id);
    }

    /// A verified check whose source is pinned: apply evictions (the address the media
    /// path left among them), move the reply path if the check moved the media path,
    /// answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_check(
        &mut self,
        id: SessionId,
        from: SocketAddr,
        mut reply: ReplyPath,
        arrival: Arrival,
        response: Vec<u8>,
        moves: bool,
        evicted: Vec<SocketAddr>,
    ) {
        for addr in evicted {
            self.unpin(id, addr);
        }
        let Some(s) = self.table.get_mut(id) else {
            return;
        };
        // Answer on the client's connected socket once it has one.
        reply.conn = s.pin_of(from).and_then(|p| p.conn).or(match arrival {
            Arrival::Conn { conn, .. } => Some(conn),
            _ => None,
        });
        if stun::moves_media(moves, s.reply.is_some()) {
            s.reply = Some(reply);
        }
        self.stats.stun(StunOutcome::Success).inc();
        trace!(thread = self.index, %from, decision = "binding_success");
        self.reply(reply, response, Some(id));
    }

    pub(super) fn reply(
        &mut self,
        reply: ReplyPath,
        contents: Vec<u8>,
        session: Option<SessionId>,
    ) {
        self.transmits.push_back(Transmit {
            to: reply.to,
            src_ip: reply.local_ip,
            conn: reply.conn,
            contents,
            session,
            recycle: None,
        });
    }

    /// Count a datagram delivered to session `id`.
    pub(super) fn deliver(&mut self, id: SessionId, len: usize) {
        if let Some(session) = self.table.get_mut(id) {
            session.rx_datagrams += 1;
            session.rx_bytes += len as u64;
            self.stats.session_datagrams.inc();
        }
    }

    pub(super) fn unpin(&mut self, id: SessionId, addr: SocketAddr) {
        if let Some(Pin { addr, conn }) = self.table.unpin(id, addr) {
            self.stats.unpins.inc();
            debug!(thread = self.index, client = %addr, ?id, "flow unpinned");
            self.actions.push_back(Action::Unpin { addr, conn });
        }
    }

    pub(super) fn unpin_session(&mut self, id: SessionId) {
        let addrs: Vec<SocketAddr> = self
            .table
            .get(id)
            .map(|s| s.pinned.iter().map(|p| p.addr).collect())
            .unwrap_or_default();
        for addr in addrs {
            self.unpin(id, addr);
        }
    }
}
