//! The control plane: HTTP/JSON API for backends, talking to logic threads by message.
//!
//! It never touches a logic thread's data: commands go through the thread's bounded
//! queue and answers come back on a oneshot; status reads the threads' counters.
mod cluster;
mod layer;
mod metrics;
mod signaling;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde_json::{json, Value};

use crate::{
    logic::{Command, ThreadHandle},
    room::RoomId,
    steering::Steering,
};

/// How long an API call waits for a logic thread before answering 503.
const THREAD_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ApiState {
    pub threads: Vec<ThreadHandle>,
    pub steering: Arc<Steering>,
    pub public_ip: IpAddr,
    pub udp_port: u16,
    pub udp_addr: String,
    /// `--auth-token`: required as a bearer token on signaling endpoints when set.
    pub auth_token: Option<String>,
    /// What the kernel granted for the media sockets' buffers.
    pub buffers: Option<crate::net::EffectiveBuffers>,
    /// Cluster mode (`--cluster-redis`): where rooms live across nodes.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    // Signaling (WHIP, WHEP, rooms and participants) is what the bearer token guards;
    // health, status, metrics and the demo page stay open for probes and browsers.
    let signaling = Router::new()
        .route("/api/rooms/{room}", get(get_room))
        .route("/api/rooms/{room}/participants", post(create_participant))
        .route(
            "/api/rooms/{room}/participants/{participant}",
            delete(delete_participant),
        )
        .merge(layer::routes())
        .merge(signaling::routes())
        .route("/api/drain", post(cluster::post_drain))
        // Room names are what the token protects, and /api/cluster lists them.
        .route("/api/cluster", get(cluster::get_cluster))
        // Outermost runs first: the token is checked before ownership is looked up.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::route,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            signaling::require_token,
        ));
    Router::new()
        .route("/", get(demo_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route("/metrics", get(metrics_text))
        .merge(signaling)
        .layer(axum::middleware::from_fn(signaling::cors))
        .with_state(state)
}

/// The demo page: plain HTML + JS, compiled in so the binary is all a deployment needs.
async fn demo_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../static/index.html"))
}

/// Only /metrics, for `--metrics-addr`.
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) fn parse_room(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid room id {raw:?}: {e}"),
        )
    })
}

/// Send a command to the room's owner and wait for its answer.
pub(crate) async fn ask<T>(
    state: &ApiState,
    room: &RoomId,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
) -> Result<(usize, T), ApiError> {
    let thread = room.owner(state.threads.len());
    let handle = state
        .threads
        .get(thread)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no such thread"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle.send(make(tx)).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("thread {thread}: {e}"),
        )
    })?;
    match tokio::time::timeout(THREAD_REPLY_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok((thread, v)),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("thread {thread} stopped"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("thread {thread} did not answer in time"),
        )),
    }
}

async fn create_participant(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let (thread, created) = ask(&state, &room, |reply| Command::CreateParticipant {
        room: room.clone(),
        reply,
    })
    .await?;
    let created =
        created.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let body = json!({
        "room": room.as_str(),
        "participant": created.participant,
        "thread": thread,
        "ice": { "ufrag": created.ufrag, "pwd": created.pwd, "lite": true },
        "candidates": [{ "ip": state.public_ip.to_string(), "port": state.udp_port, "protocol": "udp" }],
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn get_room(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let room = parse_room(&room)?;
    let (_, view) = ask(&state, &room, |reply| Command::GetRoom {
        room: room.clone(),
        reply,
    })
    .await?;
    let view = view.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("room {room} has no participants"),
        )
    })?;
    serde_json::to_value(view)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn delete_participant(
    State(state): State<Arc<ApiState>>,
    Path((room, participant)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = parse_room(&room)?;
    let (_, found) = ask(&state, &room, |reply| Command::DeleteParticipant {
        room: room.clone(),
        participant: participant.clone(),
        resource: None,
        reply,
    })
    .await?;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no participant {participant:?} in room {room}"),
        ))
    }
}

async fn metrics_text(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let body = metrics::render(&state)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

async fn status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let threads: Vec<Value> = state
        .threads
        .iter()
        .enumerate()
        .map(|(index, h)| {
            let s = &h.stats;
            let stun: serde_json::Map<String, Value> = crate::ice::StunOutcome::ALL
                .iter()
                .map(|o| (o.name().to_owned(), json!(s.stun(*o).get())))
                .collect();
            json!({
                "index": index,
                "rooms": s.rooms.get(),
                "sessions": s.sessions.get(),
                "sessions_created": s.sessions_created.get(),
                "sessions_ended": crate::stats::SessionEnd::ALL
                    .iter()
                    .map(|why| (why.label().to_owned(), json!(s.sessions_ended[*why as usize].get())))
                    .collect::<serde_json::Map<String, Value>>(),
                "rx_datagrams": s.rx_datagrams.get(),
                "rx_bytes": s.rx_bytes.get(),
                "tx_datagrams": s.tx_datagrams.get(),
                "tx_bytes": s.tx_bytes.get(),
                "tx_gso_sends": s.tx_gso_sends.get(),
                "tx_gso_datagrams": s.tx_gso_datagrams.get(),
                "tx_gso_fallbacks": s.tx_gso_fallbacks.get(),
                "handoffs": s.handoffs.get(),
                "handoffs_received": s.handoffs_received.get(),
                "handoff_failures": s.handoff_failures.get(),
                "handoffs_limited": limited(&s.handoffs_limited),
                "stun_error_replies": s.stun_error_replies.get(),
                "stun_replies_limited": limited(&s.stun_replies_limited),
                "misdelivered": s.misdelivered.get(),
                "no_session": s.no_session.get(),
                "empty": s.empty.get(),
                "oversized": s.oversized.get(),
                "unknown_type": s.unknown_type.get(),
                "session_datagrams": s.session_datagrams.get(),
                "pins": s.pins.get(),
                "pin_failures": s.pin_failures.get(),
                "pin_conflicts": s.pin_conflicts.get(),
                "unpins": s.unpins.get(),
                "unpin_failures": s.unpin_failures.get(),
                "consent_expired": s.consent_expired.get(),
                "connected_sockets": s.connected_sockets.get(),
                "send_errors": crate::net::SendErrno::ALL
                    .iter()
                    .map(|e| (e.name().to_owned(), json!(s.send_errors[*e as usize].get())))
                    .collect::<serde_json::Map<String, Value>>(),
                "socket_receive_drops": crate::stats::SOCKET_KINDS
                    .iter()
                    .zip(&s.socket_receive_drops)
                    .map(|(k, c)| ((*k).to_owned(), json!(c.get())))
                    .collect::<serde_json::Map<String, Value>>(),
                "datagram_panics": s.datagram_panics.get(),
                "stun": stun,
                "media": media_status(&s.media),
            })
        })
        .collect();
    let ebpf = state.steering.ebpf_counters().map(|counters| {
        let mut m: serde_json::Map<String, Value> = counters
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        m.insert(
            "flows_capacity".into(),
            json!(state.steering.flows_capacity()),
        );
        Value::Object(m)
    });
    Json(json!({
        "mode": state.steering.mode.as_str(),
        "fallback_reason": state.steering.fallback_reason,
        "udp_addr": state.udp_addr,
        "public_ip": state.public_ip.to_string(),
        "socket_buffers": state.buffers,
        "threads": threads,
        "ebpf": ebpf,
    }))
}

/// A thread's DTLS/SRTP/forwarding counters for `/api/status`.
/// A rate limit's withheld counts keyed by the budget that ran out.
fn limited(counts: &[crate::stats::Counter; crate::stats::REPLY_LIMIT_REASONS.len()]) -> Value {
    crate::stats::REPLY_LIMIT_REASONS
        .iter()
        .zip(counts)
        .map(|(reason, c)| ((*reason).to_owned(), json!(c.get())))
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

fn media_status(m: &crate::stats::MediaStats) -> Value {
    use crate::media::UnprotectFailure;
    let by_reason = |counters: &[crate::stats::Counter; UnprotectFailure::ALL.len()]| {
        let map: serde_json::Map<String, Value> = UnprotectFailure::ALL
            .iter()
            .map(|f| (f.name().to_owned(), json!(counters[*f as usize].get())))
            .collect();
        Value::Object(map)
    };
    json!({
        "dtls_started": m.dtls_started.get(),
        "dtls_completed": m.dtls_completed.get(),
        "dtls_failed": m.dtls_failed.get(),
        "dtls_closed": m.dtls_closed.get(),
        "dtls_records_dropped": m.dtls_records_dropped.get(),
        "srtp_unprotect_failures": by_reason(&m.srtp_unprotect_failures),
        "srtcp_unprotect_failures": by_reason(&m.srtcp_unprotect_failures),
        "srtp_before_keys": m.srtp_before_keys.get(),
        "srtp_protect_failures": m.srtp_protect_failures.get(),
        "rtp_received": m.rtp_received.get(),
        "rtp_forwarded": m.rtp_forwarded.get(),
        "rtp_unknown_ssrc": m.rtp_unknown_ssrc.get(),
        "rtp_malformed": m.rtp_malformed.get(),
        "rtp_payload_type_mismatch": m.rtp_payload_type_mismatch.get(),
        "rtp_dropped_before_bind": m.rtp_dropped_before_bind.get(),
        "rtcp_unknown_ssrc": m.rtcp_unknown_ssrc.get(),
        "rtcp_received": m.rtcp_received.get(),
        "rtcp_malformed": m.rtcp_malformed.get(),
        "nacks_received": m.nacks_received.get(),
        "retransmissions": m.retransmissions.get(),
        "nack_misses": m.nack_misses.get(),
        "plis_received": m.plis_received.get(),
        "firs_received": m.firs_received.get(),
        "plis_sent": m.plis_sent.get(),
        "plis_rate_limited": m.plis_rate_limited.get(),
        "receiver_reports_sent": m.receiver_reports_sent.get(),
        "sender_reports_forwarded": m.sender_reports_forwarded.get(),
        "codec_mismatch": m.codec_mismatch.get(),
        "unknown_member": m.unknown_member.get(),
        "sessions_timed_out": m.sessions_timed_out.get(),
        "publishers": m.publishers.get(),
        "subscribers": m.subscribers.get(),
    })
}
