//! WHIP/WHEP PATCH (RFC 9725 §4.3) on a session resource: an RFC 8840
//! `application/trickle-ice-sdpfrag` body with trickled candidates (204) or new client
//! credentials, which restart ICE (200 with roomgate's new credentials).
//!
//! The fragment is validated here, so a malformed one is refused before any thread is
//! asked; the room's thread checks `If-Match` against the session's entity-tag and applies
//! the fragment. Every refusal leaves the session as it was.
use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use super::super::{ask, parse_room, ApiError, ApiState};
use crate::{
    ice::{
        patch::{IfMatch, PatchRefused, Patched},
        sdpfrag,
    },
    logic::Command,
    sdp::Role,
};

pub(super) async fn patch_session(
    state: &ApiState,
    room: &str,
    participant: String,
    resource: (Role, String),
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let room = parse_room(room)?;
    super::require_content_type(headers, sdpfrag::CONTENT_TYPE)?;
    if body.len() > sdpfrag::MAX_FRAGMENT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "SDP fragment larger than {} bytes",
                sdpfrag::MAX_FRAGMENT_BYTES
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "SDP fragment is not UTF-8"))?;
    let fragment = sdpfrag::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("SDP fragment: {e}")))?;
    let if_match = if_match(headers)?;
    let (_, result) = ask(state, &room, |reply| Command::PatchIce {
        room: room.clone(),
        participant: participant.clone(),
        resource,
        if_match,
        fragment: Box::new(fragment),
        reply,
    })
    .await?;
    match result {
        Ok(Patched::Trickle { etag }) => {
            Ok((StatusCode::NO_CONTENT, [(header::ETAG, quoted(&etag))]).into_response())
        }
        Ok(Patched::Restarted { etag, answer }) => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, sdpfrag::CONTENT_TYPE.to_owned()),
                (header::ETAG, quoted(&etag)),
            ],
            answer,
        )
            .into_response()),
        Err(refused) => {
            let status = match refused {
                PatchRefused::NoSuchResource => StatusCode::NOT_FOUND,
                PatchRefused::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
                PatchRefused::ServerUfrag { .. } => StatusCode::BAD_REQUEST,
                PatchRefused::Random(_) | PatchRefused::NoUniqueUfrag => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let message = match refused {
                PatchRefused::NoSuchResource => {
                    format!("no session {participant:?} in room {room}")
                }
                other => other.to_string(),
            };
            Err(ApiError::new(status, message))
        }
    }
}

/// The `ETag` of a new session: its entity-tag is the server ufrag of its SDP answer.
pub(super) fn answer_etag(answer: &str) -> Option<HeaderValue> {
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))?;
    HeaderValue::from_str(&quoted(ufrag)).ok()
}

fn quoted(opaque: &str) -> String {
    format!("\"{opaque}\"")
}

/// `If-Match` (RFC 9110 §13.1.1): absent, `*`, or a list of entity-tags (every header
/// line counts). A malformed value is a 400: guessing could apply a stale restart.
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let mut tags = Vec::new();
    let mut seen = false;
    for value in headers.get_all(header::IF_MATCH) {
        seen = true;
        let text = value.to_str().map_err(|_| bad_if_match("not ASCII"))?;
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Some(IfMatch::Any));
            }
            let (weak, tag) = match item.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let opaque = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.contains('"'))
                .ok_or_else(|| bad_if_match(&format!("{item:?} is not an entity-tag")))?;
            // Weak tags never match under the strong comparison If-Match uses.
            if !weak {
                tags.push(opaque.to_owned());
            }
        }
    }
    Ok(seen.then_some(IfMatch::Tags(tags)))
}

fn bad_if_match(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("malformed If-Match: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(values: &[&str]) -> Option<IfMatch> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        if_match(&h).unwrap()
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parsed(&[]), None);
        assert_eq!(parsed(&["*"]), Some(IfMatch::Any));
        assert_eq!(
            parsed(&["\"a\", W/\"b\"", "\"c\""]),
            Some(IfMatch::Tags(vec!["a".into(), "c".into()]))
        );
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_static("abc"));
        assert!(if_match(&h).is_err());
    }

    #[test]
    fn a_new_sessions_etag_is_its_answers_ufrag() {
        let answer =
            "v=0\r\na=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:roomAbCd1234\r\n";
        assert_eq!(
            answer_etag(answer).unwrap(),
            HeaderValue::from_static("\"roomAbCd1234\"")
        );
        assert_eq!(answer_etag("v=0\r\n"), None);
    }
}
