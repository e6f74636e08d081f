//! What a WHIP/WHEP PATCH (RFC 9725 §4.3) asks of a session's ICE state and what came of
//! it. The room's logic thread applies it; the control plane turns it into HTTP.
use super::{Credentials, RandomError};

/// A session's entity-tag (RFC 9725 §4.3.1: it identifies the ICE session) as an
/// opaque-tag without its quotes: roomgate's current server ufrag, which is public (it
/// is in every SDP answer), unique among live sessions and new with each ICE restart.
pub fn entity_tag(credentials: &Credentials) -> String {
    credentials.ufrag.clone()
}

/// `If-Match` (RFC 9110 §13.1.1): `*`, or the strong entity-tags listed (opaque-tags
/// without their quotes; weak ones are left out, they never match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    /// Whether the precondition holds for a resource whose entity-tag is `etag`.
    pub fn matches(&self, etag: &str) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => tags.iter().any(|t| t == etag),
        }
    }
}

/// What a PATCH did. `etag` is the session's entity-tag afterwards (an opaque-tag,
/// without quotes): it names the ICE session, so it changes with each restart.
#[derive(Clone, Debug)]
pub enum Patched {
    /// Trickled candidates or end-of-candidates: roomgate is ICE-lite and needs none.
    Trickle { etag: String },
    /// ICE restart: roomgate's new credentials and candidates, as an SDP fragment.
    Restarted { etag: String, answer: String },
}

/// Why a PATCH changed nothing. `control/` picks the status.
#[derive(Debug, thiserror::Error)]
pub enum PatchRefused {
    #[error("no such session resource")]
    NoSuchResource,
    #[error("If-Match does not match the session's current entity-tag")]
    PreconditionFailed,
    /// The fragment's `a=ice-ufrag` is roomgate's own: a server ufrag of a session in
    /// `room` (this one's, or one of another room). A fragment carries the client's
    /// credentials; a server ufrag names a room through its room part, and a restart
    /// must never move a session to another room's ufrag.
    #[error("the fragment's a=ice-ufrag {ufrag:?} is a roomgate ICE ufrag of room {room}, not the client's; a fragment carries the client's credentials")]
    ServerUfrag { ufrag: String, room: String },
    #[error("{0}")]
    Random(#[from] RandomError),
    #[error("could not allocate a unique ICE ufrag")]
    NoUniqueUfrag,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_star_matches_anything_and_tags_match_exactly() {
        assert!(IfMatch::Any.matches("roomAbCd1234"));
        let tags = IfMatch::Tags(vec!["x".into(), "roomAbCd1234".into()]);
        assert!(tags.matches("roomAbCd1234"));
        assert!(!tags.matches("roomAbCd12345"));
        assert!(!IfMatch::Tags(Vec::new()).matches(""));
    }
}
