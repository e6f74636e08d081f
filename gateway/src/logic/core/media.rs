//! The media path: DTLS records to the session's transport, SRTP unprotected in place
//! into the room's forwarding core, its output protected in the pooled buffers.
use std::{net::SocketAddr, time::Instant};

use roomgate_common::{classify, PacketClass};
use tracing::{debug, trace, warn};

use crate::{
    media::{DtlsEvent, DtlsInput, RecvError, SrtpKeys, TransmitError},
    sfu::Output,
    stats::SessionEnd,
};

use super::{
    super::table::{RoomKey, SessionId},
    ThreadCore, Transmit,
};

impl ThreadCore {
    /// DTLS, SRTP or SRTCP from a client address: the hot path.
    pub(super) fn on_session_datagram(&mut self, data: &mut [u8], from: SocketAddr, now: Instant) {
        let Some(id) = self.table.by_addr(&from) else {
            self.stats.no_session.inc();
            trace!(thread = self.index, %from, decision = "drop_no_session");
            return;
        };
        let Some((session, room)) = self.table.session_and_room(id) else {
            return;
        };
        session.rx_datagrams += 1;
        session.rx_bytes += data.len() as u64;
        // The path this arrives on is alive (checks alone would not say so between
        // consent checks): a check from elsewhere does not take media away from it.
        session.ice.heard(from, now);
        self.stats.session_datagrams.inc();
        trace!(thread = self.index, %from, participant = %session.participant, decision = "session");
        let room_key = session.room;
        let Some(media) = session.media.as_mut() else {
            return;
        };
        let member = media.member;
        let m = &self.stats.media;
        match classify(data[0]) {
            PacketClass::Dtls => {
                let input = media.transport.handle_dtls(
                    now,
                    data,
                    &self.dtls,
                    id.to_u64(),
                    self.local_addr,
                    from,
                );
                match input {
                    DtlsInput::Started => {
                        m.dtls_started.inc();
                        self.dtls_pending = true;
                        self.arm_session(id);
                    }
                    DtlsInput::Fed => self.dtls_pending = true,
                    DtlsInput::RepeatFlight => {
                        self.dtls_pending = true;
                        m.dtls_flights_repeated.inc();
                        let flight = media.transport.flight_to_repeat().to_vec();
                        if let Some(reply) = self.table.get(id).and_then(|s| s.reply) {
                            for datagram in flight {
                                self.reply(reply, datagram, Some(id));
                            }
                        }
                    }
                    DtlsInput::Dropped => {
                        m.dtls_records_dropped.inc();
                        trace!(thread = self.index, %from, decision = "drop_bad_dtls_record");
                    }
                }
            }
            PacketClass::Rtp => {
                // RFC 5761 4: RTCP packet types 192..=223 share the port with RTP.
                let rtcp = data.get(1).is_some_and(|pt| (192..=223).contains(pt));
                let plain_len = match media.transport.unprotect_in_place(data, rtcp) {
                    Ok(n) => n,
                    Err(RecvError::NoKeys) => {
                        m.srtp_before_keys.inc();
                        return;
                    }
                    Err(RecvError::Unprotect(failure)) => {
                        let counters = if rtcp {
                            &m.srtcp_unprotect_failures
                        } else {
                            &m.srtp_unprotect_failures
                        };
                        counters[failure as usize].inc();
                        trace!(thread = self.index, %from, ?failure, rtcp, decision = "drop_unprotect");
                        return;
                    }
                };
                let plain = &data[..plain_len];
                let result = if rtcp {
                    room.core.handle_rtcp(member, plain, now)
                } else {
                    room.core.handle_rtp(member, plain, now)
                };
                if let Err(e) = result {
                    trace!(thread = self.index, %from, error = %e, "forwarding refused a packet");
                }
                self.forward_outputs(room_key);
                // A packet can bring the room's next deadline forward (a gap's NACK and
                // its retries, a new publisher's feedback): the thread must wake for it,
                // not at whatever the room had armed before.
                self.arm_room(room_key);
            }
            _ => {}
        }
    }

    /// Protect what a room's forwarding core produced, in its pooled buffers, and queue
    /// it. No allocation and no string key: member -> session is an integer lookup.
    pub(super) fn forward_outputs(&mut self, key: RoomKey) {
        let mut parts = self.table.parts();
        let Some(room) = parts.rooms.get_mut(key) else {
            return;
        };
        while let Some(output) = room.core.poll_output() {
            let (to, mut packet, rtcp) = match output {
                Output::Rtp { to, packet } => (to, packet, false),
                Output::Rtcp { to, packet } => (to, packet, true),
            };
            let target = parts.sessions.by_member_mut(to).and_then(|(id, s)| {
                let reply = s.reply?;
                Some((id, reply, &mut s.media.as_mut()?.transport))
            });
            let Some((id, reply, transport)) = target else {
                room.core.recycle(packet);
                continue;
            };
            match transport.protect_in_place(&mut packet, rtcp) {
                Ok(()) => self.transmits.push_back(Transmit {
                    to: reply.to,
                    src_ip: reply.local_ip,
                    conn: reply.conn,
                    contents: packet,
                    session: Some(id),
                    recycle: Some(key),
                }),
                Err(TransmitError::NoKeys) => room.core.recycle(packet),
                Err(TransmitError::Protect(e)) => {
                    self.stats.media.srtp_protect_failures.inc();
                    trace!(thread = self.index, error = %e, "SRTP protect failed");
                    room.core.recycle(packet);
                }
            }
        }
    }

    /// Run the DTLS runtime and act on what the handshakes produced.
    pub(super) fn pump_dtls(&mut self, now: Instant) {
        self.dtls_pending = false;
        self.dtls.drive();
        while let Some(event) = self.dtls.poll_event() {
            match event {
                DtlsEvent::Transmit { id, datagram } => {
                    let id = SessionId::from_u64(id);
                    let Some(s) = self.table.get_mut(id) else {
                        continue;
                    };
                    if let Some(m) = s.media.as_mut() {
                        m.transport.handle_flight_sent(now, &datagram);
                    }
                    if let Some(reply) = s.reply {
                        self.reply(reply, datagram, Some(id));
                    }
                }
                DtlsEvent::Connected { id, keys } => {
                    self.on_dtls_connected(SessionId::from_u64(id), &keys, now)
                }
                DtlsEvent::Failed { id, reason } => {
                    let id = SessionId::from_u64(id);
                    if self.table.get(id).is_some() {
                        self.stats.media.dtls_failed.inc();
                        debug!(thread = self.index, ?id, %reason, "DTLS handshake failed; session ends");
                        self.remove_session(id, SessionEnd::DtlsFailed, now);
                    }
                }
                DtlsEvent::Closed { id } => {
                    let id = SessionId::from_u64(id);
                    if self.table.get(id).is_some() {
                        self.stats.media.dtls_closed.inc();
                        debug!(
                            thread = self.index,
                            ?id,
                            "DTLS closed by the client; session ends"
                        );
                        self.remove_session(id, SessionEnd::DtlsClosed, now);
                    }
                }
            }
        }
    }

    pub(super) fn on_dtls_connected(&mut self, id: SessionId, keys: &SrtpKeys, now: Instant) {
        let Some((session, room)) = self.table.session_and_room(id) else {
            return;
        };
        let room_key = session.room;
        let Some(media) = session.media.as_mut() else {
            return;
        };
        match media.transport.handle_keys(now, keys) {
            Ok(None) => {}
            Ok(Some(took)) => {
                let m = &self.stats.media;
                m.dtls_completed.inc();
                m.dtls_handshake.observe(took.as_millis() as u64);
                debug!(thread = self.index, ?id, profile = ?keys.profile, "DTLS-SRTP established");
                room.core.set_ready(media.member, now);
                self.forward_outputs(room_key);
                self.arm_room(room_key);
            }
            Err(e) => {
                self.stats.media.dtls_failed.inc();
                warn!(thread = self.index, ?id, error = %e, "SRTP setup failed; session ends");
                self.remove_session(id, SessionEnd::DtlsFailed, now);
            }
        }
    }
}
