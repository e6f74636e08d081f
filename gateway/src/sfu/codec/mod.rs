//! The few codec-specific facts an SFU needs to switch a subscriber between simulcast
//! layers: where a decoder can start (keyframes), and, for VP8, the frame counters in the
//! payload descriptor that must stay continuous across a switch.
//!
//! Everything takes the RTP payload (after the RTP header, CSRCs, extension and before
//! padding) as plain bytes, never allocates, and never panics on any input: malformed
//! payloads are simply not keyframes.
//!
//! - [`vp8`]: payload descriptor view, keyframe detection, in-place rewriting.
//! - [`h264`]: packetization modes and keyframe detection.
//! - [`Vp8Continuity`]: per-subscriber-slot PictureID / TL0PICIDX mapping.

pub mod h264;
mod picture_id;
pub mod vp8;

pub use picture_id::Vp8Continuity;

/// The video codecs whose payload the SFU understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    Vp8,
    H264,
    /// Any other encoding (audio, VP9, AV1, ...): no keyframe detection, so a layer
    /// switch cannot be timed and must not be attempted.
    Unknown,
}

impl CodecKind {
    /// From the SDP encoding name (`a=rtpmap`), which is case-insensitive (RFC 4855 §3).
    pub fn from_name(name: &str) -> Self {
        if name.eq_ignore_ascii_case("VP8") {
            CodecKind::Vp8
        } else if name.eq_ignore_ascii_case("H264") {
            CodecKind::H264
        } else {
            CodecKind::Unknown
        }
    }
}

impl From<&crate::sdp::Codec> for CodecKind {
    fn from(codec: &crate::sdp::Codec) -> Self {
        CodecKind::from_name(&codec.name)
    }
}

/// Whether a decoder of `codec` can start at this RTP payload. `false` for
/// [`CodecKind::Unknown`].
pub fn keyframe(codec: CodecKind, payload: &[u8]) -> bool {
    match codec {
        CodecKind::Vp8 => vp8::is_keyframe(payload),
        CodecKind::H264 => h264::is_keyframe(payload),
        CodecKind::Unknown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_from_sdp_name() {
        assert_eq!(CodecKind::from_name("VP8"), CodecKind::Vp8);
        assert_eq!(CodecKind::from_name("vp8"), CodecKind::Vp8);
        assert_eq!(CodecKind::from_name("H264"), CodecKind::H264);
        assert_eq!(CodecKind::from_name("h264"), CodecKind::H264);
        for other in ["VP9", "AV1", "opus", "H265", "rtx", ""] {
            assert_eq!(CodecKind::from_name(other), CodecKind::Unknown, "{other}");
        }
        let codec = crate::sdp::Codec {
            payload_type: 102,
            name: "H264".into(),
            clock_rate: 90_000,
            channels: None,
            fmtp: Some("packetization-mode=1;profile-level-id=42e01f".into()),
            rtcp_fb: vec![],
        };
        assert_eq!(CodecKind::from(&codec), CodecKind::H264);
    }

    #[test]
    fn dispatch_uses_the_codecs_own_rules() {
        // VP8 key frame start: X, S, PID 0, I with a 15-bit id, then P = 0.
        let vp8_key = [0x90, 0x80, 0x81, 0x00, 0x50, 0x00, 0x00];
        // H.264 IDR as a single NAL unit.
        let idr = [0x65, 0x88, 0x84, 0x00];
        assert!(keyframe(CodecKind::Vp8, &vp8_key));
        assert!(keyframe(CodecKind::H264, &idr));
        // Each is nothing in the other's format (0x90 is NAL type 16; 0x65 has S = 0).
        assert!(!keyframe(CodecKind::H264, &vp8_key));
        assert!(!keyframe(CodecKind::Vp8, &idr));
        assert!(!keyframe(CodecKind::Unknown, &vp8_key));
        assert!(!keyframe(CodecKind::Unknown, &idr));
        for kind in [CodecKind::Vp8, CodecKind::H264, CodecKind::Unknown] {
            assert!(!keyframe(kind, &[]));
        }
    }
}
