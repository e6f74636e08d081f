//! Deciding, per offered m-line, whether roomgate takes it, in which direction, with
//! which single codec, header extensions and simulcast layers. Pure function of the
//! offer, the role and the room's codecs.

use super::{
    Codec, Direction, ExtensionKind, MediaKind, Offer, OfferedMedia, Role, SdpError, Setup,
};

/// Most simulcast layers roomgate receives on one video m-line: enough for low, mid and
/// high, which is what per-subscriber layer selection chooses between.
pub const MAX_SIMULCAST_LAYERS: usize = 3;

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
    /// rejected m-lines. A simulcast publisher may announce none: its layers are bound
    /// by [`NegotiatedMedia::rids`] instead.
    pub ssrcs: Vec<u32>,
    /// Header extensions both sides use on this m-line, as `(offerer's ID, kind)` in
    /// offer order, at most one ID per kind. The answer echoes the offerer's IDs
    /// (RFC 8285 §6), so these IDs hold in both directions.
    pub extensions: Vec<(u8, ExtensionKind)>,
    /// The offer allows two-byte header extensions and IDs above 14 on this m-line
    /// (`a=extmap-allow-mixed` at session or media level).
    pub extmap_allow_mixed: bool,
    /// Simulcast layers roomgate receives, as RIDs in the offerer's order (RFC 8853
    /// lists them from its preferred stream down; browsers write them in `sendEncodings`
    /// order). Empty without simulcast; at most [`MAX_SIMULCAST_LAYERS`].
    pub rids: Vec<String>,
    /// The `rtx` payload type paired with the codec (`apt=`), when offered with NACK.
    pub rtx_payload_type: Option<u8>,
    /// A publisher's RTX SSRC for its media SSRC (`a=ssrc-group:FID`), when announced.
    pub rtx_ssrc: Option<u32>,
}

impl NegotiatedMedia {
    /// The negotiated ID of `kind` on this m-line.
    pub fn extension_id(&self, kind: ExtensionKind) -> Option<u8> {
        self.extensions
            .iter()
            .find_map(|&(id, k)| (k == kind).then_some(id))
    }
}

/// One [`NegotiatedMedia`] per offered m-line, in offer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub media: Vec<NegotiatedMedia>,
    /// Session-level `a=extmap-allow-mixed` in the offer, echoed at session level in
    /// the answer.
    pub extmap_allow_mixed: bool,
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
/// forwards PLI/FIR to the publisher. `transport-cc` is kept separately, only where the
/// transport-wide sequence number extension is negotiated, since the feedback is
/// meaningless without it. REMB would promise a receive-side estimate roomgate does not
/// compute.
const SUPPORTED_RTCP_FB: &[&str] = &["nack", "nack pli", "ccm fir"];
const TRANSPORT_CC: &str = "transport-cc";

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
    Ok(Negotiated {
        media,
        extmap_allow_mixed: offer.extmap_allow_mixed,
    })
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
        extensions: Vec::new(),
        extmap_allow_mixed: false,
        rids: Vec::new(),
        rtx_payload_type: None,
        rtx_ssrc: None,
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
    let extensions = negotiate_extensions(m, kind, role);
    let twcc = extensions
        .iter()
        .any(|(_, k)| *k == ExtensionKind::TransportWideCc);
    let rtcp_fb: Vec<String> = codec
        .rtcp_fb
        .iter()
        .filter(|fb| {
            SUPPORTED_RTCP_FB.iter().any(|s| fb.eq_ignore_ascii_case(s))
                || (twcc && fb.eq_ignore_ascii_case(TRANSPORT_CC))
        })
        .cloned()
        .collect();
    let rids = simulcast_layers(m, kind, direction, codec.payload_type, &extensions);
    let rtx_payload_type = rtx_for(m, kind, &codec.payload_type, &rtcp_fb);
    let rtx_ssrc = rtx_payload_type.and_then(|_| {
        let media = m.ssrcs.first()?;
        m.rtx_ssrcs
            .iter()
            .find(|(ssrc, _)| ssrc == media)
            .map(|&(_, rtx)| rtx)
    });
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
        extensions,
        extmap_allow_mixed: m.extmap_allow_mixed,
        rids,
        rtx_payload_type,
        rtx_ssrc,
    }
}

/// The offered `rtx` format (RFC 4588) whose `apt` is the chosen video codec, when NACK
/// was agreed too: retransmissions then travel on their own SSRC and payload type, so
/// receivers can tell a repair from the original and count it.
fn rtx_for(m: &OfferedMedia, kind: MediaKind, payload_type: &u8, rtcp_fb: &[String]) -> Option<u8> {
    if kind != MediaKind::Video || !rtcp_fb.iter().any(|fb| fb.eq_ignore_ascii_case("nack")) {
        return None;
    }
    let apt = payload_type.to_string();
    m.codecs
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case("rtx") && c.fmtp_param("apt") == Some(apt.as_str()))
        .map(|c| c.payload_type)
}

/// The offered extensions roomgate handles on an m-line of `kind` in `role`, first ID per
/// kind. Anything else is stripped by the forwarder, so it must not be agreed to.
fn negotiate_extensions(m: &OfferedMedia, kind: MediaKind, role: Role) -> Vec<(u8, ExtensionKind)> {
    let mut out: Vec<(u8, ExtensionKind)> = Vec::new();
    for ext in &m.extmaps {
        let Some(ext_kind) = ext.kind() else {
            continue;
        };
        // An extension limited to one direction must flow the way media does: toward
        // roomgate from a publisher, from roomgate to a subscriber.
        let flows = ext.direction.is_none_or(|d| match role {
            Role::Publisher => d.sends(),
            Role::Subscriber => d.receives(),
        });
        if flows && suits(ext_kind, kind, role) && !out.iter().any(|(_, k)| *k == ext_kind) {
            out.push((ext.id, ext_kind));
        }
    }
    out
}

/// Which extensions make sense on an m-line. RIDs only mean something on streams
/// roomgate receives: it sends each subscriber one plain stream, whatever layer it is.
fn suits(ext: ExtensionKind, kind: MediaKind, role: Role) -> bool {
    use ExtensionKind::*;
    match (kind, ext) {
        (_, Mid | TransportWideCc | AbsSendTime) => true,
        (MediaKind::Audio, AudioLevel) | (MediaKind::Video, VideoOrientation) => true,
        (MediaKind::Video, RtpStreamId | RepairedRtpStreamId) => role == Role::Publisher,
        (MediaKind::Audio, RtpStreamId | RepairedRtpStreamId | VideoOrientation)
        | (MediaKind::Video, AudioLevel) => false,
    }
}

/// The simulcast layers roomgate receives: the offer's non-paused send streams, in offer
/// order, that can carry the chosen codec, at most [`MAX_SIMULCAST_LAYERS`].
///
/// Layers announce no SSRC, so without the rtp-stream-id extension roomgate could not
/// tell them apart; it then answers without simulcast and the offerer falls back to one
/// stream (RFC 8853 §5.3).
fn simulcast_layers(
    m: &OfferedMedia,
    kind: MediaKind,
    direction: Direction,
    payload_type: u8,
    extensions: &[(u8, ExtensionKind)],
) -> Vec<String> {
    let Some(simulcast) = &m.simulcast else {
        return Vec::new();
    };
    let bindable = extensions
        .iter()
        .any(|(_, k)| *k == ExtensionKind::RtpStreamId);
    if kind != MediaKind::Video || direction != Direction::RecvOnly || !bindable {
        return Vec::new();
    }
    simulcast
        .send
        .iter()
        .filter(|s| !s.paused)
        .filter(|s| {
            m.rids
                .iter()
                .any(|r| r.id == s.rid && r.allows_payload_type(payload_type))
        })
        .take(MAX_SIMULCAST_LAYERS)
        .map(|s| s.rid.clone())
        .collect()
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
