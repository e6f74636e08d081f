//! The Janus-specific signalling of the load generator: videoroom rooms, a publisher that
//! offers (join, configure with JSEP offer, Janus answers) and subscribers that answer
//! (join as subscriber, Janus offers, start with our JSEP answer).
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    api::{Event, Session},
    client::{connect, DtlsRole, Endpoint, JanusPeer},
    sdp, JanusError,
};
use crate::webrtc::{Answer, Kind, Offer, Role};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected publisher and what its packets must carry.
pub struct Publisher {
    pub peer: JanusPeer,
    pub feed: u64,
    pub audio: (u8, u32),
    pub video: (u8, u32),
}

pub fn create_room(session: &Session, room: u64) -> Result<(), JanusError> {
    let handle = session.attach()?;
    let data = session.request(
        handle,
        json!({
            "request": "create",
            "room": room,
            "publishers": 1,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "notify_joining": false,
        }),
    )?;
    if data["videoroom"] != "created" {
        return Err(JanusError::Api(format!("create room {room}: {data}")));
    }
    Ok(())
}

fn jsep_sdp(e: &Event, want: &str) -> Result<Answer, JanusError> {
    let jsep = e
        .jsep
        .as_ref()
        .ok_or_else(|| JanusError::Sdp(format!("no JSEP {want} in {}", e.data)))?;
    if jsep["type"] != want {
        return Err(JanusError::Sdp(format!("expected a JSEP {want}: {jsep}")));
    }
    let sdp = jsep["sdp"]
        .as_str()
        .ok_or_else(|| JanusError::Sdp(format!("JSEP without sdp: {jsep}")))?;
    Answer::parse(sdp).map_err(|e| JanusError::Sdp(format!("{e}:\n{sdp}")))
}

fn expect(data: &Value, key: &str, value: &str, what: &str) -> Result<(), JanusError> {
    if data[key] == value {
        Ok(())
    } else {
        Err(JanusError::Api(format!("{what}: {data}")))
    }
}

pub fn publish(session: &Session, room: u64) -> Result<Publisher, JanusError> {
    let handle = session.attach()?;
    let joined = session.message(
        handle,
        json!({"request": "join", "ptype": "publisher", "room": room, "display": "bench"}),
        None,
        EVENT_TIMEOUT,
    )?;
    expect(&joined.data, "videoroom", "joined", "publisher join")?;
    let feed = joined.data["id"]
        .as_u64()
        .ok_or_else(|| JanusError::Api(format!("joined without id: {}", joined.data)))?;

    let ep = Endpoint::bind(super::host_ip()?)?;
    let mut offer = Offer::new(Role::Publisher);
    offer.ice_ufrag = ep.ufrag.clone();
    offer.ice_pwd = ep.pwd.clone();
    offer.fingerprint = ep.fingerprint.clone();
    offer.extra_media_lines = sdp::candidate_lines(ep.local);
    let configured = session.message(
        handle,
        json!({"request": "configure", "audio": true, "video": true}),
        Some(json!({"type": "offer", "sdp": offer.to_sdp()})),
        EVENT_TIMEOUT,
    )?;
    expect(&configured.data, "configured", "ok", "publisher configure")?;
    let answer = jsep_sdp(&configured, "answer")?;
    session.trickle_completed(handle)?;
    let pt = |kind: Kind| {
        answer
            .pt(kind)
            .ok_or_else(|| JanusError::Sdp(format!("answer rejected {kind:?}:\n{}", answer.raw)))
    };
    let (audio_pt, video_pt) = (pt(Kind::Audio)?, pt(Kind::Video)?);
    let role = DtlsRole::against(&answer.setup)?;
    let peer = connect(ep, &answer, role, CONNECT_TIMEOUT)?;
    Ok(Publisher {
        peer,
        feed,
        audio: (audio_pt, offer.audio_ssrc),
        video: (video_pt, offer.video_ssrc),
    })
}

pub fn subscribe(session: &Session, room: u64, feed: u64) -> Result<JanusPeer, JanusError> {
    let handle = session.attach()?;
    let attached = session.message(
        handle,
        json!({"request": "join", "ptype": "subscriber", "room": room,
               "streams": [{"feed": feed}]}),
        None,
        EVENT_TIMEOUT,
    )?;
    expect(&attached.data, "videoroom", "attached", "subscriber join")?;
    let offer = jsep_sdp(&attached, "offer")?;
    let ep = Endpoint::bind(super::host_ip()?)?;
    let answer = sdp::subscriber_answer(&offer, &ep.ufrag, &ep.pwd, &ep.fingerprint, ep.local)
        .map_err(JanusError::Sdp)?;
    let started = session.message(
        handle,
        json!({"request": "start"}),
        Some(json!({"type": "answer", "sdp": answer})),
        EVENT_TIMEOUT,
    )?;
    expect(&started.data, "started", "ok", "subscriber start")?;
    session.trickle_completed(handle)?;
    connect(
        ep,
        &offer,
        DtlsRole::against(&offer.setup)?,
        CONNECT_TIMEOUT,
    )
}
