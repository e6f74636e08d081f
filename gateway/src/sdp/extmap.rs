//! The RTP header extensions roomgate understands (RFC 8285), named by the URI an
//! `a=extmap` line carries. Anything else is not negotiated and is stripped before
//! forwarding, so a subscriber never sees an ID it did not agree to.

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
