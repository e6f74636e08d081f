//! WHIP/WHEP PATCH on the room's thread (RFC 9725 §4.3): trickled candidates are
//! acknowledged, a fragment with new client credentials restarts ICE.
//!
//! A restart gives the session new server credentials. Its new ufrag keeps the room part,
//! so the kernel steers its checks to this same thread, and gets a fresh random
//! participant-independent part (the fixed-length part of today's layout). The session
//! keeps its participant id: the ufrag it was created with stays one of its names in the
//! table, so URLs, `?publisher=` and the REST API find it as before. The DTLS association
//! and SRTP contexts are the session's transport, which a restart does not touch; the
//! old addresses' pins go once a check under the new credentials has taken the media
//! path (see `IceSession::restart`).
use roomgate_common::ufrag::PARTICIPANT_PART_LEN;
use tracing::debug;

use crate::{
    ice::{
        self,
        patch::{entity_tag, IfMatch, PatchRefused, Patched},
        sdpfrag::{self, Fragment},
        Credentials,
    },
    room::RoomId,
    sdp::Role,
};

use super::{super::table::SessionId, ThreadCore, PWD_LEN};

impl ThreadCore {
    /// Apply a PATCH to the session resource `(role, key)` of `participant` in `room`.
    /// Refusals change nothing.
    pub(super) fn patch_ice(
        &mut self,
        room: &RoomId,
        participant: &str,
        resource: (Role, String),
        if_match: Option<IfMatch>,
        fragment: &Fragment,
    ) -> Result<Patched, PatchRefused> {
        let id = self
            .resource(room, participant, &resource)
            .ok_or(PatchRefused::NoSuchResource)?;
        let session = self.table.get(id).ok_or(PatchRefused::NoSuchResource)?;
        let etag = entity_tag(session.ice.credentials());
        if if_match.is_some_and(|m| !m.matches(&etag)) {
            return Err(PatchRefused::PreconditionFailed);
        }
        let Some(client) = &fragment.credentials else {
            self.stats.ice_trickles.inc();
            return Ok(Patched::Trickle { etag });
        };
        if let Some(named) = self.table.by_ufrag(&client.ufrag) {
            let room = self
                .table
                .get(named)
                .and_then(|s| self.table.room(s.room))
                .map_or_else(String::new, |r| r.id.to_string());
            return Err(PatchRefused::ServerUfrag {
                ufrag: client.ufrag.clone(),
                room,
            });
        }
        if session.ice.remote_ufrag() == Some(client.ufrag.as_str()) {
            self.stats.ice_trickles.inc();
            return Ok(Patched::Trickle { etag });
        }
        // The session's room, which `resource` checked is `room`: the new ufrag must
        // name the room the session lives in, whatever a request says.
        let room_part = room.ufrag_part();
        for _ in 0..8 {
            let credentials = Credentials {
                ufrag: format!(
                    "{room_part}{}",
                    ice::random_ice_chars(PARTICIPANT_PART_LEN)?
                ),
                pwd: ice::random_ice_chars(PWD_LEN)?,
            };
            let answer = sdpfrag::restart_answer(&credentials, &self.candidates);
            let etag = entity_tag(&credentials);
            let names: Vec<String> = self
                .table
                .get(id)
                .map_or(Vec::new(), |s| s.ice.names().map(str::to_owned).collect());
            if self
                .table
                .restart_ice(id, credentials, client.ufrag.clone())
            {
                if let Some(s) = self.table.get(id) {
                    crate::steering::live::replace(&names, s.ice.names());
                }
                debug!(thread = self.index, room = %room, participant, "ICE restart");
                self.stats.ice_restarts.inc();
                return Ok(Patched::Restarted { etag, answer });
            }
        }
        Err(PatchRefused::NoUniqueUfrag)
    }

    /// The client's ufrag from its offer: a later PATCH carrying it again is trickle.
    pub(super) fn set_remote_ufrag(&mut self, id: SessionId, ufrag: &str) {
        if let Some(s) = self.table.get_mut(id) {
            s.ice.set_remote_ufrag(ufrag.to_owned());
        }
    }

    /// The WHIP/WHEP session `participant` of `room` with this role and resource key.
    fn resource(
        &self,
        room: &RoomId,
        participant: &str,
        (role, key): &(Role, String),
    ) -> Option<SessionId> {
        let room_key = self.table.room_key(room)?;
        // By the name the session was created with; in another room's session of this
        // thread ("a" + "bXXXXXXX" is also "ab" + "XXXXXXXX") it is no resource of `room`.
        let id = self
            .table
            .by_ufrag(&format!("{}{participant}", room.ufrag_part()))?;
        let session = self.table.get(id).filter(|s| s.room == room_key)?;
        let media = session.media.as_ref()?;
        (media.role == *role
            && ice::constant_time_eq(media.resource_key.as_bytes(), key.as_bytes()))
        .then_some(id)
    }
}
