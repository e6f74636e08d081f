//! The RTP header extensions roomgate understands (RFC 8285), named by the URI an
//! `a=extmap` line carries. Anything else is not negotiated and is stripped before
//! forwarding, so a subscriber never sees an ID it did not agree to.

use super::{parse::syntax, Direction, SdpError};

/// One header extension roomgate negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtensionKind {
    /// RFC 9143 `sdes:mid`: binds unsignaled SSRCs to an m-line.
    Mid,
    /// RFC 8852 `sdes:rtp-stream-id`: the simulcast layer (RID) of a packet.
    RtpStreamId,
    /// RFC 8852 `sdes:repaired-rtp-stream-id`: the RID an RTX stream repairs.
    RepairedRtpStreamId,
    /// draft-holmer-rmcat-transport-wide-cc-extensions-01: transport-wide sequence number.
    TransportWideCc,
    /// abs-send-time: 6.18 fixed-point seconds of the sender's clock.
    AbsSendTime,
    /// RFC 6464 client-to-mixer audio level, passed through.
    AudioLevel,
    /// 3GPP TS 26.114 coordination of video orientation, passed through.
    VideoOrientation,
}

impl ExtensionKind {
    pub const ALL: [ExtensionKind; 7] = [
        ExtensionKind::Mid,
        ExtensionKind::RtpStreamId,
        ExtensionKind::RepairedRtpStreamId,
        ExtensionKind::TransportWideCc,
        ExtensionKind::AbsSendTime,
        ExtensionKind::AudioLevel,
        ExtensionKind::VideoOrientation,
    ];

    pub fn uri(self) -> &'static str {
        match self {
            ExtensionKind::Mid => "urn:ietf:params:rtp-hdrext:sdes:mid",
            ExtensionKind::RtpStreamId => "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            ExtensionKind::RepairedRtpStreamId => {
                "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
            }
            ExtensionKind::TransportWideCc => {
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            }
            ExtensionKind::AbsSendTime => {
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            }
            ExtensionKind::AudioLevel => "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            ExtensionKind::VideoOrientation => "urn:3gpp:video-orientation",
        }
    }

    /// The kind an `a=extmap` URI names; `None` for extensions roomgate does not handle.
    pub fn from_uri(uri: &str) -> Option<ExtensionKind> {
        Self::ALL.into_iter().find(|k| k.uri() == uri.trim())
    }

    /// Small dense index, for per-kind arrays on the hot path.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One `a=extmap` line (RFC 8285 §5): `a=extmap:<id>[/<direction>] <uri> [<attributes>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtMap {
    /// 1..=14, or up to 255 where `a=extmap-allow-mixed` applies (checked by the parser
    /// once the whole section is read, as that attribute may follow the extmap lines).
    pub id: u8,
    /// The direction written after the ID, from the offerer's point of view; `None`
    /// means the m-line's direction.
    pub direction: Option<Direction>,
    /// The URI as written.
    pub uri: String,
}

impl ExtMap {
    /// The extension this line names, if roomgate handles it.
    pub fn kind(&self) -> Option<ExtensionKind> {
        ExtensionKind::from_uri(&self.uri)
    }

    /// Parses the value of an `a=extmap` line. Only the syntax and the absolute ID range
    /// (1..=255) are checked here; the one-byte limit depends on the whole section.
    pub(super) fn parse(value: &str, line: usize) -> Result<ExtMap, SdpError> {
        let mut words = value.split_whitespace();
        let (Some(id_dir), Some(uri)) = (words.next(), words.next()) else {
            return Err(syntax(line, "a=extmap needs <id>[/<direction>] <uri>"));
        };
        // Extension attributes (RFC 8285 §5) are URI-specific and none of roomgate's
        // extensions takes one, so they are not kept.
        let (id, direction) = match id_dir.split_once('/') {
            Some((id, dir)) => {
                let direction = Direction::from_attribute(dir).ok_or_else(|| {
                    syntax(
                        line,
                        format!("a=extmap direction {dir:?} is not a direction"),
                    )
                })?;
                (id, Some(direction))
            }
            None => (id_dir, None),
        };
        // RFC 8285 writes the ID as 1*5DIGIT; Rust's parse would also take a sign.
        let number = (!id.is_empty() && id.len() <= 5 && id.bytes().all(|b| b.is_ascii_digit()))
            .then(|| id.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| syntax(line, format!("a=extmap ID {id:?} is not a number")))?;
        let id = u8::try_from(number)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| syntax(line, format!("a=extmap ID {number} is not in 1..=255")))?;
        if !is_uri(uri) {
            return Err(syntax(line, format!("a=extmap URI {uri:?} is not a URI")));
        }
        Ok(ExtMap {
            id,
            direction,
            uri: uri.to_owned(),
        })
    }
}

/// A URI as RFC 3986 allows it, loosely: a scheme, a colon, and visible ASCII. The URI is
/// echoed into the answer, so this keeps it one token of printable characters.
fn is_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut scheme_chars = scheme.bytes();
    scheme_chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for k in ExtensionKind::ALL {
            assert_eq!(ExtensionKind::from_uri(k.uri()), Some(k));
            assert_eq!(ExtensionKind::ALL[k.index()], k);
        }
        assert_eq!(ExtensionKind::from_uri("urn:example:unknown"), None);
    }
}
