//! Admission (room and gateway limits) and the WHIP/WHEP negotiation that decides what a
//! new media session publishes or receives, before anything is created.
use std::sync::atomic::Ordering;

use crate::{
    room::RoomId,
    sdp::{self, Codec, Offer, Role},
    sfu::{rtp_ext::ExtensionIds, PublishedTrack, SubscribedSlot},
};

use super::api::{CreateRefused, Limits};

/// A place for one more session, counted in `sessions_total`. Dropped without
/// [`Reservation::keep`], it gives the place back, so no error path can leak it.
pub struct Reservation<'a> {
    limits: &'a Limits,
    kept: bool,
}

impl Reservation<'_> {
    /// The session exists now; it gives the place back when it is released.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Reserve a place for one more session in `room`, which holds `in_room` already.
pub fn admit<'a>(
    limits: &'a Limits,
    room: &RoomId,
    in_room: usize,
) -> Result<Reservation<'a>, CreateRefused> {
    if in_room >= limits.max_participants_per_room {
        return Err(CreateRefused::RoomFull {
            room: room.clone(),
            max: limits.max_participants_per_room,
        });
    }
    let total = limits.sessions_total.fetch_add(1, Ordering::AcqRel);
    let reservation = Reservation {
        limits,
        kept: false,
    };
    if total >= limits.max_sessions {
        return Err(CreateRefused::GatewayFull {
            max: limits.max_sessions,
        });
    }
    Ok(reservation)
}

/// Give back the place of a released session.
pub fn release(limits: &Limits) {
    limits.sessions_total.fetch_sub(1, Ordering::AcqRel);
}

/// What a negotiated offer gives the room, and what the answer announces.
pub struct MediaPlan {
    pub negotiated: sdp::Negotiated,
    pub tracks: Vec<PublishedTrack>,
    pub slots: Vec<SubscribedSlot>,
    /// Per m-line: the stream roomgate sends on it (subscribers), for the answer.
    pub outbound: Vec<Option<sdp::OutboundTrack>>,
    /// Header-extension IDs of the session's packets. BUNDLE makes them one map for
    /// the whole transport (RFC 8843 9.2 forbids one ID meaning two things).
    pub extensions: ExtensionIds,
}

/// Negotiate `offer` against the room's published codecs (`prefer`).
pub fn negotiate(
    offer: &Offer,
    role: Role,
    prefer: &[Codec],
) -> Result<sdp::Negotiated, CreateRefused> {
    Ok(sdp::negotiate(offer, role, prefer)?)
}

/// The tracks a publisher sends or the slots a subscriber receives, per accepted m-line.
pub fn plan(negotiated: sdp::Negotiated, role: Role, participant: &str) -> MediaPlan {
    let mut outbound = Vec::with_capacity(negotiated.media.len());
    let mut tracks = Vec::new();
    let mut slots = Vec::new();
    for m in &negotiated.media {
        let mut out = None;
        if let (true, Some(kind), Some(codec)) = (m.accepted, m.kind, &m.codec) {
            match (role, m.direction) {
                (Role::Publisher, sdp::Direction::RecvOnly) => tracks.push(PublishedTrack {
                    kind,
                    // Simulcast layers announce no SSRCs; they are bound by RID.
                    ssrc: m
                        .rids
                        .is_empty()
                        .then(|| m.ssrcs.first().copied())
                        .flatten(),
                    codec: codec.clone(),
                    mid: m.mid.clone(),
                    rids: m.rids.clone(),
                    rtx_payload_type: m.rtx_payload_type,
                    rtx_ssrc: m.rtx_ssrc,
                }),
                (Role::Subscriber, sdp::Direction::SendOnly) => {
                    let ssrc = random_ssrc();
                    let rtx = m.rtx_payload_type.map(|pt| (pt, random_ssrc()));
                    slots.push(SubscribedSlot {
                        kind,
                        out_ssrc: ssrc,
                        codec: codec.clone(),
                        mid: m.mid.clone(),
                        rtx,
                    });
                    out = Some(sdp::OutboundTrack {
                        ssrc,
                        rtx_ssrc: rtx.map(|(_, ssrc)| ssrc),
                        cname: format!("roomgate-{participant}"),
                        stream_id: format!("roomgate-{participant}"),
                        track_id: format!("{participant}-{}", m.mid),
                    });
                }
                _ => {}
            }
        }
        outbound.push(out);
    }
    let extensions = session_extensions(&negotiated);
    MediaPlan {
        extensions,
        negotiated,
        tracks,
        slots,
        outbound,
    }
}

/// The union of the accepted m-lines' extension maps. An offer that maps one ID to two
/// extensions across m-lines gets none: guessing which one a packet means would corrupt
/// whatever is passed through.
fn session_extensions(negotiated: &sdp::Negotiated) -> ExtensionIds {
    let mut pairs: Vec<(u8, sdp::ExtensionKind)> = Vec::new();
    for m in negotiated.accepted() {
        for &pair in &m.extensions {
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
    }
    match ExtensionIds::new(&pairs) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::debug!(error = %e, "conflicting extension IDs across m-lines; none used");
            ExtensionIds::default()
        }
    }
}

pub fn random_ssrc() -> u32 {
    let mut b = [0u8; 4];
    // A failed OS RNG only costs SSRC uniqueness, which the answer scopes per session.
    let _ = getrandom::fill(&mut b);
    u32::from_be_bytes(b).max(1)
}
