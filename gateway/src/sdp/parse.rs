//! Offer parsing: a single pass over `k=v` lines into per-section builders, then a
//! resolution step that applies session-level defaults.
//!
//! The parser is strict about what roomgate acts on (it echoes mids, payload types and
//! fmtp back into the answer and feeds ICE credentials and the fingerprint to the
//! transport) and ignores everything else, so unknown attributes from newer clients do
//! not break signaling.

use std::fmt;

use super::simulcast::{ParsedSimulcast, MAX_RIDS};
use super::{
    Codec, Direction, ExtMap, MediaKind, Rid, SdpError, Simulcast, MAX_CODECS, MAX_LINE_BYTES,
    MAX_MEDIA, MAX_SDP_BYTES,
};

/// Distinct SSRCs kept per m-line. Simulcast with RTX and FEC needs about ten.
const MAX_SSRCS: usize = 64;
/// `a=rtcp-fb` lines per m-line. Chrome writes about 80 on its video m-line.
const MAX_RTCP_FB: usize = 512;
/// Fingerprints per section; a client offers one per hash function it supports.
const MAX_FINGERPRINTS: usize = 8;
/// RFC 8839 §5.4 caps ufrag and pwd at 256 characters.
const MAX_ICE_CREDENTIAL: usize = 256;
/// RFC 8285 §4.2: the one-byte header form has IDs 1 to 14 (15 is reserved); larger IDs
/// need the two-byte form, which the offerer allows with `a=extmap-allow-mixed`.
const MAX_ONE_BYTE_EXTENSION_ID: u8 = 14;

/// `a=fingerprint` (RFC 8122).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash function, lowercase (`sha-256`).
    pub algorithm: String,
    /// Digest as uppercase hex bytes separated by colons.
    pub value: String,
}

/// `a=setup` (RFC 4145, RFC 5763): which side starts the DTLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    /// The attribute value (`active`, `passive`, `actpass`, `holdconn`).
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }

    fn from_value(value: &str) -> Option<Setup> {
        match value {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::ActPass),
            "holdconn" => Some(Setup::HoldConn),
            _ => None,
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One m-line of the offer with the attributes roomgate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedMedia {
    /// `None` for application (data channel) and other non-RTP media.
    pub kind: Option<MediaKind>,
    /// Media type as written (`audio`, `video`, `application`).
    pub media: String,
    /// `a=mid`, or empty if the m-line has none.
    pub mid: String,
    pub port: u16,
    /// Transport protocol as written (`UDP/TLS/RTP/SAVPF`).
    pub protocol: String,
    /// The m-line's format list as written.
    pub formats: Vec<String>,
    /// Media-level direction, else session-level, else `sendrecv`.
    pub direction: Direction,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    /// `a=bundle-only` (RFC 8843 6): port 0 that means "only inside BUNDLE", not "rejected".
    pub bundle_only: bool,
    /// Formats that have an `a=rtpmap`, in m-line order. Static payload types without
    /// an rtpmap (`0` PCMU, `8` PCMA) are left out: roomgate never picks them.
    pub codecs: Vec<Codec>,
    /// Media SSRCs from `a=ssrc`, without the repair SSRCs of `FID`/`FEC-FR` groups,
    /// deduplicated, in order of first appearance.
    pub ssrcs: Vec<u32>,
    /// `a=msid` value (`<stream> <track>`), else the `msid:` of the first `a=ssrc`.
    pub msid: Option<String>,
    /// `a=ssrc-group:FID <media> <rtx>` pairs (RFC 4588): each media SSRC's RTX SSRC.
    pub rtx_ssrcs: Vec<(u32, u32)>,
    /// Session-level `a=extmap` lines followed by this m-line's, one per ID, every ID
    /// valid for [`OfferedMedia::extmap_allow_mixed`]. Unknown URIs are kept: the parser
    /// does not decide what roomgate negotiates.
    pub extmaps: Vec<ExtMap>,
    /// `a=extmap-allow-mixed` at session or media level (RFC 8285 §6): one- and two-byte
    /// header extensions may be mixed, and IDs up to 255 are valid.
    pub extmap_allow_mixed: bool,
    /// `a=rid` lines in the order written, IDs unique.
    pub rids: Vec<Rid>,
    /// `a=simulcast`; every RID it names has an `a=rid` of the same direction in
    /// [`OfferedMedia::rids`].
    pub simulcast: Option<Simulcast>,
}

/// A parsed WHIP/WHEP offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Mids of the first `a=group:BUNDLE`; empty if there is none.
    pub bundle: Vec<String>,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Session-level `a=ice-lite`.
    pub ice_lite: bool,
    /// Session-level `a=extmap-allow-mixed` (media-level ones are in
    /// [`OfferedMedia::extmap_allow_mixed`]).
    pub extmap_allow_mixed: bool,
    /// The sha-256 fingerprint if several were offered, else the first.
    pub fingerprint: Fingerprint,
    pub setup: Setup,
    pub media: Vec<OfferedMedia>,
}

/// Parses an SDP offer (CRLF or LF line endings).
///
/// Transport attributes (ICE credentials, fingerprint, setup) are taken from the first
/// m-line (the first with a non-zero port, if any), falling back to the session level:
/// with BUNDLE every m-line shares that one's transport.
pub fn parse_offer(text: &str) -> Result<Offer, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            len: text.len(),
            max: MAX_SDP_BYTES,
        });
    }

    let mut session = SessionBuilder::default();
    let mut media: Vec<MediaBuilder> = Vec::new();
    let mut seen_version = false;

    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        if content.len() > MAX_LINE_BYTES {
            return Err(SdpError::LineTooLong {
                line,
                len: content.len(),
                max: MAX_LINE_BYTES,
            });
        }
        // RFC 4566 forbids blank lines, but a trailing newline or an editor's stray empty
        // line is harmless and common in hand-written WHIP clients.
        if content.is_empty() {
            continue;
        }
        // Values are echoed into the answer; a stray CR or NUL there would let the
        // offerer inject lines into it.
        if content.chars().any(|c| c.is_control() && c != '\t') {
            return Err(syntax(line, "control character in line"));
        }
        let (kind, value) = split_line(content, line)?;

        if !seen_version {
            if kind != 'v' || value != "0" {
                return Err(syntax(line, "SDP must start with v=0"));
            }
            seen_version = true;
            continue;
        }

        match kind {
            'v' => return Err(syntax(line, "second v= line")),
            'o' => {
                if !media.is_empty() {
                    return Err(syntax(line, "o= line inside a media section"));
                }
                if session.origin {
                    return Err(syntax(line, "second o= line"));
                }
                if value.split_whitespace().count() != 6 {
                    return Err(syntax(
                        line,
                        "o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>",
                    ));
                }
                session.origin = true;
            }
            'm' => {
                if media.len() >= MAX_MEDIA {
                    return Err(SdpError::Limit {
                        line,
                        what: "m-lines",
                        max: MAX_MEDIA,
                    });
                }
                media.push(MediaBuilder::from_m_line(value, line)?);
            }
            'a' => {
                let (name, attr_value) = match value.split_once(':') {
                    Some((name, v)) => (name, Some(v)),
                    None => (value, None),
                };
                match media.last_mut() {
                    Some(m) => m.attribute(name, attr_value, line)?,
                    None => session.attribute(name, attr_value, line)?,
                }
            }
            // s=, t=, c=, b= and the rest carry nothing roomgate uses: it answers with its
            // own addresses and learns the client's from ICE.
            _ => {}
        }
    }

    if !seen_version {
        return Err(SdpError::Missing { what: "v=0 line" });
    }
    if !session.origin {
        return Err(SdpError::Missing { what: "o= line" });
    }
    // A port-0 m-line is switched off and need not carry transport attributes (roomgate's
    // own answers omit them on rejected m-lines), so the first live one speaks for the
    // BUNDLE transport.
    let Some(first) = media.iter().find(|m| m.port != 0).or(media.first()) else {
        return Err(SdpError::Missing { what: "m= line" });
    };

    let transport = first.transport.or(&session.transport);
    let ice_ufrag = transport
        .ice_ufrag
        .map(str::to_owned)
        .ok_or(SdpError::Missing {
            what: "a=ice-ufrag",
        })?;
    let ice_pwd = transport
        .ice_pwd
        .map(str::to_owned)
        .ok_or(SdpError::Missing { what: "a=ice-pwd" })?;
    let fingerprint = transport
        .fingerprints
        .iter()
        .find(|f| f.algorithm == "sha-256")
        .or(transport.fingerprints.first())
        .cloned()
        .ok_or(SdpError::Missing {
            what: "a=fingerprint",
        })?;
    let setup = transport
        .setup
        .ok_or(SdpError::Missing { what: "a=setup" })?;

    let mut seen_mids: Vec<&str> = Vec::with_capacity(media.len());
    for m in &media {
        if let Some((mid, line)) = &m.mid {
            if seen_mids.contains(&mid.as_str()) {
                return Err(SdpError::DuplicateMid {
                    line: *line,
                    mid: mid.clone(),
                });
            }
            seen_mids.push(mid);
        }
    }

    let media = media
        .into_iter()
        .map(|m| m.finish(&session))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Offer {
        bundle: session.bundle.unwrap_or_default(),
        ice_ufrag,
        ice_pwd,
        ice_lite: session.ice_lite,
        extmap_allow_mixed: session.extmap_allow_mixed,
        fingerprint,
        setup,
        media,
    })
}

pub(super) fn syntax(line: usize, reason: impl Into<String>) -> SdpError {
    SdpError::Syntax {
        line,
        reason: reason.into(),
    }
}

/// Splits `x=value`, where `x` is one lowercase letter (RFC 4566 §5).
fn split_line(content: &str, line: usize) -> Result<(char, &str), SdpError> {
    let mut chars = content.chars();
    match (chars.next(), chars.next()) {
        (Some(kind), Some('=')) if kind.is_ascii_lowercase() => Ok((kind, chars.as_str())),
        _ => Err(syntax(line, "expected <letter>=<value>")),
    }
}

/// RFC 4566 `token-char`: what may appear in a mid, media type or similar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9'
                | b'A'..=b'Z' | b'^'..=b'~')
        })
}

/// RFC 8445 `ice-char`.
fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Transport attributes that may appear at session or media level.
#[derive(Default)]
struct Transport {
    ice_ufrag: Option<String>,
    ice_pwd: Option<String>,
    fingerprints: Vec<Fingerprint>,
    setup: Option<Setup>,
}

/// A view of media-level transport attributes over session-level defaults.
struct EffectiveTransport<'a> {
    ice_ufrag: Option<&'a str>,
    ice_pwd: Option<&'a str>,
    fingerprints: &'a [Fingerprint],
    setup: Option<Setup>,
}

impl Transport {
    fn or<'a>(&'a self, fallback: &'a Transport) -> EffectiveTransport<'a> {
        EffectiveTransport {
            ice_ufrag: self.ice_ufrag.as_deref().or(fallback.ice_ufrag.as_deref()),
            ice_pwd: self.ice_pwd.as_deref().or(fallback.ice_pwd.as_deref()),
            fingerprints: if self.fingerprints.is_empty() {
                &fallback.fingerprints
            } else {
                &self.fingerprints
            },
            setup: self.setup.or(fallback.setup),
        }
    }

    /// Handles a transport attribute; returns false if `name` is not one.
    fn attribute(
        &mut self,
        name: &str,
        value: Option<&str>,
        line: usize,
    ) -> Result<bool, SdpError> {
        match name {
            "ice-ufrag" => set_once(
                &mut self.ice_ufrag,
                ice_credential(value, line, "ice-ufrag")?,
                line,
                "a=ice-ufrag",
            )?,
            "ice-pwd" => set_once(
                &mut self.ice_pwd,
                ice_credential(value, line, "ice-pwd")?,
                line,
                "a=ice-pwd",
            )?,
            "fingerprint" => {
                if self.fingerprints.len() >= MAX_FINGERPRINTS {
                    return Err(SdpError::Limit {
                        line,
                        what: "a=fingerprint lines in a section",
                        max: MAX_FINGERPRINTS,
                    });
                }
                self.fingerprints
                    .push(fingerprint(value.unwrap_or(""), line)?);
            }
            "setup" => {
                let v = value.unwrap_or("").trim();
                let setup = Setup::from_value(v)
                    .ok_or_else(|| syntax(line, format!("unknown a=setup value {v:?}")))?;
                set_once(&mut self.setup, setup, line, "a=setup")?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, line: usize, what: &str) -> Result<(), SdpError> {
    if slot.is_some() {
        return Err(syntax(line, format!("second {what} in the same section")));
    }
    *slot = Some(value);
    Ok(())
}

/// The client's ufrag ends up in STUN USERNAME as `server-ufrag:client-ufrag`; anything
/// beyond ice-chars (a colon in particular) would make that ambiguous. The RFC minimum lengths (4 and 22)
/// are not enforced: an ICE-lite server never sends checks, so the client's own
/// password protects nothing of ours and a short one only hurts the client.
fn ice_credential(value: Option<&str>, line: usize, what: &str) -> Result<String, SdpError> {
    let v = value.unwrap_or("").trim();
    if v.is_empty() || v.len() > MAX_ICE_CREDENTIAL || !is_ice_chars(v) {
        return Err(syntax(
            line,
            format!("a={what} must be 1 to {MAX_ICE_CREDENTIAL} ice-chars (ALPHA DIGIT + /)"),
        ));
    }
    Ok(v.to_owned())
}

/// `a=fingerprint:<hash> <hex:hex:...>`, normalized to lowercase hash, uppercase digest.
fn fingerprint(value: &str, line: usize) -> Result<Fingerprint, SdpError> {
    let mut parts = value.split_whitespace();
    let (Some(algorithm), Some(digest), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(syntax(line, "a=fingerprint needs <hash-function> <digest>"));
    };
    if !is_token(algorithm) {
        return Err(syntax(line, "a=fingerprint hash function is not a token"));
    }
    let algorithm = algorithm.to_ascii_lowercase();
    let bytes = digest.split(':');
    let mut count = 0usize;
    for byte in bytes {
        if byte.len() != 2 || !byte.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax(
                line,
                "a=fingerprint digest must be hex bytes separated by colons",
            ));
        }
        count += 1;
    }
    // sha-512 is the longest hash function registered for this attribute.
    let expected = match algorithm.as_str() {
        "sha-1" => Some(20),
        "sha-224" => Some(28),
        "sha-256" => Some(32),
        "sha-384" => Some(48),
        "sha-512" => Some(64),
        _ => None,
    };
    if count > 64 || expected.is_some_and(|n| n != count) {
        return Err(syntax(
            line,
            format!("a=fingerprint {algorithm} digest has {count} bytes"),
        ));
    }
    Ok(Fingerprint {
        algorithm,
        value: digest.to_ascii_uppercase(),
    })
}

#[derive(Default)]
struct SessionBuilder {
    origin: bool,
    bundle: Option<Vec<String>>,
    ice_lite: bool,
    direction: Option<Direction>,
    transport: Transport,
    extmaps: Vec<(ExtMap, usize)>,
    extmap_allow_mixed: bool,
}

impl SessionBuilder {
    fn attribute(&mut self, name: &str, value: Option<&str>, line: usize) -> Result<(), SdpError> {
        if self.transport.attribute(name, value, line)? {
            return Ok(());
        }
        if let Some(direction) = Direction::from_attribute(name) {
            return set_once(&mut self.direction, direction, line, "direction attribute");
        }
        match name {
            "ice-lite" => self.ice_lite = true,
            "extmap" => add_extmap(&mut self.extmaps, value, line)?,
            "extmap-allow-mixed" => self.extmap_allow_mixed = true,
            "group" => {
                let mut words = value.unwrap_or("").split_whitespace();
                let semantics = words.next().unwrap_or("");
                if semantics.eq_ignore_ascii_case("BUNDLE") && self.bundle.is_none() {
                    let mut mids = Vec::new();
                    for mid in words {
                        if !is_token(mid) {
                            return Err(syntax(line, "a=group:BUNDLE mid is not a token"));
                        }
                        mids.push(mid.to_owned());
                    }
                    self.bundle = Some(mids);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct RtpMap {
    payload_type: u8,
    name: String,
    clock_rate: u32,
    channels: Option<u8>,
}

/// Accumulates one media section; resolved against the session in [`MediaBuilder::finish`].
struct MediaBuilder {
    media: String,
    port: u16,
    protocol: String,
    formats: Vec<String>,
    /// Codec attributes are only read on RTP m-lines; SCTP m-lines reuse `a=fmtp` with
    /// non-numeric formats in older drafts.
    is_rtp: bool,
    mid: Option<(String, usize)>,
    direction: Option<Direction>,
    rtcp_mux: bool,
    rtcp_rsize: bool,
    bundle_only: bool,
    rtpmaps: Vec<RtpMap>,
    fmtps: Vec<(u8, String)>,
    /// `None` payload type stands for `*`.
    rtcp_fb: Vec<(Option<u8>, String)>,
    ssrcs: Vec<u32>,
    repair_ssrcs: Vec<u32>,
    rtx_ssrcs: Vec<(u32, u32)>,
    msid: Option<String>,
    ssrc_msid: Option<String>,
    transport: Transport,
    extmaps: Vec<(ExtMap, usize)>,
    extmap_allow_mixed: bool,
    rids: Vec<Rid>,
    simulcast: Option<ParsedSimulcast>,
}

impl MediaBuilder {
    /// `m=<media> <port> <proto> <fmt> ...`
    fn from_m_line(value: &str, line: usize) -> Result<MediaBuilder, SdpError> {
        let mut words = value.split_whitespace();
        let (Some(media), Some(port), Some(protocol)) = (words.next(), words.next(), words.next())
        else {
            return Err(syntax(line, "m= needs <media> <port> <proto> <fmt> ..."));
        };
        if !is_token(media) {
            return Err(syntax(line, "m= media type is not a token"));
        }
        if port.contains('/') {
            return Err(syntax(line, "m= port/count is not supported"));
        }
        let port: u16 = port.parse().map_err(|_| {
            syntax(
                line,
                format!("m= port {port:?} is not a number in 0..=65535"),
            )
        })?;
        if !protocol.split('/').all(is_token) {
            return Err(syntax(line, "m= protocol is not a token list"));
        }
        let mut formats = Vec::new();
        for fmt in words {
            if formats.len() >= MAX_CODECS {
                return Err(SdpError::Limit {
                    line,
                    what: "formats on an m-line",
                    max: MAX_CODECS,
                });
            }
            if !is_token(fmt) {
                return Err(syntax(line, "m= format is not a token"));
            }
            formats.push(fmt.to_owned());
        }
        if formats.is_empty() {
            return Err(syntax(line, "m= line has no formats"));
        }
        Ok(MediaBuilder {
            media: media.to_owned(),
            port,
            is_rtp: protocol.split('/').any(|p| p.eq_ignore_ascii_case("RTP")),
            protocol: protocol.to_owned(),
            formats,
            mid: None,
            direction: None,
            rtcp_mux: false,
            rtcp_rsize: false,
            bundle_only: false,
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            rtcp_fb: Vec::new(),
            ssrcs: Vec::new(),
            repair_ssrcs: Vec::new(),
            rtx_ssrcs: Vec::new(),
            msid: None,
            ssrc_msid: None,
            transport: Transport::default(),
            extmaps: Vec::new(),
            extmap_allow_mixed: false,
            rids: Vec::new(),
            simulcast: None,
        })
    }

    fn attribute(&mut self, name: &str, value: Option<&str>, line: usize) -> Result<(), SdpError> {
        if self.transport.attribute(name, value, line)? {
            return Ok(());
        }
        if let Some(direction) = Direction::from_attribute(name) {
            return set_once(&mut self.direction, direction, line, "direction attribute");
        }
        let v = value.unwrap_or("").trim();
        match name {
            "mid" => {
                // The mid goes into the answer's BUNDLE line and a=mid verbatim.
                if !is_token(v) {
                    return Err(syntax(line, "a=mid is not a token"));
                }
                set_once(&mut self.mid, (v.to_owned(), line), line, "a=mid")?;
            }
            "rtcp-mux" => self.rtcp_mux = true,
            "rtcp-rsize" => self.rtcp_rsize = true,
            "bundle-only" => self.bundle_only = true,
            // A track may belong to several streams; one is enough to name it.
            "msid" if self.msid.is_none() => {
                self.msid = Some(normalize_words(v, line, "a=msid")?);
            }
            "rtpmap" if self.is_rtp => self.rtpmap(v, line)?,
            "fmtp" if self.is_rtp => self.fmtp(v, line)?,
            "rtcp-fb" if self.is_rtp => self.rtcp_fb(v, line)?,
            "ssrc" if self.is_rtp => self.ssrc(v, line)?,
            "ssrc-group" if self.is_rtp => self.ssrc_group(v, line)?,
            "extmap" if self.is_rtp => add_extmap(&mut self.extmaps, value, line)?,
            "extmap-allow-mixed" => self.extmap_allow_mixed = true,
            "rid" if self.is_rtp => self.rid(v, line)?,
            "simulcast" if self.is_rtp => {
                if self.simulcast.is_some() {
                    return Err(syntax(line, "second a=simulcast in the same section"));
                }
                self.simulcast = Some(ParsedSimulcast::parse(v, line)?);
            }
            _ => {}
        }
        Ok(())
    }

    /// `a=rid:<id> <send|recv> [<params>]`
    fn rid(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let rid = Rid::parse(v, line)?;
        // RFC 8851 §4: a rid-id names one stream of the m-line.
        if self.rids.iter().any(|r| r.id == rid.id) {
            return Err(syntax(line, format!("second a=rid for {:?}", rid.id)));
        }
        if self.rids.len() >= MAX_RIDS {
            return Err(SdpError::Limit {
                line,
                what: "a=rid lines on an m-line",
                max: MAX_RIDS,
            });
        }
        self.rids.push(rid);
        Ok(())
    }

    /// `a=rtpmap:<pt> <name>/<rate>[/<channels>]`
    fn rtpmap(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let bad = || syntax(line, "a=rtpmap needs <pt> <name>/<rate>[/<channels>]");
        let (pt, encoding) = v.split_once(' ').ok_or_else(bad)?;
        let payload_type = payload_type(pt, line, "a=rtpmap")?;
        let mut parts = encoding.trim().split('/');
        let (Some(name), Some(rate)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let channels = parts.next();
        if parts.next().is_some() || !is_token(name) {
            return Err(bad());
        }
        let clock_rate: u32 = rate
            .parse()
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| syntax(line, format!("a=rtpmap clock rate {rate:?} is invalid")))?;
        let channels =
            match channels {
                None => None,
                Some(c) => Some(c.parse::<u8>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    syntax(line, format!("a=rtpmap channel count {c:?} is invalid"))
                })?),
            };
        if self.rtpmaps.iter().any(|r| r.payload_type == payload_type) {
            return Err(syntax(
                line,
                format!("second a=rtpmap for payload type {payload_type}"),
            ));
        }
        self.rtpmaps.push(RtpMap {
            payload_type,
            name: name.to_owned(),
            clock_rate,
            channels,
        });
        Ok(())
    }

    /// `a=fmtp:<pt> <params>`
    fn fmtp(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
        let payload_type = payload_type(pt, line, "a=fmtp")?;
        let params = params.trim();
        if self.fmtps.iter().any(|(p, _)| *p == payload_type) {
            return Err(syntax(
                line,
                format!("second a=fmtp for payload type {payload_type}"),
            ));
        }
        // An empty fmtp says nothing; keeping it would write `a=fmtp:<pt> ` back.
        if !params.is_empty() {
            self.fmtps.push((payload_type, params.to_owned()));
        }
        Ok(())
    }

    /// `a=rtcp-fb:<pt|*> <value>`
    fn rtcp_fb(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let Some((pt, fb)) = v.split_once(' ') else {
            return Err(syntax(line, "a=rtcp-fb needs <pt|*> <value>"));
        };
        let payload_type = match pt {
            "*" => None,
            pt => Some(payload_type(pt, line, "a=rtcp-fb")?),
        };
        if self.rtcp_fb.len() >= MAX_RTCP_FB {
            return Err(SdpError::Limit {
                line,
                what: "a=rtcp-fb lines on an m-line",
                max: MAX_RTCP_FB,
            });
        }
        self.rtcp_fb
            .push((payload_type, normalize_words(fb, line, "a=rtcp-fb")?));
        Ok(())
    }

    /// `a=ssrc:<ssrc> <attribute>[:<value>]`
    fn ssrc(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let (ssrc, attr) = v.split_once(' ').unwrap_or((v, ""));
        let ssrc = parse_ssrc(ssrc, line)?;
        if !self.ssrcs.contains(&ssrc) {
            if self.ssrcs.len() >= MAX_SSRCS {
                return Err(SdpError::Limit {
                    line,
                    what: "SSRCs on an m-line",
                    max: MAX_SSRCS,
                });
            }
            self.ssrcs.push(ssrc);
        }
        // Clients that predate a=msid (GStreamer, older libwebrtc) only name the track
        // here.
        if let Some(msid) = attr.trim().strip_prefix("msid:") {
            if self.ssrc_msid.is_none() && !msid.trim().is_empty() {
                self.ssrc_msid = Some(normalize_words(msid, line, "a=ssrc msid")?);
            }
        }
        Ok(())
    }

    /// `a=ssrc-group:<semantics> <ssrc> ...`: in FID (RTX, RFC 4588) and FEC-FR (RFC
    /// 5956) groups every SSRC after the first repairs the first, so it is not media.
    fn ssrc_group(&mut self, v: &str, line: usize) -> Result<(), SdpError> {
        let mut words = v.split_whitespace();
        let semantics = words.next().unwrap_or("");
        let mut members = Vec::new();
        for word in words {
            members.push(parse_ssrc(word, line)?);
            if members.len() > MAX_SSRCS {
                return Err(SdpError::Limit {
                    line,
                    what: "SSRCs in an a=ssrc-group",
                    max: MAX_SSRCS,
                });
            }
        }
        let is_repair = ["FID", "FEC-FR", "FEC"]
            .iter()
            .any(|s| semantics.eq_ignore_ascii_case(s));
        if semantics.eq_ignore_ascii_case("FID") {
            if let [media, rtx, ..] = members[..] {
                if !self.rtx_ssrcs.iter().any(|&(m, _)| m == media)
                    && self.rtx_ssrcs.len() < MAX_SSRCS
                {
                    self.rtx_ssrcs.push((media, rtx));
                }
            }
        }
        if is_repair {
            for ssrc in members.into_iter().skip(1) {
                if !self.repair_ssrcs.contains(&ssrc) {
                    if self.repair_ssrcs.len() >= MAX_SSRCS {
                        return Err(SdpError::Limit {
                            line,
                            what: "repair SSRCs on an m-line",
                            max: MAX_SSRCS,
                        });
                    }
                    self.repair_ssrcs.push(ssrc);
                }
            }
        }
        Ok(())
    }

    fn finish(self, session: &SessionBuilder) -> Result<OfferedMedia, SdpError> {
        let extmap_allow_mixed = session.extmap_allow_mixed || self.extmap_allow_mixed;
        // Session-level mappings apply to every m-line (RFC 8285 §5), so they and the
        // media-level ones form one ID space.
        let mut extmaps: Vec<(ExtMap, usize)> = session.extmaps.clone();
        for (ext, line) in self.extmaps {
            merge_extmap(&mut extmaps, ext, line)?;
        }
        if !extmap_allow_mixed {
            if let Some((ext, line)) = extmaps
                .iter()
                .find(|(e, _)| e.id > MAX_ONE_BYTE_EXTENSION_ID)
            {
                return Err(syntax(
                    *line,
                    format!(
                        "a=extmap ID {} is not in 1..=14; IDs up to 255 need a=extmap-allow-mixed",
                        ext.id
                    ),
                ));
            }
        }
        if let Some(simulcast) = &self.simulcast {
            simulcast.check(&self.rids)?;
        }
        let kind = if self.media.eq_ignore_ascii_case("audio") {
            Some(MediaKind::Audio)
        } else if self.media.eq_ignore_ascii_case("video") {
            Some(MediaKind::Video)
        } else {
            None
        };
        let mut codecs = Vec::new();
        for fmt in &self.formats {
            let Ok(pt) = fmt.parse::<u8>() else { continue };
            let Some(map) = self.rtpmaps.iter().find(|r| r.payload_type == pt) else {
                continue;
            };
            // An m-line may list a payload type twice; the answer needs it once.
            if codecs.iter().any(|c: &Codec| c.payload_type == pt) {
                continue;
            }
            let mut rtcp_fb: Vec<String> = Vec::new();
            for (fb_pt, fb) in &self.rtcp_fb {
                if (fb_pt.is_none() || *fb_pt == Some(pt)) && !rtcp_fb.contains(fb) {
                    rtcp_fb.push(fb.clone());
                }
            }
            codecs.push(Codec {
                payload_type: pt,
                name: map.name.clone(),
                clock_rate: map.clock_rate,
                channels: map.channels,
                fmtp: self
                    .fmtps
                    .iter()
                    .find(|(p, _)| *p == pt)
                    .map(|(_, f)| f.clone()),
                rtcp_fb,
            });
        }
        let ssrcs = self
            .ssrcs
            .iter()
            .copied()
            .filter(|s| !self.repair_ssrcs.contains(s))
            .collect();
        Ok(OfferedMedia {
            kind,
            media: self.media,
            mid: self.mid.map(|(mid, _)| mid).unwrap_or_default(),
            port: self.port,
            protocol: self.protocol,
            formats: self.formats,
            direction: self
                .direction
                .or(session.direction)
                .unwrap_or(Direction::SendRecv),
            rtcp_mux: self.rtcp_mux,
            rtcp_rsize: self.rtcp_rsize,
            bundle_only: self.bundle_only,
            codecs,
            ssrcs,
            msid: self.msid.or(self.ssrc_msid),
            rtx_ssrcs: self.rtx_ssrcs,
            extmaps: extmaps.into_iter().map(|(e, _)| e).collect(),
            extmap_allow_mixed,
            rids: self.rids,
            simulcast: self.simulcast.map(|s| s.simulcast),
        })
    }
}

/// Parses an `a=extmap` line into a section's mappings.
fn add_extmap(
    extmaps: &mut Vec<(ExtMap, usize)>,
    value: Option<&str>,
    line: usize,
) -> Result<(), SdpError> {
    let ext = ExtMap::parse(value.unwrap_or(""), line)?;
    merge_extmap(extmaps, ext, line)
}

/// Adds one mapping. A repeated ID with the same URI says nothing new and is dropped, which
/// also bounds the list at 255 entries; the same ID naming another URI makes packets with
/// that ID ambiguous (RFC 8285 §5).
fn merge_extmap(
    extmaps: &mut Vec<(ExtMap, usize)>,
    ext: ExtMap,
    line: usize,
) -> Result<(), SdpError> {
    match extmaps.iter().find(|(e, _)| e.id == ext.id) {
        Some((existing, _)) if existing.uri == ext.uri => Ok(()),
        Some((existing, first_line)) => Err(syntax(
            line,
            format!(
                "a=extmap ID {} maps {} but line {first_line} maps it to {}",
                ext.id, ext.uri, existing.uri
            ),
        )),
        None => {
            extmaps.push((ext, line));
            Ok(())
        }
    }
}

fn payload_type(pt: &str, line: usize, what: &str) -> Result<u8, SdpError> {
    pt.trim()
        .parse::<u8>()
        .ok()
        .filter(|pt| *pt <= 127)
        .ok_or_else(|| {
            syntax(
                line,
                format!("{what} payload type {pt:?} is not in 0..=127"),
            )
        })
}

fn parse_ssrc(s: &str, line: usize) -> Result<u32, SdpError> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| syntax(line, format!("SSRC {s:?} is not a 32-bit number")))
}

/// Collapses runs of whitespace so values compare and print canonically.
fn normalize_words(v: &str, line: usize, what: &str) -> Result<String, SdpError> {
    let words: Vec<&str> = v.split_whitespace().collect();
    if words.is_empty() {
        return Err(syntax(line, format!("{what} has no value")));
    }
    Ok(words.join(" "))
}
