//! Writing the answer. Infallible: every value echoed from the offer was validated by
//! the parser, and roomgate's own values are sanitized so a bad caller string cannot
//! break the SDP's line structure.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use super::{Direction, ExtensionKind, Negotiated, NegotiatedMedia, Offer, OfferedMedia};

/// What roomgate sends on one m-line, announced with `a=msid` and `a=ssrc` so the
/// client can map the RTP stream to a track before the first packet arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTrack {
    pub ssrc: u32,
    /// The RTX SSRC roomgate answers NACKs on, when RTX was negotiated.
    pub rtx_ssrc: Option<u32>,
    pub cname: String,
    pub stream_id: String,
    pub track_id: String,
}

/// roomgate's side of the session.
#[derive(Clone, Copy)]
pub struct AnswerParams<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    /// Digest of roomgate's DTLS certificate, `AB:CD:...` uppercase.
    pub fingerprint_sha256: &'a str,
    /// Host candidates, one per address roomgate listens on.
    pub candidates: &'a [SocketAddr],
    pub session_id: u64,
    /// Same length as `negotiated.media`; `Some` for m-lines roomgate sends on.
    pub outbound: &'a [Option<OutboundTrack>],
}

// The ICE password authenticates every pinned flow; keep it out of logs.
impl fmt::Debug for AnswerParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerParams")
            .field("ice_ufrag", &self.ice_ufrag)
            .field("ice_pwd", &"<redacted>")
            .field("fingerprint_sha256", &self.fingerprint_sha256)
            .field("candidates", &self.candidates)
            .field("session_id", &self.session_id)
            .field("outbound", &self.outbound)
            .finish()
    }
}

/// Host candidate priority (RFC 8445 §5.1.2.1): type preference 126, local preference
/// 65535, component 1. Later addresses get one less so the client's ordering is stable.
const HOST_PRIORITY: u32 = 2_130_706_431;

/// Writes roomgate's answer to `offer` as decided by `negotiated` (which must come from
/// [`super::negotiate`] on the same offer). CRLF line endings.
///
/// Header extensions are answered with the offerer's IDs (RFC 8285 §6), so each
/// participant keeps its own ID space and the forwarder remaps IDs between publisher and
/// subscriber. A simulcast publisher gets `a=rid:<id> recv` per accepted layer and
/// `a=simulcast:recv` listing them, which tells it to send exactly those layers.
pub fn build_answer(offer: &Offer, negotiated: &Negotiated, params: &AnswerParams<'_>) -> String {
    let mut out = String::with_capacity(1024 + 512 * negotiated.media.len());
    let mut line = |args: fmt::Arguments<'_>| {
        // Writing to a String cannot fail.
        let _ = out.write_fmt(args);
        out.push_str("\r\n");
    };

    line(format_args!("v=0"));
    line(format_args!(
        "o=roomgate {} 2 IN IP4 127.0.0.1",
        params.session_id
    ));
    line(format_args!("s=-"));
    line(format_args!("t=0 0"));
    line(format_args!("a=ice-lite"));
    let bundle: Vec<&str> = negotiated.accepted().map(|m| m.mid.as_str()).collect();
    if !bundle.is_empty() {
        line(format_args!("a=group:BUNDLE {}", bundle.join(" ")));
    }
    if negotiated.extmap_allow_mixed {
        line(format_args!("a=extmap-allow-mixed"));
    }
    line(format_args!("a=msid-semantic: WMS *"));

    let ufrag = clean(params.ice_ufrag);
    let pwd = clean(params.ice_pwd);
    let fingerprint = clean(params.fingerprint_sha256);
    // Also at session level: rejected m-lines carry no fingerprint, and some stacks
    // (GStreamer's webrtcbin) refuse an answer in which any m-line lacks one.
    line(format_args!("a=fingerprint:sha-256 {fingerprint}"));

    let session_allows_mixed = negotiated.extmap_allow_mixed;
    for (index, (offered, negotiated)) in offer.media.iter().zip(&negotiated.media).enumerate() {
        let codec = match &negotiated.codec {
            Some(codec) if negotiated.accepted => codec,
            _ => {
                rejected_media(&mut line, offered, negotiated);
                continue;
            }
        };
        let pt = codec.payload_type;
        let rtx = negotiated
            .rtx_payload_type
            .map(|r| format!(" {r}"))
            .unwrap_or_default();
        line(format_args!(
            "m={} 9 {} {pt}{rtx}",
            offered.media, offered.protocol
        ));
        line(format_args!("c=IN IP4 0.0.0.0"));
        line(format_args!("a=mid:{}", negotiated.mid));
        line(format_args!("a=ice-ufrag:{ufrag}"));
        line(format_args!("a=ice-pwd:{pwd}"));
        line(format_args!("a=fingerprint:sha-256 {fingerprint}"));
        line(format_args!("a=setup:passive"));
        line(format_args!("a=rtcp-mux"));
        if offered.rtcp_rsize {
            line(format_args!("a=rtcp-rsize"));
        }
        line(format_args!("a={}", negotiated.direction));
        // Only where the session level did not already say it for every m-line.
        if negotiated.extmap_allow_mixed && !session_allows_mixed {
            line(format_args!("a=extmap-allow-mixed"));
        }
        for &(id, kind) in &negotiated.extensions {
            extmap_line(&mut line, offered, id, kind);
        }
        line(format_args!("a=rtpmap:{pt} {}", codec.rtpmap()));
        if let Some(fmtp) = &codec.fmtp {
            line(format_args!("a=fmtp:{pt} {fmtp}"));
        }
        for fb in &codec.rtcp_fb {
            line(format_args!("a=rtcp-fb:{pt} {fb}"));
        }
        if let Some(rtx) = negotiated.rtx_payload_type {
            line(format_args!("a=rtpmap:{rtx} rtx/{}", codec.clock_rate));
            line(format_args!("a=fmtp:{rtx} apt={pt}"));
        }
        if !negotiated.rids.is_empty() {
            // RFC 8853 §5.3: the answer's recv list is what the offerer may send; it
            // holds only RIDs also declared recv here.
            for rid in &negotiated.rids {
                line(format_args!("a=rid:{rid} recv"));
            }
            line(format_args!(
                "a=simulcast:recv {}",
                negotiated.rids.join(";")
            ));
        }
        if let Some(Some(track)) = params.outbound.get(index) {
            let stream = msid_id(&track.stream_id);
            let track_id = msid_id(&track.track_id);
            let cname = clean(&track.cname);
            let ssrc = track.ssrc;
            line(format_args!("a=msid:{stream} {track_id}"));
            if let Some(rtx) = track.rtx_ssrc {
                line(format_args!("a=ssrc-group:FID {ssrc} {rtx}"));
            }
            line(format_args!("a=ssrc:{ssrc} cname:{cname}"));
            line(format_args!("a=ssrc:{ssrc} msid:{stream} {track_id}"));
            if let Some(rtx) = track.rtx_ssrc {
                line(format_args!("a=ssrc:{rtx} cname:{cname}"));
                line(format_args!("a=ssrc:{rtx} msid:{stream} {track_id}"));
            }
        }
        // Some clients key remote candidates by m-line index even under BUNDLE, so every
        // accepted m-line repeats them. A v4-mapped IPv6 address is written as IPv4
        // because that is what the client's socket will see on the wire.
        for (i, addr) in params.candidates.iter().enumerate() {
            let priority = HOST_PRIORITY.saturating_sub(u32::try_from(i).unwrap_or(u32::MAX));
            line(format_args!(
                "a=candidate:{} 1 udp {priority} {} {} typ host",
                i + 1,
                addr.ip().to_canonical(),
                addr.port()
            ));
        }
        line(format_args!("a=end-of-candidates"));
    }
    out
}

/// `a=extmap:<id>[/<direction>] <uri>`. An extension the offerer limited to one
/// direction is answered with the mirror direction (RFC 8285 §6); negotiation already
/// dropped those flowing the wrong way for roomgate's role.
fn extmap_line(
    line: &mut impl FnMut(fmt::Arguments<'_>),
    offered: &OfferedMedia,
    id: u8,
    kind: ExtensionKind,
) {
    let offered_direction = offered
        .extmaps
        .iter()
        .find(|e| e.id == id)
        .and_then(|e| e.direction);
    let uri = kind.uri();
    match offered_direction {
        Some(Direction::SendOnly) => line(format_args!("a=extmap:{id}/recvonly {uri}")),
        Some(Direction::RecvOnly) => line(format_args!("a=extmap:{id}/sendonly {uri}")),
        _ => line(format_args!("a=extmap:{id} {uri}")),
    }
}

fn rejected_media(
    line: &mut impl FnMut(fmt::Arguments<'_>),
    offered: &OfferedMedia,
    negotiated: &NegotiatedMedia,
) {
    // The parser guarantees at least one format; the fallback only keeps this total.
    let format = offered.formats.first().map_or("0", String::as_str);
    line(format_args!(
        "m={} 0 {} {format}",
        offered.media, offered.protocol
    ));
    line(format_args!("c=IN IP4 0.0.0.0"));
    if !negotiated.mid.is_empty() {
        line(format_args!("a=mid:{}", negotiated.mid));
    }
    line(format_args!("a={}", Direction::Inactive));
}

/// Drops whitespace and control characters from a value roomgate supplies, so it stays
/// one token on one line.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect()
}

/// RFC 8830 msid-id: 1 to 64 token-chars. Anything else becomes `-` so the client still
/// sees one stream/track pair.
fn msid_id(s: &str) -> String {
    let id: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "-".to_owned()
    } else {
        id
    }
}
