//! WHIP (RFC 9725) and WHEP: SDP offer in, SDP answer out, one HTTP resource per session.
//!
//! The offer is parsed here, so malformed SDP is refused before any thread is asked;
//! negotiation happens on the room's thread, which knows the codecs the room already
//! forwards. Either way a refused offer leaves nothing behind.
//!
//! PATCH on a session resource carries trickled candidates or an ICE restart
//! ([`patch`]); the resource's `ETag` names its ICE session.
mod patch;

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::rejection::BytesRejection,
    extract::{Path, Query, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::Deserialize;

use super::{ask, parse_room, ApiError, ApiState};
use crate::{
    logic::{Command, CreateRefused},
    sdp::{self, Role},
    sfu::LayerRequest,
};

/// Largest offer accepted; real offers are a few KiB.
const MAX_OFFER_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        // Refuse big bodies before buffering them (axum's default would take 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OFFER_BYTES))
        // Session resources: `{key}` is a per-session secret, `{participant}` the public id
        // (last, so clients can read it off the Location).
        .route(
            "/whip/{room}/{key}/{participant}",
            axum::routing::delete(delete_whip)
                .patch(patch_whip)
                .layer(fragment_limit()),
        )
        .route(
            "/whep/{room}/{key}/{participant}",
            axum::routing::delete(delete_whep)
                .patch(patch_whep)
                .layer(fragment_limit()),
        )
}

fn fragment_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(crate::ice::sdpfrag::MAX_FRAGMENT_BYTES)
}

#[derive(Debug, Deserialize)]
pub struct WhepQuery {
    publisher: Option<String>,
    /// `high`, `mid`, `low` or `auto`: the simulcast layer this viewer receives.
    layer: Option<String>,
}

async fn whip(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), format!("request body: {e}")))?;
    create(
        &state,
        &room,
        Role::Publisher,
        None,
        LayerRequest::Auto,
        &headers,
        &body,
    )
    .await
}

async fn whep(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    Query(query): Query<WhepQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), format!("request body: {e}")))?;
    let layer = match query.layer.as_deref() {
        Some(text) => super::layer::parse_layer(text)?,
        None => LayerRequest::Auto,
    };
    create(
        &state,
        &room,
        Role::Subscriber,
        query.publisher,
        layer,
        &headers,
        &body,
    )
    .await
}

async fn create(
    state: &ApiState,
    room: &str,
    role: Role,
    publisher: Option<String>,
    layer: LayerRequest,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let room = parse_room(room)?;
    require_content_type(headers, "application/sdp")?;
    if body.len() > MAX_OFFER_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("SDP offer larger than {MAX_OFFER_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "SDP offer is not UTF-8"))?;
    let offer = sdp::parse_offer(text).map_err(|e| {
        ApiError::new(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            format!("SDP offer: {e}"),
        )
    })?;
    let (_, created) = ask(state, &room, |reply| Command::CreateMediaSession {
        room: room.clone(),
        role,
        offer: Box::new(offer),
        publisher,
        layer,
        reply,
    })
    .await?;
    let created = created.map_err(|r| ApiError::new(refused_status(&r), r.to_string()))?;
    let kind = match role {
        Role::Publisher => "whip",
        Role::Subscriber => "whep",
    };
    let location = super::cluster::resource_location(
        state,
        format!(
            "/{kind}/{room}/{}/{}",
            created.resource_key, created.participant
        ),
    );
    let etag = patch::answer_etag(&created.answer);
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        created.answer,
    )
        .into_response();
    // RFC 9725 §4.3.1: the entity-tag a later PATCH's If-Match names.
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// The status of a refused WHIP/WHEP offer: the offer's own fault (400/406), a named
/// publisher that is not there (404), or no capacity (503).
fn refused_status(r: &CreateRefused) -> StatusCode {
    match r {
        CreateRefused::Offer(e) => {
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        }
        CreateRefused::NoSuchPublisher { .. } => StatusCode::NOT_FOUND,
        CreateRefused::RoomFull { .. }
        | CreateRefused::GatewayFull { .. }
        | CreateRefused::Random(_)
        | CreateRefused::NoUniqueId => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn delete_whip(
    State(state): State<Arc<ApiState>>,
    Path((room, key, participant)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_session(&state, &room, participant, (Role::Publisher, key)).await
}

async fn delete_whep(
    State(state): State<Arc<ApiState>>,
    Path((room, key, participant)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_session(&state, &room, participant, (Role::Subscriber, key)).await
}

/// RFC 9725 4.3: DELETE on the session URL ends the session and answers 200 OK.
async fn delete_session(
    state: &ApiState,
    room: &str,
    participant: String,
    resource: (Role, String),
) -> Result<StatusCode, ApiError> {
    let room = parse_room(room)?;
    let (_, found) = ask(state, &room, |reply| Command::DeleteParticipant {
        room: room.clone(),
        participant: participant.clone(),
        resource: Some(resource),
        reply,
    })
    .await?;
    if found {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {participant:?} in room {room}"),
        ))
    }
}

async fn patch_whip(
    State(state): State<Arc<ApiState>>,
    Path((room, key, participant)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), format!("request body: {e}")))?;
    let resource = (Role::Publisher, key);
    patch::patch_session(&state, &room, participant, resource, &headers, &body).await
}

async fn patch_whep(
    State(state): State<Arc<ApiState>>,
    Path((room, key, participant)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), format!("request body: {e}")))?;
    let resource = (Role::Subscriber, key);
    patch::patch_session(&state, &room, participant, resource, &headers, &body).await
}

/// Whether the request's media type (parameters aside) is `application/sdp`.
pub(super) fn is_sdp(headers: &HeaderMap) -> bool {
    media_type_is(headers, "application/sdp")
}

fn media_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(expected))
}

/// 415 unless the request's media type (parameters aside) is `expected`.
fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if media_type_is(headers, expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {expected}, not {content_type:?}"),
        ))
    }
}

/// Bearer-token check for signaling routes (`--auth-token`).
pub async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.auth_token else {
        return next.run(request).await;
    };
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if presented.is_some_and(|p| crate::ice::constant_time_eq(p.as_bytes(), expected.as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({ "error": "missing or wrong bearer token" })),
    )
        .into_response()
}

/// CORS for every route: WHIP/WHEP players are often served from another origin.
/// Preflights are answered here, before routing (and before the token check: browsers
/// never send credentials on a preflight).
pub async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, If-Match"),
        );
        r.headers_mut().insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        // RFC 9725 4.1: advertise the accepted offer type.
        r.headers_mut()
            .insert("accept-post", HeaderValue::from_static("application/sdp"));
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag"),
    );
    response
}

#[cfg(test)]
mod tests {
    use crate::ice::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
