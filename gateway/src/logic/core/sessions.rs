//! Session lifecycle: creation (REST and WHIP/WHEP), deletion, timeouts, room views.
use std::time::Instant;

use roomgate_common::ufrag::PARTICIPANT_PART_LEN;
use tracing::debug;

use crate::{
    ice::{self, Credentials, IceSession},
    media::Transport,
    room::RoomId,
    sdp::{self, Offer, Role},
    sfu::LayerRequest,
    stats::SessionEnd,
};

use super::{
    super::{
        admission::{self, Reservation},
        api::{CreateRefused, MediaCreated, ParticipantCreated, RoomView, VideoView},
        session::{MediaSession, Session, CONNECT_TIMEOUT},
        stats::add_forward_stats,
        table::SessionId,
    },
    ThreadCore, PWD_LEN, RESOURCE_KEY_LEN,
};

impl ThreadCore {
    /// A session's deadline passed (or moved: then nothing is due and it re-arms).
    pub(super) fn session_timeout(&mut self, id: SessionId, now: Instant) {
        let Some(s) = self.table.get_mut(id) else {
            return;
        };
        // Consent freshness (RFC 7675): a session with no valid check for 30 s loses its
        // pins; it stays listed (state "expired") until the backend deletes it.
        if s.ice.handle_timeout(now) {
            debug!(thread = self.index, ?id, "consent expired");
            self.stats.consent_expired.inc();
            if s.media.is_some() {
                // A WHIP/WHEP session has no backend to delete it: consent loss ends it.
                self.stats.media.sessions_timed_out.inc();
                self.remove_session(id, SessionEnd::ConsentExpired, now);
                return;
            }
            self.unpin_session(id);
        }
        let Some(s) = self.table.get_mut(id) else {
            return;
        };
        let never_connected = s.never_connected();
        if let Some(m) = s.media.as_mut() {
            let never_connected =
                never_connected && now.saturating_duration_since(m.created) >= CONNECT_TIMEOUT;
            let stalled = m.transport.handshake_expired(now);
            if never_connected || stalled {
                if m.transport.is_handshaking() {
                    self.stats.media.dtls_failed.inc();
                }
                debug!(thread = self.index, ?id, "media session timed out");
                self.stats.media.sessions_timed_out.inc();
                self.remove_session(id, SessionEnd::ConnectTimeout, now);
                return;
            }
            if m.transport.handle_timeout(now) {
                self.dtls_pending = true;
            }
        }
        self.arm_session(id);
    }

    /// Release a session: its pins, its forwarding state, its DTLS task, its room slot.
    pub(super) fn remove_session(&mut self, id: SessionId, why: SessionEnd, now: Instant) {
        self.unpin_session(id);
        let Some(session) = self.table.remove(id) else {
            return;
        };
        self.stats.sessions_ended[why as usize].inc();
        session.ice.names().for_each(crate::steering::live::remove);
        admission::release(&self.limits);
        if let Some(media) = &session.media {
            let gauge = match media.role {
                Role::Publisher => &self.stats.media.publishers,
                Role::Subscriber => &self.stats.media.subscribers,
            };
            gauge.set(gauge.get().saturating_sub(1));
            if let Some(room) = self.table.room_mut(session.room) {
                room.core.remove_member(media.member, now);
            }
            self.forward_outputs(session.room);
            self.arm_room(session.room);
        }
        // Dropping the session drops its DtlsHandle, which aborts the handshake task; the
        // abort takes effect when the runtime next runs.
        let room_key = session.room;
        drop(session);
        self.dtls_pending = true;
        if let Some(mut room) = self.table.remove_room_if_empty(room_key) {
            // Fold in what the room counted since the last publication before it goes.
            add_forward_stats(&self.stats, &room.core.take_stats());
        }
        self.update_gauges();
    }

    pub(super) fn room_view(&self, room: &RoomId, now: Instant) -> Option<RoomView> {
        let r = self.table.room(self.table.room_key(room)?)?;
        let mut sessions: Vec<&Session> = r
            .sessions
            .iter()
            .filter_map(|id| self.table.get(*id))
            .collect();
        sessions.sort_by(|a, b| a.ice.credentials().ufrag.cmp(&b.ice.credentials().ufrag));
        Some(RoomView {
            room: room.to_string(),
            thread: self.index,
            participants: sessions
                .into_iter()
                .map(|s| {
                    let mut view = s.view();
                    if let Some(m) = s.media.as_ref().filter(|m| m.role == Role::Subscriber) {
                        view.video = r
                            .core
                            .slot_views(m.member, now)
                            .into_iter()
                            .map(|v| VideoView {
                                mid: v.mid,
                                layer: v.layer,
                                requested: v.requested.as_str(),
                                estimate_bps: v.estimate_bps,
                                simulcast: v.simulcast,
                            })
                            .collect();
                    }
                    view
                })
                .collect(),
        })
    }

    pub(super) fn create_participant(
        &mut self,
        room: &RoomId,
        now: Instant,
    ) -> Result<(SessionId, ParticipantCreated), CreateRefused> {
        let in_room = self.in_room(room);
        let limits = self.limits.clone();
        let reservation = admission::admit(&limits, room, in_room)?;
        self.insert_session(room, None, reservation, now)
    }

    pub(super) fn in_room(&self, room: &RoomId) -> usize {
        self.table
            .room_key(room)
            .and_then(|k| self.table.room(k))
            .map_or(0, |r| r.sessions.len())
    }

    /// Allocate credentials and insert a session (already admitted).
    pub(super) fn insert_session(
        &mut self,
        room: &RoomId,
        media: Option<MediaSession>,
        reservation: Reservation<'_>,
        now: Instant,
    ) -> Result<(SessionId, ParticipantCreated), CreateRefused> {
        let room_part = room.ufrag_part();
        // Retry on the (astronomically unlikely) collision of an 8-char participant part.
        for _ in 0..8 {
            let participant = ice::random_ice_chars(PARTICIPANT_PART_LEN)?;
            let ufrag = format!("{room_part}{participant}");
            if self.table.contains_ufrag(&ufrag) {
                continue;
            }
            let pwd = ice::random_ice_chars(PWD_LEN)?;
            let credentials = Credentials {
                ufrag: ufrag.clone(),
                pwd: pwd.clone(),
            };
            if let Some(m) = &media {
                match m.role {
                    Role::Publisher => self.stats.media.publishers.add(1),
                    Role::Subscriber => self.stats.media.subscribers.add(1),
                }
            }
            let room_key = self.table.room_or_insert(room);
            self.stats.sessions_created.inc();
            let id = self.table.insert(Session {
                participant: participant.clone(),
                room: room_key,
                ice: IceSession::new(credentials, now),
                pinned: Vec::new(),
                reply: None,
                valid_checks: 0,
                rx_datagrams: 0,
                rx_bytes: 0,
                tx_datagrams: 0,
                media,
                armed: None,
            });
            // Synchronous, not an Action for the shell: the kernel must know the name
            // before the answer below reaches the client, or its first check is dropped
            // as naming no session.
            crate::steering::live::insert(&ufrag);
            reservation.keep();
            self.arm_session(id);
            self.update_gauges();
            debug!(thread = self.index, room = %room, participant, "participant created");
            return Ok((
                id,
                ParticipantCreated {
                    participant,
                    ufrag,
                    pwd,
                    thread: self.index,
                },
            ));
        }
        Err(CreateRefused::NoUniqueId)
    }

    /// WHIP/WHEP: negotiate first, so an offer we cannot serve leaves nothing behind.
    pub(super) fn create_media_session(
        &mut self,
        room: &RoomId,
        role: Role,
        offer: &Offer,
        publisher: Option<String>,
        layer: LayerRequest,
        now: Instant,
    ) -> Result<(SessionId, MediaCreated), CreateRefused> {
        let room_key = self.table.room_key(room);
        let prefer = room_key
            .and_then(|k| self.table.room(k))
            .map(|r| r.core.published_codecs())
            .unwrap_or_default();
        let negotiated = admission::negotiate(offer, role, &prefer)?;
        let watch = match publisher {
            None => None,
            Some(p) => {
                let ufrag = format!("{}{p}", room.ufrag_part());
                // Same thread, other room: "a" + "bXXXXXXX" names room "ab"'s session too.
                let member = self
                    .table
                    .by_ufrag(&ufrag)
                    .and_then(|id| self.table.get(id))
                    .filter(|s| Some(s.room) == room_key)
                    .and_then(|s| s.media.as_ref())
                    .filter(|m| m.role == Role::Publisher)
                    .map(|m| m.member)
                    .ok_or_else(|| CreateRefused::NoSuchPublisher {
                        publisher: p.clone(),
                        room: room.clone(),
                    })?;
                Some(member)
            }
        };
        let resource_key = ice::random_ice_chars(RESOURCE_KEY_LEN)?;
        let limits = self.limits.clone();
        let reservation = admission::admit(&limits, room, self.in_room(room))?;
        let member = self.next_member;
        self.next_member = self.next_member.wrapping_add(1).max(1);
        let media = MediaSession {
            member,
            role,
            resource_key: resource_key.clone(),
            created: now,
            transport: Transport::new(offer.fingerprint.value.clone()),
        };
        let (id, created) = self.insert_session(room, Some(media), reservation, now)?;
        let plan = admission::plan(negotiated, role, &created.participant);
        let answer = sdp::build_answer(
            offer,
            &plan.negotiated,
            &sdp::AnswerParams {
                ice_ufrag: &created.ufrag,
                ice_pwd: &created.pwd,
                fingerprint_sha256: &self.identity.fingerprint,
                candidates: &self.candidates,
                session_id: u64::from(member) << 32 | u64::from(admission::random_ssrc()),
                outbound: &plan.outbound,
            },
        );
        if let Some(key) = self.table.get(id).map(|s| s.room) {
            if let Some(r) = self.table.room_mut(key) {
                match role {
                    Role::Publisher => r.core.add_publisher(member, plan.tracks, now),
                    Role::Subscriber => r.core.add_subscriber(member, plan.slots, watch, now),
                }
                r.core.set_extensions(member, plan.extensions, now);
                if role == Role::Subscriber {
                    r.core.set_layer_request(member, layer, now);
                }
            }
            self.forward_outputs(key);
            self.arm_room(key);
        }
        debug!(thread = self.index, room = %room, participant = %created.participant, ?role, "media session created");
        Ok((
            id,
            MediaCreated {
                participant: created.participant,
                resource_key,
                answer,
                thread: self.index,
            },
        ))
    }

    /// A viewer's live layer request; `false` if no such subscriber is in the room.
    pub(super) fn set_layer(
        &mut self,
        room: &RoomId,
        participant: &str,
        layer: LayerRequest,
        now: Instant,
    ) -> bool {
        let ufrag = format!("{}{participant}", room.ufrag_part());
        let Some(room_key) = self.table.room_key(room) else {
            return false;
        };
        let Some(member) = self
            .table
            .by_ufrag(&ufrag)
            .and_then(|id| self.table.get(id))
            .filter(|s| s.room == room_key)
            .and_then(|s| s.media.as_ref())
            .filter(|m| m.role == Role::Subscriber)
            .map(|m| m.member)
        else {
            return false;
        };
        let Some(r) = self.table.room_mut(room_key) else {
            return false;
        };
        let found = r.core.set_layer_request(member, layer, now);
        self.forward_outputs(room_key);
        self.arm_room(room_key);
        found
    }

    pub(super) fn delete_participant(
        &mut self,
        room: &RoomId,
        participant: &str,
        resource: Option<(Role, String)>,
        now: Instant,
    ) -> bool {
        let ufrag = format!("{}{participant}", room.ufrag_part());
        let room_key = self.table.room_key(room);
        let Some(id) = self.table.by_ufrag(&ufrag) else {
            return false;
        };
        let Some(session) = self.table.get(id).filter(|s| Some(s.room) == room_key) else {
            return false;
        };
        if let Some((role, key)) = resource {
            let matches = session.media.as_ref().is_some_and(|m| {
                m.role == role && ice::constant_time_eq(m.resource_key.as_bytes(), key.as_bytes())
            });
            if !matches {
                return false;
            }
        }
        self.remove_session(id, SessionEnd::Deleted, now);
        debug!(thread = self.index, room = %room, participant, "participant deleted");
        true
    }
}
