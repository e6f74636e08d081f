//! Cluster mode on the HTTP side: send each signaling request to the node that owns its
//! room, `GET /api/cluster` and `POST /api/drain`.
//!
//! REST calls are redirected, not proxied, like WHIP/WHEP: the owner must answer with
//! its own ICE candidates, and a redirect keeps every later request off this node.
use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::{cluster::Route, room::RoomId};

/// The room a signaling path is about, and whether the request may create it.
fn room_of(method: &Method, path: &str) -> Option<(RoomId, bool)> {
    let mut parts = path.trim_start_matches('/').split('/');
    let (first, second) = (parts.next()?, parts.next()?);
    let (raw, rest): (&str, Vec<&str>) = match first {
        "whip" | "whep" => (second, parts.collect()),
        "api" if second == "rooms" => (parts.next()?, parts.collect()),
        _ => return None,
    };
    // Decoded as axum's `Path` will decode it for the handler: `r%31` is room `r1`, and
    // routing on the raw text would let it past the owner check.
    let room = RoomId::parse(&percent_decode(raw)?).ok()?;
    let creates = method == Method::POST
        && match first {
            "api" => rest == ["participants"],
            _ => rest.is_empty(),
        };
    Some((room, creates))
}

/// `%XX` escapes decoded; `None` for a malformed escape or non-UTF-8 result (axum
/// refuses those too, so nothing reaches a handler).
fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Middleware on the signaling routes: redirect (307) or refuse (503) what this node
/// must not handle; everything else passes through unchanged.
pub async fn route(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let Some(cluster) = &state.cluster else {
        return next.run(request).await;
    };
    let Some((room, creates)) = room_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // An offer that is not SDP gets its 415 here, before it can claim a room for nobody.
    let offer_path = !request.uri().path().starts_with("/api/");
    if creates && offer_path && !super::signaling::is_sdp(request.headers()) {
        return next.run(request).await;
    }
    let route = if creates {
        cluster.route_create(&room).await
    } else {
        cluster.route_existing(&room).await
    };
    match route {
        Route::Local => next.run(request).await,
        Route::Redirect { owner, url } => {
            let target = format!(
                "{url}{}",
                request
                    .uri()
                    .path_and_query()
                    .map_or(request.uri().path(), |pq| pq.as_str())
            );
            cluster.metrics.redirect();
            let mut response = (
                // RFC 9725 4.6: 307 keeps the method and the offer.
                StatusCode::TEMPORARY_REDIRECT,
                Json(json!({ "owner": owner, "location": target })),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&target) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Route::Refuse { message, .. } => {
            let mut response =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

pub async fn get_cluster(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(not_clustered_404)?;
    Ok(Json(cluster.view_json().await).into_response())
}

pub async fn post_drain(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "drain needs cluster mode (--cluster-redis): a lone node just stops",
        )
    })?;
    let left = cluster.drain();
    let (sessions, rooms) = state.threads.iter().fold((0, 0), |(s, r), h| {
        (s + h.stats.sessions.get(), r + h.stats.rooms.get())
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "state": "draining",
            "deadline_secs": left.as_secs(),
            "rooms": rooms,
            "sessions": sessions,
        })),
    )
        .into_response())
}

fn not_clustered_404() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not in cluster mode (start with --cluster-redis)",
    )
}

/// The `Location` of a created WHIP/WHEP resource: absolute on this node in cluster
/// mode, so PATCH and DELETE reach the owner even when the POST was redirected.
pub fn resource_location(state: &ApiState, path: String) -> String {
    match &state.cluster {
        Some(cluster) => format!("{}{path}", cluster.config.advertise_http),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signaling_paths_name_their_room() {
        let post = Method::POST;
        let room = |m: &Method, p: &str| room_of(m, p).map(|(r, c)| (r.as_str().to_owned(), c));
        assert_eq!(room(&post, "/whip/r1"), Some(("r1".into(), true)));
        assert_eq!(room(&post, "/whep/r1"), Some(("r1".into(), true)));
        assert_eq!(
            room(&post, "/api/rooms/r1/participants"),
            Some(("r1".into(), true))
        );
        assert_eq!(
            room(&Method::GET, "/api/rooms/r1"),
            Some(("r1".into(), false))
        );
        assert_eq!(
            room(&Method::DELETE, "/whip/r1/key/p"),
            Some(("r1".into(), false))
        );
        assert_eq!(
            room(&Method::PUT, "/api/rooms/r1/participants/p/layer"),
            Some(("r1".into(), false))
        );
        assert_eq!(room(&post, "/api/drain"), None);
        // Escapes are decoded as the handler's `Path` will decode them.
        assert_eq!(room(&post, "/whip/r%31"), Some(("r1".into(), true)));
        assert_eq!(
            room(&Method::GET, "/api/rooms/%72%31"),
            Some(("r1".into(), false))
        );
        assert_eq!(room(&post, "/whip/r%3"), None);
        assert_eq!(room(&post, "/whip/r%zz"), None);
        assert_eq!(room(&post, "/whip/bad room"), None);
        assert_eq!(room(&Method::GET, "/metrics"), None);
    }
}
