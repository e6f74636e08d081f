//! Sans-IO SDP for WHIP/WHEP: parse an offer, negotiate what roomgate can serve, write
//! the answer. No I/O, no clock; plain strings in and out.
//!
//! roomgate answers as an ICE-lite, DTLS-passive, BUNDLE + rtcp-mux only endpoint and
//! forwards media without transcoding, so negotiation is: pick one offered codec per
//! m-line that the room can pass through (Opus; VP8, else H.264 packetization-mode 1).
//!
//! The three steps are separate so the HTTP layer can map errors to status codes
//! ([`SdpError::http_status`]) and the logic thread can act on [`Negotiated`] without
//! touching text:
//! [`parse_offer`] -> [`negotiate`] -> [`build_answer`].

mod answer;
mod extmap;
mod negotiate;
mod parse;
mod simulcast;
#[cfg(test)]
mod tests;

use std::fmt;

pub use answer::{build_answer, AnswerParams, OutboundTrack};
pub use extmap::{ExtMap, ExtensionKind};
pub use negotiate::{negotiate, Negotiated, NegotiatedMedia, MAX_SIMULCAST_LAYERS};
pub use parse::{parse_offer, Fingerprint, Offer, OfferedMedia, Setup};
pub use simulcast::{Rid, RidDirection, Simulcast, SimulcastStream};

/// Largest offer accepted, in bytes. A Chrome offer with audio, video and a data channel
/// is about 6 KiB; the bound keeps a hostile body from costing more than a few
/// microseconds to reject. The HTTP layer can use it as its body limit.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Longest line accepted, in bytes (without the line terminator).
pub const MAX_LINE_BYTES: usize = 4096;
/// Most m-lines accepted in one offer.
pub const MAX_MEDIA: usize = 32;
/// Most payload formats accepted on one m-line.
pub const MAX_CODECS: usize = 64;

/// Audio or video m-line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    /// The m-line media type (`audio`, `video`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `a=sendrecv` etc., from the point of view of the side that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Inverse of [`Direction::as_str`].
    pub fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// Whether the side that wrote this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that wrote this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One payload format of an m-line (`a=rtpmap`, `a=fmtp`, `a=rtcp-fb`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    /// Encoding name as written in the offer (`opus`, `VP8`, `H264`).
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    pub fmtp: Option<String>,
    /// `a=rtcp-fb` values for this payload type (`nack`, `nack pli`, `ccm fir`, ...).
    pub rtcp_fb: Vec<String>,
}

/// H.264 `profile-level-id` when the fmtp omits it (RFC 6184 §8.1: Baseline, level 3.1).
const H264_DEFAULT_PROFILE_LEVEL_ID: &str = "42001f";

impl Codec {
    /// Whether RTP packetized with `self` can be forwarded unchanged to a receiver that
    /// negotiated `other` (payload types may differ; the SFU rewrites those).
    ///
    /// For H.264 only `profile_idc` and the constraint flags must agree: a decoder of a
    /// level decodes every lower level, and WebRTC endpoints offer
    /// `level-asymmetry-allowed`, so the level byte is not compared.
    pub fn same_format(&self, other: &Codec) -> bool {
        if !self.name.eq_ignore_ascii_case(&other.name) || self.clock_rate != other.clock_rate {
            return false;
        }
        // RFC 7587 §7: opus is always written `/2`, whatever the stream carries.
        let is_opus = self.name.eq_ignore_ascii_case("opus");
        if !is_opus && self.channels.unwrap_or(1) != other.channels.unwrap_or(1) {
            return false;
        }
        if self.name.eq_ignore_ascii_case("H264") {
            return self.h264_packetization_mode() == other.h264_packetization_mode()
                && self.h264_profile() == other.h264_profile();
        }
        true
    }

    /// The media kind this encoding implies, or `None` for encodings that can appear on
    /// either kind (rtx, red, FEC) or are unknown.
    pub fn kind_hint(&self) -> Option<MediaKind> {
        const AUDIO: &[&str] = &[
            "opus",
            "PCMU",
            "PCMA",
            "G722",
            "ISAC",
            "ILBC",
            "CN",
            "telephone-event",
            "L16",
        ];
        const VIDEO: &[&str] = &["VP8", "VP9", "H264", "H265", "AV1", "AV1X"];
        if AUDIO.iter().any(|n| self.name.eq_ignore_ascii_case(n)) {
            Some(MediaKind::Audio)
        } else if VIDEO.iter().any(|n| self.name.eq_ignore_ascii_case(n)) {
            Some(MediaKind::Video)
        } else {
            None
        }
    }

    /// Formats that only make sense next to a primary codec (retransmission, redundancy,
    /// FEC, comfort noise, DTMF): roomgate never picks one as an m-line's codec.
    pub fn is_auxiliary(&self) -> bool {
        const AUX: &[&str] = &[
            "rtx",
            "red",
            "ulpfec",
            "flexfec",
            "flexfec-03",
            "CN",
            "telephone-event",
        ];
        AUX.iter().any(|n| self.name.eq_ignore_ascii_case(n))
    }

    /// Value of one `key=value` parameter of the fmtp line (key case-insensitive).
    pub fn fmtp_param(&self, key: &str) -> Option<&str> {
        self.fmtp.as_deref()?.split(';').find_map(|param| {
            let (k, v) = param.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }

    /// The value of an `a=rtpmap` line after the payload type (`opus/48000/2`).
    pub fn rtpmap(&self) -> String {
        match self.channels {
            Some(ch) => format!("{}/{}/{}", self.name, self.clock_rate, ch),
            None => format!("{}/{}", self.name, self.clock_rate),
        }
    }

    /// `packetization-mode`, as written (RFC 6184 default `0`).
    fn h264_packetization_mode(&self) -> &str {
        self.fmtp_param("packetization-mode").unwrap_or("0")
    }

    /// `profile_idc` and `profile-iop` of `profile-level-id`, lowercased (`42e0`).
    fn h264_profile(&self) -> String {
        let plid = self
            .fmtp_param("profile-level-id")
            .unwrap_or(H264_DEFAULT_PROFILE_LEVEL_ID);
        plid.get(..4).unwrap_or(plid).to_ascii_lowercase()
    }
}

/// What the WHIP/WHEP client wants from this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// WHIP: the client sends media into the room.
    Publisher,
    /// WHEP: the client receives the room's media.
    Subscriber,
}

/// Why an offer cannot be answered. [`SdpError::http_status`] splits them into malformed
/// (400) and well-formed but asking for something roomgate does not do (406).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("SDP line {line} is {len} bytes, more than the {max} accepted")]
    LineTooLong { line: usize, len: usize, max: usize },
    #[error("SDP line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("SDP line {line}: more than {max} {what}")]
    Limit {
        line: usize,
        what: &'static str,
        max: usize,
    },
    #[error("SDP has no {what}")]
    Missing { what: &'static str },
    #[error("SDP line {line}: a=mid:{mid} is used by two m-lines")]
    DuplicateMid { line: usize, mid: String },

    #[error("offer has no a=group:BUNDLE; roomgate requires BUNDLE")]
    NoBundle,
    #[error("m-line mid {mid:?} is not in the offer's BUNDLE group; roomgate requires BUNDLE")]
    NotBundled { mid: String },
    #[error("m-line mid {mid:?} has no a=rtcp-mux; roomgate requires rtcp-mux")]
    NoRtcpMux { mid: String },
    #[error("m-line mid {mid:?} uses protocol {protocol}; roomgate requires UDP/TLS/RTP/SAVPF")]
    UnsupportedProtocol { mid: String, protocol: String },
    #[error("offer has a=setup:{setup}; roomgate is DTLS passive and needs active or actpass")]
    UnsupportedSetup { setup: Setup },
    #[error("offer has no sha-256 fingerprint (got {algorithm}); roomgate verifies sha-256")]
    NoSha256Fingerprint { algorithm: String },
    #[error(
        "no m-line offers a codec roomgate can forward (opus, VP8, H264 packetization-mode=1)"
    )]
    NoSharedCodec,
}

impl SdpError {
    /// 400 for SDP that is malformed or over a bound; 406 for SDP that is well-formed but
    /// asks for something roomgate does not serve.
    pub fn http_status(&self) -> u16 {
        match self {
            SdpError::TooLarge { .. }
            | SdpError::LineTooLong { .. }
            | SdpError::Syntax { .. }
            | SdpError::Limit { .. }
            | SdpError::Missing { .. }
            | SdpError::DuplicateMid { .. } => 400,
            SdpError::NoBundle
            | SdpError::NotBundled { .. }
            | SdpError::NoRtcpMux { .. }
            | SdpError::UnsupportedProtocol { .. }
            | SdpError::UnsupportedSetup { .. }
            | SdpError::NoSha256Fingerprint { .. }
            | SdpError::NoSharedCodec => 406,
        }
    }
}
