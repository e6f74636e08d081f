//! `PUT /api/rooms/{room}/participants/{participant}/layer`: a viewer's simulcast layer,
//! changed live. The request names `high`, `mid`, `low` or `auto` (follow the viewer's
//! estimated bandwidth); the switch happens at the new layer's next keyframe.
use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    routing::put,
    Router,
};
use serde::Deserialize;

use super::{ask, parse_room, ApiError, ApiState};
use crate::{logic::Command, sfu::LayerRequest};

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route(
        "/api/rooms/{room}/participants/{participant}/layer",
        put(set_layer),
    )
}

#[derive(Deserialize)]
struct LayerBody {
    layer: String,
}

/// Parse a layer name as the API and WHEP's `?layer=` accept it.
pub fn parse_layer(text: &str) -> Result<LayerRequest, ApiError> {
    LayerRequest::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("layer {text:?} is not one of high, mid, low, auto"),
        )
    })
}

async fn set_layer(
    State(state): State<Arc<ApiState>>,
    Path((room, participant)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let room = parse_room(&room)?;
    let body: LayerBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"layer\": \"high|mid|low|auto\"}}: {e}"),
        )
    })?;
    let layer = parse_layer(&body.layer)?;
    let (_, found) = ask(&state, &room, |reply| Command::SetLayer {
        room: room.clone(),
        participant: participant.clone(),
        layer,
        reply,
    })
    .await?;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no subscriber {participant:?} in room {room}"),
        ))
    }
}
