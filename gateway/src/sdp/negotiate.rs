//! Deciding, per offered m-line, whether roomgate takes it, in which direction and with
//! which single codec. Pure function of the offer, the role and the room's codecs.

use super::{Codec, Direction, MediaKind, Offer, OfferedMedia, Role, SdpError, Setup};

/// The outcome for one offered m-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub mid: String,
    pub kind: Option<MediaKind>,
    /// `false`: port 0 in the answer, not in BUNDLE, no media flows.
    pub accepted: bool,
    /// The chosen offered codec (the offerer's payload type and fmtp), its `rtcp_fb`
    /// reduced to the feedback roomgate implements. `Some` exactly when `accepted`.
    pub codec: Option<Codec>,
    /// The direction written in the answer (roomgate's point of view).
    pub direction: Direction,
    /// The offer's media SSRCs for this m-line (what a publisher will send); empty for
    /// rejected m-lines.
    pub ssrcs: Vec<u32>,
}

/// One [`NegotiatedMedia`] per offered m-line, in offer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub media: Vec<NegotiatedMedia>,
}

impl Negotiated {
    /// The accepted m-lines, in offer order.
    pub fn accepted(&self) -> impl Iterator<Item = &NegotiatedMedia> {
        self.media.iter().filter(|m| m.accepted)
    }
}

/// Protocols roomgate's DTLS-SRTP transport serves (RFC 5764, RFC 8829 §5.1.2).
const PROTOCOLS: &[&str] = &["UDP/TLS/RTP/SAVPF", "RTP/SAVPF"];

/// RTCP feedback roomgate acts on: it answers NACK from its retransmission buffer and
/// forwards PLI/FIR to the publisher. REMB and transport-cc would promise bandwidth
/// estimation it does not run.
const SUPPORTED_RTCP_FB: &[&str] = &["nack", "nack pli", "ccm fir"];

/// Decides what roomgate answers to `offer`.
///
/// `prefer` lists the codecs the room already forwards (its publishers' codecs): an
/// offered codec of the same format wins over the default preference, so a subscriber
/// gets what publishers send and a second publisher sends what subscribers already get.
///
/// A missing sha-256 fingerprint is a 406, not a 400: the SDP is well-formed, roomgate
/// just only verifies certificates with sha-256 (the hash every WebRTC stack offers).
pub fn negotiate(offer: &Offer, role: Role, prefer: &[Codec]) -> Result<Negotiated, SdpError> {
    if offer.bundle.is_empty() {
        return Err(SdpError::NoBundle);
    }
    // roomgate is always the DTLS server; `holdconn` asks for no connection at all.
    if !matches!(offer.setup, Setup::Active | Setup::ActPass) {
        return Err(SdpError::UnsupportedSetup { setup: offer.setup });
    }
    if offer.fingerprint.algorithm != "sha-256" {
        return Err(SdpError::NoSha256Fingerprint {
            algorithm: offer.fingerprint.algorithm.clone(),
        });
    }

    let mut media = Vec::with_capacity(offer.media.len());
    for m in &offer.media {
        let negotiated = negotiate_media(m, role, prefer, &offer.bundle);
        // Checked only on m-lines roomgate would take: an unusable data channel or a
        // stopped transceiver must not fail the whole offer.
        if negotiated.accepted {
            if !PROTOCOLS.iter().any(|p| m.protocol.eq_ignore_ascii_case(p)) {
                return Err(SdpError::UnsupportedProtocol {
                    mid: m.mid.clone(),
                    protocol: m.protocol.clone(),
                });
            }
            if !m.rtcp_mux {
                return Err(SdpError::NoRtcpMux { mid: m.mid.clone() });
            }
            if m.mid.is_empty() || !offer.bundle.contains(&m.mid) {
                return Err(SdpError::NotBundled { mid: m.mid.clone() });
            }
        }
        media.push(negotiated);
    }

    if !media.iter().any(|m| m.accepted) {
        return Err(SdpError::NoSharedCodec);
    }
    Ok(Negotiated { media })
}

fn negotiate_media(
    m: &OfferedMedia,
    role: Role,
    prefer: &[Codec],
    bundle: &[String],
) -> NegotiatedMedia {
    let rejected = NegotiatedMedia {
        mid: m.mid.clone(),
        kind: m.kind,
        accepted: false,
        codec: None,
        direction: Direction::Inactive,
        ssrcs: Vec::new(),
    };
    let Some(kind) = m.kind else {
        return rejected;
    };
    // With max-bundle, offerers (GStreamer's webrtcbin, RFC 8829 5.2.1) give every m-line
    // after the first port 0 plus `a=bundle-only`: that one rides the BUNDLE transport.
    let bundle_only = m.bundle_only && !m.mid.is_empty() && bundle.contains(&m.mid);
    if m.port == 0 && !bundle_only {
        return rejected;
    }
    let Some(codec) = choose_codec(m, kind, prefer) else {
        return rejected;
    };
    // An m-line in the wrong direction still gets a codec and stays in BUNDLE as
    // inactive, so the client's transceiver stays usable for a later renegotiation.
    let direction = match (role, m.direction) {
        (Role::Publisher, Direction::SendOnly | Direction::SendRecv) => Direction::RecvOnly,
        (Role::Subscriber, Direction::RecvOnly | Direction::SendRecv) => Direction::SendOnly,
        _ => Direction::Inactive,
    };
    let rtcp_fb = codec
        .rtcp_fb
        .iter()
        .filter(|fb| SUPPORTED_RTCP_FB.iter().any(|s| fb.eq_ignore_ascii_case(s)))
        .cloned()
        .collect();
    NegotiatedMedia {
        mid: m.mid.clone(),
        kind: m.kind,
        accepted: true,
        codec: Some(Codec {
            rtcp_fb,
            ..codec.clone()
        }),
        direction,
        ssrcs: m.ssrcs.clone(),
    }
}

/// Preference: the room's codecs, then opus; VP8, then H.264 packetization-mode 1 by
/// profile (constrained baseline, baseline, any). Offer order breaks ties, as the offerer
/// lists its own preference first.
fn choose_codec<'a>(m: &'a OfferedMedia, kind: MediaKind, prefer: &[Codec]) -> Option<&'a Codec> {
    let candidates = || {
        m.codecs
            .iter()
            .filter(move |c| !c.is_auxiliary() && c.kind_hint().is_none_or(|k| k == kind))
    };
    if let Some(c) = candidates().find(|c| prefer.iter().any(|p| c.same_format(p))) {
        return Some(c);
    }
    match kind {
        MediaKind::Audio => {
            candidates().find(|c| c.same_format(&reference("opus", 48000, Some(2))))
        }
        MediaKind::Video => candidates()
            .find(|c| c.same_format(&reference("VP8", 90000, None)))
            .or_else(|| {
                let h264 = || {
                    candidates().filter(|c| {
                        c.name.eq_ignore_ascii_case("H264")
                            && c.clock_rate == 90000
                            && c.fmtp_param("packetization-mode") == Some("1")
                    })
                };
                let profile = |c: &Codec| c.h264_profile();
                h264()
                    .find(|c| profile(c) == "42e0")
                    .or_else(|| h264().find(|c| profile(c) == "4200"))
                    .or_else(|| h264().next())
            }),
    }
}

fn reference(name: &str, clock_rate: u32, channels: Option<u8>) -> Codec {
    Codec {
        payload_type: 0,
        name: name.to_owned(),
        clock_rate,
        channels,
        fmtp: None,
        rtcp_fb: Vec::new(),
    }
}
