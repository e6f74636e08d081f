//! An independent WebRTC client for the media tests and the media benchmark.
//!
//! It speaks exactly what a browser speaks to the gateway, on one UDP socket:
//!
//! - signalling: WHIP/WHEP (RFC 9725) over HTTP, an SDP offer it generates ([`Offer`]) and
//!   the gateway's answer it parses ([`Answer`]);
//! - ICE: the controlling side against an ICE-lite server (Binding Requests with
//!   USE-CANDIDATE, then periodic consent checks, RFC 7675);
//! - DTLS 1.2 as the client (webrtc-dtls), verifying the server certificate against the
//!   answer's `a=fingerprint` itself, then the RFC 5764 key export;
//! - SRTP/SRTCP (webrtc-srtp): it encrypts with the client key/salt and decrypts with the
//!   server key/salt.
//!
//! STUN, DTLS and SRTP share the socket. One reader task demultiplexes by the first byte
//! (RFC 7983): 0..=3 STUN, 20..=63 DTLS (fed to webrtc-dtls through [`DemuxConn`], an
//! in-memory `Conn`), 128..=191 RTP, or RTCP when the second byte is 192..=223 (RFC 5761).
//!
//! The API is synchronous (the tests are plain `#[test]`s); every client shares one tokio
//! runtime ([`runtime`]) that owns the reader, consent and DTLS tasks.
//!
//! Include it next to `support`: `mod support; #[path = "support/webrtc.rs"] mod webrtc;`.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc as std_mpsc, Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::{
    net::UdpSocket,
    runtime::Runtime,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use webrtc_dtls::{
    config::{Config as DtlsConfig, ExtendedMasterSecretType},
    conn::DTLSConn,
    crypto::Certificate,
    extension::extension_use_srtp::SrtpProtectionProfile,
};
use webrtc_srtp::{context::Context as SrtpContext, protection_profile::ProtectionProfile};
use webrtc_util::{conn::Conn, KeyingMaterialExporter};

use crate::support::{binding_request, decode_reply, StunReply};

// ---------------------------------------------------------------------------------------
// Shared runtime and clock
// ---------------------------------------------------------------------------------------

/// The tokio runtime every client's tasks run on. Worker threads: `ROOMGATE_CLIENT_THREADS`
/// (default 2).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let threads = std::env::var("ROOMGATE_CLIENT_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(2);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("webrtc-client")
            .enable_all()
            .build()
            .expect("build the WebRTC client runtime")
    })
}

/// Nanoseconds since a process-wide epoch; senders embed it in payloads and receivers in
/// the same process subtract it from their own reading (same clock, same host).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("OS randomness");
    b
}

pub fn random_u32() -> u32 {
    u32::from_be_bytes(random_bytes::<4>())
}

/// A random string of ICE characters (RFC 8445 ice-char: ALPHA / DIGIT / "+" / "/").
pub fn random_ice_string(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = vec![0u8; len];
    getrandom::fill(&mut raw).expect("OS randomness");
    raw.iter()
        .map(|b| CHARS[(*b as usize) % CHARS.len()] as char)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Certificates and fingerprints
// ---------------------------------------------------------------------------------------

/// A fresh self-signed ECDSA P-256 certificate, as browsers use.
pub fn new_certificate() -> Certificate {
    Certificate::generate_self_signed(vec!["roomgate-test-client".to_owned()])
        .expect("generate a self-signed certificate")
}

/// `AB:CD:...` (upper-case hex, colon separated) SHA-256 of a DER certificate.
pub fn fingerprint_of_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

pub fn fingerprint_of(cert: &Certificate) -> String {
    fingerprint_of_der(
        cert.certificate
            .first()
            .expect("a generated certificate has a DER chain")
            .as_ref(),
    )
}

// ---------------------------------------------------------------------------------------
// SDP offer
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// WHIP: sends media (`a=sendonly`).
    Publisher,
    /// WHEP: receives media (`a=recvonly`).
    Subscriber,
}

impl Role {
    pub fn path(self) -> &'static str {
        match self {
            Role::Publisher => "whip",
            Role::Subscriber => "whep",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    pub pt: u8,
    /// rtpmap encoding name, e.g. `opus`, `VP8`.
    pub name: String,
    pub clock: u32,
    pub channels: Option<u8>,
    pub fmtp: Option<String>,
    /// `a=rtcp-fb:<pt> <value>` lines.
    pub rtcp_fb: Vec<String>,
}

impl Codec {
    pub fn opus(pt: u8) -> Codec {
        Codec {
            pt,
            name: "opus".into(),
            clock: 48_000,
            channels: Some(2),
            fmtp: Some("minptime=10;useinbandfec=1".into()),
            rtcp_fb: vec!["nack".into()],
        }
    }
    pub fn vp8(pt: u8) -> Codec {
        Codec {
            pt,
            name: "VP8".into(),
            clock: 90_000,
            channels: None,
            fmtp: None,
            rtcp_fb: vec!["nack".into(), "nack pli".into(), "ccm fir".into()],
        }
    }
    /// A codec nobody implements (for "no shared codec").
    pub fn unknown(pt: u8, clock: u32) -> Codec {
        Codec {
            pt,
            name: "x-roomgate-none".into(),
            clock,
            channels: None,
            fmtp: None,
            rtcp_fb: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// The offer this client sends. Every knob a negative test needs is a field.
#[derive(Clone, Debug)]
pub struct Offer {
    pub role: Role,
    pub session_id: u64,
    /// `a=group:BUNDLE` over all m-lines.
    pub bundle: bool,
    /// `a=rtcp-mux` on every m-line.
    pub rtcp_mux: bool,
    /// `a=setup:` value (`actpass` normally; `passive` must be refused).
    pub setup: String,
    /// Codecs per m-line; `None` leaves the m-line out. Audio comes first (mid 0).
    pub audio: Option<Vec<Codec>>,
    pub video: Option<Vec<Codec>>,
    /// Our SSRCs (announced with `a=ssrc` when publishing; RTCP sender SSRC otherwise).
    pub audio_ssrc: u32,
    pub video_ssrc: u32,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Hex fingerprint (`AB:CD:..`) of our DTLS certificate; filled in by [`connect`].
    pub fingerprint: String,
    pub extra_session_lines: Vec<String>,
    pub extra_media_lines: Vec<String>,
    /// Simulcast layers a publisher sends on its video m-line, as (RID, SSRC) from the
    /// lowest up; empty: one plain stream. See [`Offer::with_simulcast`].
    pub simulcast: Vec<(String, u32)>,
}

/// The header extension IDs a simulcast offer maps (`a=extmap`); its packets carry the
/// RID and the transport-wide sequence number in a one-byte block (RFC 8285 §4.2).
pub const EXT_ID_MID: u8 = 1;
pub const EXT_ID_RID: u8 = 2;
pub const EXT_ID_TWCC: u8 = 3;
const EXTMAP_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const EXTMAP_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const EXTMAP_TWCC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

impl Offer {
    pub fn new(role: Role) -> Offer {
        Offer {
            role,
            session_id: u64::from(random_u32()) << 16 | 1,
            bundle: true,
            rtcp_mux: true,
            setup: "actpass".into(),
            audio: Some(vec![Codec::opus(111)]),
            video: Some(vec![Codec::vp8(96)]),
            audio_ssrc: random_u32() | 1,
            video_ssrc: random_u32() | 2,
            ice_ufrag: random_ice_string(8),
            ice_pwd: random_ice_string(24),
            fingerprint: String::new(),
            extra_session_lines: Vec::new(),
            extra_media_lines: Vec::new(),
            simulcast: Vec::new(),
        }
    }

    /// Send `rids` (lowest layer first) as simulcast layers of the video m-line, one
    /// random SSRC each. Like Chrome, the offer announces no SSRC for them: the gateway
    /// binds each layer by the RID its packets carry.
    pub fn with_simulcast(mut self, rids: &[&str]) -> Offer {
        self.simulcast = rids
            .iter()
            .map(|r| ((*r).to_owned(), random_u32() | 4))
            .collect();
        self
    }

    /// The m-lines in order: (kind, codecs).
    pub fn media(&self) -> Vec<(Kind, &[Codec])> {
        let mut m = Vec::new();
        if let Some(a) = &self.audio {
            m.push((Kind::Audio, a.as_slice()));
        }
        if let Some(v) = &self.video {
            m.push((Kind::Video, v.as_slice()));
        }
        m
    }

    pub fn ssrc(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Audio => self.audio_ssrc,
            Kind::Video => self.video_ssrc,
        }
    }

    pub fn to_sdp(&self) -> String {
        let mut s = String::new();
        let media = self.media();
        let _ = write!(
            s,
            "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            self.session_id
        );
        if self.bundle {
            let mids: Vec<String> = (0..media.len()).map(|i| i.to_string()).collect();
            let _ = write!(s, "a=group:BUNDLE {}\r\n", mids.join(" "));
        }
        s.push_str("a=msid-semantic: WMS *\r\n");
        for l in &self.extra_session_lines {
            let _ = write!(s, "{l}\r\n");
        }
        let direction = match self.role {
            Role::Publisher => "sendonly",
            Role::Subscriber => "recvonly",
        };
        for (mid, (kind, codecs)) in media.iter().enumerate() {
            let pts: Vec<String> = codecs.iter().map(|c| c.pt.to_string()).collect();
            let _ = write!(
                s,
                "m={} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
                kind.as_str(),
                pts.join(" ")
            );
            let _ = write!(
                s,
                "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle\r\n",
                self.ice_ufrag, self.ice_pwd
            );
            let _ = write!(
                s,
                "a=fingerprint:sha-256 {}\r\na=setup:{}\r\na=mid:{mid}\r\na={direction}\r\n",
                self.fingerprint, self.setup
            );
            if self.rtcp_mux {
                s.push_str("a=rtcp-mux\r\n");
            }
            for c in codecs.iter() {
                match c.channels {
                    Some(ch) => {
                        let _ = write!(s, "a=rtpmap:{} {}/{}/{ch}\r\n", c.pt, c.name, c.clock);
                    }
                    None => {
                        let _ = write!(s, "a=rtpmap:{} {}/{}\r\n", c.pt, c.name, c.clock);
                    }
                }
                for fb in &c.rtcp_fb {
                    let _ = write!(s, "a=rtcp-fb:{} {fb}\r\n", c.pt);
                }
                if let Some(f) = &c.fmtp {
                    let _ = write!(s, "a=fmtp:{} {f}\r\n", c.pt);
                }
            }
            let simulcast =
                self.role == Role::Publisher && *kind == Kind::Video && !self.simulcast.is_empty();
            if simulcast {
                for (id, uri) in [
                    (EXT_ID_MID, EXTMAP_MID),
                    (EXT_ID_RID, EXTMAP_RID),
                    (EXT_ID_TWCC, EXTMAP_TWCC),
                ] {
                    let _ = write!(s, "a=extmap:{id} {uri}\r\n");
                }
                let rids: Vec<&str> = self.simulcast.iter().map(|(r, _)| r.as_str()).collect();
                for rid in &rids {
                    let _ = write!(s, "a=rid:{rid} send\r\n");
                }
                let _ = write!(s, "a=simulcast:send {}\r\n", rids.join(";"));
            } else if self.role == Role::Publisher {
                let ssrc = self.ssrc(*kind);
                let _ = write!(
                    s,
                    "a=ssrc:{ssrc} cname:roomgate-test\r\na=ssrc:{ssrc} msid:stream track-{}\r\n",
                    kind.as_str()
                );
            }
            for l in &self.extra_media_lines {
                let _ = write!(s, "{l}\r\n");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// SDP answer
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct AnswerMedia {
    pub kind: String,
    pub port: u16,
    pub mid: Option<String>,
    /// Payload types of the m-line.
    pub pts: Vec<u8>,
    /// rtpmap of the first payload type: (pt, name, clock).
    pub rtpmap: Vec<(u8, String, u32)>,
    /// `a=ssrc:<ssrc> ...` the gateway will send with (WHEP).
    pub ssrc: Option<u32>,
    pub direction: Option<String>,
    pub rtcp_mux: bool,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub fingerprint: Option<String>,
    pub setup: Option<String>,
    pub candidates: Vec<SocketAddr>,
}

#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub raw: String,
    pub ice_lite: bool,
    pub bundle: Vec<String>,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Hex part of `a=fingerprint:sha-256 ...`, upper-cased.
    pub fingerprint: String,
    pub setup: String,
    pub candidates: Vec<SocketAddr>,
    pub media: Vec<AnswerMedia>,
}

impl Answer {
    pub fn parse(sdp: &str) -> Result<Answer, String> {
        let mut a = Answer {
            raw: sdp.to_owned(),
            ..Default::default()
        };
        let (mut s_ufrag, mut s_pwd, mut s_fp, mut s_setup) = (None, None, None, None);
        let mut s_candidates = Vec::new();
        let mut cur: Option<AnswerMedia> = None;
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(m) = line.strip_prefix("m=") {
                if let Some(done) = cur.take() {
                    a.media.push(done);
                }
                let mut parts = m.split_whitespace();
                let kind = parts.next().ok_or("m= without media")?.to_owned();
                let port = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad m-line port: {line}"))?;
                let _proto = parts.next();
                let pts = parts.filter_map(|p| p.parse().ok()).collect();
                cur = Some(AnswerMedia {
                    kind,
                    port,
                    pts,
                    ..Default::default()
                });
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
            match (name, cur.as_mut()) {
                ("ice-lite", _) => a.ice_lite = true,
                ("group", _) => {
                    if let Some(mids) = value.strip_prefix("BUNDLE") {
                        a.bundle = mids.split_whitespace().map(str::to_owned).collect();
                    }
                }
                ("ice-ufrag", None) => s_ufrag = Some(value.to_owned()),
                ("ice-ufrag", Some(m)) => m.ice_ufrag = Some(value.to_owned()),
                ("ice-pwd", None) => s_pwd = Some(value.to_owned()),
                ("ice-pwd", Some(m)) => m.ice_pwd = Some(value.to_owned()),
                ("fingerprint", m) => {
                    let (alg, hex) = value.split_once(' ').unwrap_or(("", value));
                    if alg.eq_ignore_ascii_case("sha-256") {
                        let hex = hex.trim().to_ascii_uppercase();
                        match m {
                            Some(m) => m.fingerprint = Some(hex),
                            None => s_fp = Some(hex),
                        }
                    }
                }
                ("setup", None) => s_setup = Some(value.to_owned()),
                ("setup", Some(m)) => m.setup = Some(value.to_owned()),
                ("candidate", m) => {
                    // foundation component transport priority ip port typ host ...
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() >= 8 && f[2].eq_ignore_ascii_case("udp") && f[6] == "typ" {
                        let ip: IpAddr = f[4]
                            .parse()
                            .map_err(|_| format!("bad candidate ip: {line}"))?;
                        let port: u16 = f[5]
                            .parse()
                            .map_err(|_| format!("bad candidate port: {line}"))?;
                        let addr = SocketAddr::new(ip, port);
                        match m {
                            Some(m) => m.candidates.push(addr),
                            None => s_candidates.push(addr),
                        }
                    }
                }
                ("mid", Some(m)) => m.mid = Some(value.to_owned()),
                ("rtcp-mux", Some(m)) => m.rtcp_mux = true,
                ("rtpmap", Some(m)) => {
                    let (pt, rest) = value.split_once(' ').unwrap_or((value, ""));
                    let mut enc = rest.split('/');
                    if let (Ok(pt), Some(name), Some(Ok(clock))) =
                        (pt.parse(), enc.next(), enc.next().map(str::parse))
                    {
                        m.rtpmap.push((pt, name.to_owned(), clock));
                    }
                }
                ("ssrc", Some(m)) if m.ssrc.is_none() => {
                    m.ssrc = value.split_whitespace().next().and_then(|v| v.parse().ok());
                }
                ("sendonly" | "recvonly" | "sendrecv" | "inactive", Some(m)) => {
                    m.direction = Some(name.to_owned())
                }
                _ => {}
            }
        }
        if let Some(done) = cur.take() {
            a.media.push(done);
        }
        let first = |f: &dyn Fn(&AnswerMedia) -> Option<String>| a.media.iter().find_map(f);
        a.ice_ufrag = s_ufrag
            .or_else(|| first(&|m| m.ice_ufrag.clone()))
            .ok_or("answer has no a=ice-ufrag")?;
        a.ice_pwd = s_pwd
            .or_else(|| first(&|m| m.ice_pwd.clone()))
            .ok_or("answer has no a=ice-pwd")?;
        a.fingerprint = s_fp
            .or_else(|| first(&|m| m.fingerprint.clone()))
            .ok_or("answer has no a=fingerprint:sha-256")?;
        a.setup = s_setup
            .or_else(|| first(&|m| m.setup.clone()))
            .ok_or("answer has no a=setup")?;
        a.candidates = s_candidates;
        for m in &a.media {
            for c in &m.candidates {
                if !a.candidates.contains(c) {
                    a.candidates.push(*c);
                }
            }
        }
        if a.candidates.is_empty() {
            return Err("answer has no usable udp host candidate".into());
        }
        Ok(a)
    }

    pub fn media(&self, kind: Kind) -> Option<&AnswerMedia> {
        self.media.iter().find(|m| m.kind == kind.as_str())
    }

    /// The payload type the gateway chose for `kind` (first of the m-line).
    pub fn pt(&self, kind: Kind) -> Option<u8> {
        self.media(kind).and_then(|m| m.pts.first().copied())
    }

    /// The SSRC the gateway announced for `kind`.
    pub fn ssrc(&self, kind: Kind) -> Option<u32> {
        self.media(kind).and_then(|m| m.ssrc)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP (WHIP/WHEP)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::String(self.body.clone()))
    }
}

/// One HTTP request with an optional body, content type and bearer token.
pub fn http_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
    bearer: Option<&str>,
) -> HttpReply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        // Redirects are the caller's to see (a cluster answers 307 to the room's owner).
        .max_redirects(0)
        .build()
        .into();
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let result = match method {
        "POST" | "PATCH" | "PUT" => {
            let mut rb = match method {
                "POST" => agent.post(url),
                "PATCH" => agent.patch(url),
                _ => agent.put(url),
            };
            if let Some(ct) = content_type {
                rb = rb.header("Content-Type", ct);
            }
            if let Some(a) = &auth {
                rb = rb.header("Authorization", a);
            }
            rb.send(body.unwrap_or("").as_bytes())
        }
        _ => {
            let mut rb = match method {
                "DELETE" => agent.delete(url),
                "GET" => agent.get(url),
                other => panic!("http_request: unsupported method {other}"),
            };
            if let Some(a) = &auth {
                rb = rb.header("Authorization", a);
            }
            rb.call()
        }
    };
    let resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = resp.status().as_u16();
    let location = header("location");
    let content_type = header("content-type");
    let body = resp.into_body().read_to_string().unwrap_or_default();
    HttpReply {
        status,
        location,
        content_type,
        body,
    }
}

/// POST an SDP offer (`application/sdp`) to `base` + `path`, following 307/308 redirects
/// the way RFC 9725 asks WHIP clients to: the same offer to the `Location`. The reply is
/// the last one (a cluster's owner answers with an absolute `Location`).
pub fn post_offer(base: &str, path: &str, sdp: &str, bearer: Option<&str>) -> HttpReply {
    let mut url = format!("{base}{path}");
    for _ in 0..MAX_REDIRECTS {
        let reply = http_request("POST", &url, Some("application/sdp"), Some(sdp), bearer);
        match (reply.status, &reply.location) {
            (307 | 308, Some(location)) => url = absolute(&url, location),
            _ => return reply,
        }
    }
    panic!("POST {base}{path}: more than {MAX_REDIRECTS} redirects");
}

/// At most this many 307s per offer (a cluster needs one).
const MAX_REDIRECTS: usize = 4;

/// `scheme://host:port` of an absolute URL.
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').map_or(url.len(), |j| i + 3 + j);
            url[..end].to_owned()
        }
        None => String::new(),
    }
}

/// `location` resolved against the URL it came from.
fn absolute(from: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else {
        format!("{}{location}", origin_of(from))
    }
}

// ---------------------------------------------------------------------------------------
// RTP and RTCP
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl RtpPacket {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + self.payload.len());
        b.push(0x80);
        b.push((u8::from(self.marker) << 7) | (self.pt & 0x7f));
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ts.to_be_bytes());
        b.extend_from_slice(&self.ssrc.to_be_bytes());
        b.extend_from_slice(&self.payload);
        b
    }

    /// The packet with a one-byte header extension block (RFC 8285 §4.2) of `elements`,
    /// each `(id 1..=14, 1 to 16 bytes of data)`, zero-padded to a 32-bit boundary.
    pub fn to_bytes_with_extensions(&self, elements: &[(u8, &[u8])]) -> Vec<u8> {
        let mut block = Vec::new();
        for (id, data) in elements {
            assert!((1..=14).contains(id) && (1..=16).contains(&data.len()));
            block.push((id << 4) | (data.len() as u8 - 1));
            block.extend_from_slice(data);
        }
        while block.len() % 4 != 0 {
            block.push(0);
        }
        let plain = self.to_bytes();
        let mut b = Vec::with_capacity(plain.len() + 4 + block.len());
        b.push(plain[0] | 0x10);
        b.extend_from_slice(&plain[1..12]);
        b.extend_from_slice(&[0xbe, 0xde]);
        b.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
        b.extend_from_slice(&block);
        b.extend_from_slice(&plain[12..]);
        b
    }

    /// Parse a plaintext RTP packet (CSRCs, header extension and padding are skipped).
    pub fn parse(b: &[u8]) -> Option<RtpPacket> {
        if b.len() < 12 || b[0] >> 6 != 2 {
            return None;
        }
        let cc = (b[0] & 0x0f) as usize;
        let mut off = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(off + 2..off + 4)?;
            off += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            end = end.checked_sub(*b.last()? as usize)?;
        }
        if off > end {
            return None;
        }
        Some(RtpPacket {
            marker: b[1] & 0x80 != 0,
            pt: b[1] & 0x7f,
            seq: u16::from_be_bytes([b[2], b[3]]),
            ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: b[off..end].to_vec(),
        })
    }
}

/// Marker in payloads that carry a send timestamp (see [`stamped_payload`]).
pub const STAMP_MAGIC: [u8; 4] = *b"RGTS";

/// A payload of `size` bytes: `prefix` (codec header bytes), [`STAMP_MAGIC`], the send
/// time ([`now_ns`]) and `counter` (u64 BE each), then a pattern derived from `counter`.
pub fn stamped_payload(prefix: &[u8], size: usize, counter: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(prefix.len() + 20));
    p.extend_from_slice(prefix);
    p.extend_from_slice(&STAMP_MAGIC);
    p.extend_from_slice(&now_ns().to_be_bytes());
    p.extend_from_slice(&counter.to_be_bytes());
    let mut i = 0u64;
    while p.len() < size {
        p.push((counter.wrapping_mul(31).wrapping_add(i)) as u8);
        i += 1;
    }
    p
}

/// `(send_ns, counter)` of a payload made by [`stamped_payload`] (prefix up to 8 bytes).
pub fn payload_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let at = (0..=8).find(|&i| payload.get(i..i + 4) == Some(&STAMP_MAGIC[..]))?;
    let ns = payload.get(at + 4..at + 12)?;
    let ctr = payload.get(at + 12..at + 20)?;
    Some((
        u64::from_be_bytes(ns.try_into().ok()?),
        u64::from_be_bytes(ctr.try_into().ok()?),
    ))
}

/// A VP8-looking payload: the RFC 7741 payload descriptor (S bit on the first packet of a
/// frame, partition 0), on a frame start a VP8 frame tag (key frame or inter frame), then
/// the stamp.
pub fn vp8_payload(frame_start: bool, keyframe: bool, size: usize, counter: u64) -> Vec<u8> {
    let prefix: &[u8] = match (frame_start, keyframe) {
        (true, true) => &[0x10, 0x50, 0x01, 0x00],
        (true, false) => &[0x10, 0x51, 0x01, 0x00],
        (false, _) => &[0x00],
    };
    stamped_payload(prefix, size, counter)
}

/// An Opus-looking payload (TOC byte for 20 ms CELT fullband stereo), then the stamp.
pub fn opus_payload(size: usize, counter: u64) -> Vec<u8> {
    stamped_payload(&[0xfc], size, counter)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: u32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rtcp {
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
        packets: u32,
        octets: u32,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    Pli {
        sender: u32,
        media: u32,
    },
    Fir {
        sender: u32,
        /// (media SSRC, command sequence number) per FCI entry.
        entries: Vec<(u32, u8)>,
    },
    Nack {
        sender: u32,
        media: u32,
        lost: Vec<u16>,
    },
    Sdes,
    Bye {
        ssrcs: Vec<u32>,
    },
    Other {
        pt: u8,
        fmt: u8,
        len: usize,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn report_blocks(b: &[u8], count: usize) -> Result<Vec<ReportBlock>, String> {
    if b.len() < count * 24 {
        return Err(format!("{count} report blocks need {} bytes", count * 24));
    }
    Ok((0..count)
        .map(|i| {
            let r = &b[i * 24..];
            ReportBlock {
                ssrc: be32(r, 0),
                fraction_lost: r[4],
                cumulative_lost: be32(r, 4) & 0x00ff_ffff,
                highest_seq: be32(r, 8),
                jitter: be32(r, 12),
                lsr: be32(r, 16),
                dlsr: be32(r, 20),
            }
        })
        .collect())
}

/// Parse a plaintext compound RTCP packet.
pub fn parse_rtcp(mut b: &[u8]) -> Result<Vec<Rtcp>, String> {
    let mut out = Vec::new();
    if b.is_empty() {
        return Err("empty RTCP".into());
    }
    while !b.is_empty() {
        if b.len() < 4 || b[0] >> 6 != 2 {
            return Err(format!("bad RTCP header in {b:02x?}"));
        }
        let count = (b[0] & 0x1f) as usize;
        let pt = b[1];
        let len = (u16::from_be_bytes([b[2], b[3]]) as usize + 1) * 4;
        if len > b.len() {
            return Err(format!("RTCP length {len} > {} remaining", b.len()));
        }
        let mut end = len;
        if b[0] & 0x20 != 0 {
            end = len
                .checked_sub(b[len - 1] as usize)
                .ok_or("bad RTCP padding")?;
        }
        let body = &b[4..end.max(4)];
        let need = |n: usize| {
            if body.len() < n {
                Err(format!("RTCP pt {pt}: body {} < {n}", body.len()))
            } else {
                Ok(())
            }
        };
        out.push(match pt {
            200 => {
                need(24)?;
                Rtcp::SenderReport {
                    ssrc: be32(body, 0),
                    ntp: (u64::from(be32(body, 4)) << 32) | u64::from(be32(body, 8)),
                    rtp_ts: be32(body, 12),
                    packets: be32(body, 16),
                    octets: be32(body, 20),
                    reports: report_blocks(&body[24..], count)?,
                }
            }
            201 => {
                need(4)?;
                Rtcp::ReceiverReport {
                    ssrc: be32(body, 0),
                    reports: report_blocks(&body[4..], count)?,
                }
            }
            202 => Rtcp::Sdes,
            203 => Rtcp::Bye {
                ssrcs: (0..count.min(body.len() / 4))
                    .map(|i| be32(body, i * 4))
                    .collect(),
            },
            205 if count == 1 => {
                need(8)?;
                let mut lost = Vec::new();
                for fci in body[8..].chunks_exact(4) {
                    let pid = u16::from_be_bytes([fci[0], fci[1]]);
                    let blp = u16::from_be_bytes([fci[2], fci[3]]);
                    lost.push(pid);
                    for bit in 0..16u16 {
                        if blp & (1 << bit) != 0 {
                            lost.push(pid.wrapping_add(bit + 1));
                        }
                    }
                }
                Rtcp::Nack {
                    sender: be32(body, 0),
                    media: be32(body, 4),
                    lost,
                }
            }
            206 if count == 1 => {
                need(8)?;
                Rtcp::Pli {
                    sender: be32(body, 0),
                    media: be32(body, 4),
                }
            }
            206 if count == 4 => {
                need(8)?;
                Rtcp::Fir {
                    sender: be32(body, 0),
                    entries: body[8..]
                        .chunks_exact(8)
                        .map(|e| (be32(e, 0), e[4]))
                        .collect(),
                }
            }
            _ => Rtcp::Other {
                pt,
                fmt: count as u8,
                len,
            },
        });
        b = &b[len..];
    }
    Ok(out)
}

/// Writers for the RTCP packets a client sends. Combine them into a compound packet with
/// [`rtcp::compound`] (an RR first, as RFC 3550 §6.1 asks).
pub mod rtcp {
    fn header(count_or_fmt: u8, pt: u8, body_words: usize) -> Vec<u8> {
        let mut b = vec![0x80 | (count_or_fmt & 0x1f), pt];
        b.extend_from_slice(&(body_words as u16).to_be_bytes());
        b
    }

    /// An RR without report blocks.
    pub fn empty_rr(sender: u32) -> Vec<u8> {
        let mut b = header(0, 201, 1);
        b.extend_from_slice(&sender.to_be_bytes());
        b
    }

    /// A sender report without report blocks.
    pub fn sr(sender: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
        let mut b = header(0, 200, 6);
        b.extend_from_slice(&sender.to_be_bytes());
        b.extend_from_slice(&ntp.to_be_bytes());
        b.extend_from_slice(&rtp_ts.to_be_bytes());
        b.extend_from_slice(&packets.to_be_bytes());
        b.extend_from_slice(&octets.to_be_bytes());
        b
    }

    pub fn pli(sender: u32, media: u32) -> Vec<u8> {
        let mut b = header(1, 206, 2);
        b.extend_from_slice(&sender.to_be_bytes());
        b.extend_from_slice(&media.to_be_bytes());
        b
    }

    pub fn fir(sender: u32, media: u32, seq: u8) -> Vec<u8> {
        let mut b = header(4, 206, 4);
        b.extend_from_slice(&sender.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&media.to_be_bytes());
        b.extend_from_slice(&[seq, 0, 0, 0]);
        b
    }

    /// Generic NACK (RFC 4585 §6.2.1) for `lost`, packed into PID+BLP entries.
    pub fn nack(sender: u32, media: u32, lost: &[u16]) -> Vec<u8> {
        let mut seqs = lost.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let mut fcis: Vec<(u16, u16)> = Vec::new();
        for s in seqs {
            match fcis.last_mut() {
                Some((pid, blp)) if s.wrapping_sub(*pid) >= 1 && s.wrapping_sub(*pid) <= 16 => {
                    *blp |= 1 << (s.wrapping_sub(*pid) - 1);
                }
                _ => fcis.push((s, 0)),
            }
        }
        let mut b = header(1, 205, 2 + fcis.len());
        b.extend_from_slice(&sender.to_be_bytes());
        b.extend_from_slice(&media.to_be_bytes());
        for (pid, blp) in fcis {
            b.extend_from_slice(&pid.to_be_bytes());
            b.extend_from_slice(&blp.to_be_bytes());
        }
        b
    }

    pub fn compound(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }
}

// ---------------------------------------------------------------------------------------
// The demultiplexing Conn handed to webrtc-dtls
// ---------------------------------------------------------------------------------------

/// A `Conn` for webrtc-dtls: reads come from the reader task's DTLS channel, writes go out
/// of the shared socket to the gateway. Closing it (DTLSConn::close does) ends reads.
pub struct DemuxConn {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    closed_tx: watch::Sender<bool>,
    closed_rx: watch::Receiver<bool>,
}

impl DemuxConn {
    pub fn new(
        socket: Arc<UdpSocket>,
        remote: SocketAddr,
        inbound: mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> DemuxConn {
        let (closed_tx, closed_rx) = watch::channel(false);
        DemuxConn {
            socket,
            remote,
            inbound: tokio::sync::Mutex::new(inbound),
            closed_tx,
            closed_rx,
        }
    }
}

fn conn_closed() -> webrtc_util::Error {
    webrtc_util::Error::ErrUseClosedNetworkConn
}

#[async_trait]
impl Conn for DemuxConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::from_std(std::io::Error::other(
            "DemuxConn is always connected",
        )))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let mut closed = self.closed_rx.clone();
        if *closed.borrow() {
            return Err(conn_closed());
        }
        let mut rx = self.inbound.lock().await;
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    Ok(n)
                }
                None => Err(conn_closed()),
            },
            _ = closed.changed() => Err(conn_closed()),
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.remote))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if *self.closed_rx.borrow() {
            return Err(conn_closed());
        }
        Ok(self.socket.send_to(buf, self.remote).await?)
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.closed_tx.send(true);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

// ---------------------------------------------------------------------------------------
// SRTP keys
// ---------------------------------------------------------------------------------------

pub const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

pub fn srtp_profile(p: SrtpProtectionProfile) -> Option<ProtectionProfile> {
    match p {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            Some(ProtectionProfile::Aes128CmHmacSha1_80)
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            Some(ProtectionProfile::Aes128CmHmacSha1_32)
        }
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(ProtectionProfile::AeadAes128Gcm),
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => Some(ProtectionProfile::AeadAes256Gcm),
        SrtpProtectionProfile::Unsupported => None,
    }
}

/// Split RFC 5764 §4.2 keying material (client_key|server_key|client_salt|server_salt)
/// into (local, remote) contexts: the DTLS client encrypts with the client half.
pub fn srtp_contexts(
    material: &[u8],
    profile: ProtectionProfile,
    is_client: bool,
) -> Result<(SrtpContext, SrtpContext), String> {
    let (k, s) = (profile.key_len(), profile.salt_len());
    if material.len() != 2 * (k + s) {
        return Err(format!(
            "keying material is {} bytes, {profile:?} needs {}",
            material.len(),
            2 * (k + s)
        ));
    }
    let client_key = &material[..k];
    let server_key = &material[k..2 * k];
    let client_salt = &material[2 * k..2 * k + s];
    let server_salt = &material[2 * k + s..];
    let ctx = |key: &[u8], salt: &[u8]| {
        SrtpContext::new(key, salt, profile, None, None).map_err(|e| format!("SRTP context: {e}"))
    };
    let client = ctx(client_key, client_salt)?;
    let server = ctx(server_key, server_salt)?;
    Ok(if is_client {
        (client, server)
    } else {
        (server, client)
    })
}

// ---------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------

/// Where decrypted media goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queue every RTP/RTCP packet for [`Peer::recv_rtp`] / [`Peer::recv_rtcp`].
    Channel,
    /// Only count, and record latency samples of stamped payloads (benchmarks).
    Stats,
}

#[derive(Clone)]
pub struct PeerConfig {
    pub offer: Offer,
    /// SRTP profiles offered in the DTLS use_srtp extension, in preference order.
    pub profiles: Vec<SrtpProtectionProfile>,
    pub bearer: Option<String>,
    pub bind_ip: IpAddr,
    /// Consent checks while connected (RFC 7675); `None` sends none after connecting.
    pub consent_interval: Option<Duration>,
    pub ice_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Advertise the fingerprint of a different certificate than the one DTLS presents.
    pub lie_about_fingerprint: bool,
    pub delivery: Delivery,
    /// DELETE the resource when ICE/DTLS fails (off to watch the gateway clean up itself).
    pub delete_on_failure: bool,
}

impl PeerConfig {
    pub fn new(role: Role) -> PeerConfig {
        PeerConfig {
            offer: Offer::new(role),
            profiles: vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ],
            bearer: None,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            consent_interval: Some(Duration::from_secs(3)),
            ice_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            lie_about_fingerprint: false,
            delivery: Delivery::Channel,
            delete_on_failure: true,
        }
    }
    pub fn publisher() -> PeerConfig {
        PeerConfig::new(Role::Publisher)
    }
    pub fn subscriber() -> PeerConfig {
        PeerConfig::new(Role::Subscriber)
    }
    /// Offer exactly one SRTP profile.
    pub fn only_profile(mut self, p: SrtpProtectionProfile) -> PeerConfig {
        self.profiles = vec![p];
        self
    }
}

/// A packet with the time the reader task took it off the socket.
#[derive(Clone, Debug)]
pub struct Received<T> {
    pub at: Instant,
    pub at_ns: u64,
    pub packet: T,
}

/// What the reader saw, for assertions and benchmarks.
#[derive(Default)]
pub struct PeerCounters {
    pub rtp: AtomicU64,
    pub rtp_bytes: AtomicU64,
    pub rtcp: AtomicU64,
    pub stun: AtomicU64,
    pub stun_success: AtomicU64,
    pub dtls: AtomicU64,
    pub other: AtomicU64,
    pub srtp_failures: AtomicU64,
    pub srtcp_failures: AtomicU64,
    pub before_keys: AtomicU64,
    pub foreign_source: AtomicU64,
}

struct Shared {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    /// Encrypt with the client key.
    local_ctx: Mutex<Option<SrtpContext>>,
    /// Decrypt with the server key.
    remote_ctx: Mutex<Option<SrtpContext>>,
    counters: PeerCounters,
    delivery: Delivery,
    rtp_tx: Mutex<Option<std_mpsc::Sender<Received<RtpPacket>>>>,
    rtcp_tx: Mutex<Option<std_mpsc::Sender<Received<Vec<Rtcp>>>>>,
    /// Latency samples (receive - send, ns) of stamped payloads in Stats mode.
    latencies: Mutex<Vec<u64>>,
    /// (ssrc -> packets) received, Stats mode.
    per_ssrc: Mutex<HashMap<u32, u64>>,
    stopped: AtomicBool,
}

/// A connected WebRTC peer (publisher or subscriber) of one WHIP/WHEP resource.
pub struct Peer {
    pub base: String,
    /// The resource path from `Location` (e.g. `/whip/room/abcd1234`).
    pub location: String,
    /// The participant id (last path segment of `location`).
    pub participant: String,
    pub offer: Offer,
    pub answer: Answer,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The negotiated SRTP profile.
    pub profile: ProtectionProfile,
    pub dtls_profile: SrtpProtectionProfile,
    pub cert: Certificate,
    /// The bearer token used for the POST (reused for DELETE).
    pub bearer: Option<String>,
    shared: Arc<Shared>,
    dtls: Arc<DTLSConn>,
    rtp_rx: Mutex<std_mpsc::Receiver<Received<RtpPacket>>>,
    rtcp_rx: Mutex<std_mpsc::Receiver<Received<Vec<Rtcp>>>>,
    tasks: Vec<JoinHandle<()>>,
    rtcp_sender_ssrc: u32,
}

/// Why [`connect`] failed: the step, what happened, and what the gateway said.
#[derive(Debug)]
pub struct ConnectError {
    /// `http`, `answer`, `ice`, `dtls`, `fingerprint` or `keys`.
    pub stage: &'static str,
    pub message: String,
    /// The WHIP/WHEP reply (always set once the POST was answered).
    pub reply: Option<Box<HttpReply>>,
    /// The resource path, when the gateway created one.
    pub location: Option<String>,
}

impl ConnectError {
    fn new(stage: &'static str, message: impl Into<String>) -> ConnectError {
        ConnectError {
            stage,
            message: message.into(),
            reply: None,
            location: None,
        }
    }
    /// The HTTP status of the WHIP/WHEP POST.
    pub fn status(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.status)
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.stage, self.message)?;
        if let Some(r) = &self.reply {
            if r.status != 201 {
                write!(f, " (HTTP {}: {})", r.status, r.body)?;
            }
        }
        Ok(())
    }
}

/// Publish to `/whip/{room}` on the gateway at `base` (`http://ip:port`), or panic with the
/// reason.
pub fn publish(base: &str, room: &str, cfg: PeerConfig) -> Peer {
    let path = format!("/whip/{room}");
    connect(base, &path, cfg).unwrap_or_else(|e| panic!("publish to {path}: {e}"))
}

/// Subscribe via `/whep/{room}` (optionally `?publisher=<participant>`), or panic.
pub fn subscribe(base: &str, room: &str, publisher: Option<&str>, cfg: PeerConfig) -> Peer {
    let path = match publisher {
        Some(p) => format!("/whep/{room}?publisher={p}"),
        None => format!("/whep/{room}"),
    };
    connect(base, &path, cfg).unwrap_or_else(|e| panic!("subscribe via {path}: {e}"))
}

/// The whole sequence: offer, POST, answer, ICE, DTLS (with fingerprint check), SRTP keys.
pub fn connect(base: &str, path: &str, mut cfg: PeerConfig) -> Result<Peer, ConnectError> {
    let cert = new_certificate();
    cfg.offer.fingerprint = if cfg.lie_about_fingerprint {
        fingerprint_of(&new_certificate())
    } else {
        fingerprint_of(&cert)
    };
    let reply = post_offer(base, path, &cfg.offer.to_sdp(), cfg.bearer.as_deref());
    let with_reply = |mut e: ConnectError| {
        e.reply = Some(Box::new(reply.clone()));
        e
    };
    if reply.status != 201 {
        return Err(with_reply(ConnectError::new(
            "http",
            format!("expected 201, got {}", reply.status),
        )));
    }
    let Some(location) = reply.location.clone() else {
        return Err(with_reply(ConnectError::new(
            "http",
            "201 without Location",
        )));
    };
    let location_path = match location.find("://") {
        Some(i) => location[i + 3..]
            .find('/')
            .map_or(String::from("/"), |p| location[i + 3 + p..].to_owned()),
        None => location.clone(),
    };
    // An absolute Location names the node that owns the session (after a redirect, not
    // the one first asked): DELETE and PATCH go there.
    let base = if location.contains("://") {
        origin_of(&location)
    } else {
        base.to_owned()
    };
    let answer = match Answer::parse(&reply.body) {
        Ok(a) => a,
        Err(e) => {
            let mut e = with_reply(ConnectError::new("answer", e));
            e.location = Some(location_path);
            return Err(e);
        }
    };
    let participant = location_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let remote = answer.candidates[0];
    let (rtp_tx, rtp_rx) = std_mpsc::channel();
    let (rtcp_tx, rtcp_rx) = std_mpsc::channel();
    let established = runtime().block_on(establish(&cfg, &answer, &cert, remote, rtp_tx, rtcp_tx));
    let (shared, dtls, tasks, dtls_profile, profile) = match established {
        Ok(e) => e,
        Err(mut e) => {
            if cfg.delete_on_failure {
                // Leave nothing behind on the gateway for a half-connected peer.
                let _ = http_request(
                    "DELETE",
                    &format!("{base}{location_path}"),
                    None,
                    None,
                    cfg.bearer.as_deref(),
                );
            }
            e.reply = Some(Box::new(reply));
            e.location = Some(location_path);
            return Err(e);
        }
    };
    Ok(Peer {
        base,
        location: location_path,
        participant,
        local: shared.socket.local_addr().expect("bound socket address"),
        offer: cfg.offer,
        answer,
        remote,
        profile,
        dtls_profile,
        cert,
        bearer: cfg.bearer.clone(),
        shared,
        dtls,
        rtp_rx: Mutex::new(rtp_rx),
        rtcp_rx: Mutex::new(rtcp_rx),
        tasks,
        rtcp_sender_ssrc: random_u32() | 4,
    })
}

type Established = (
    Arc<Shared>,
    Arc<DTLSConn>,
    Vec<JoinHandle<()>>,
    SrtpProtectionProfile,
    ProtectionProfile,
);

async fn establish(
    cfg: &PeerConfig,
    answer: &Answer,
    cert: &Certificate,
    remote: SocketAddr,
    rtp_tx: std_mpsc::Sender<Received<RtpPacket>>,
    rtcp_tx: std_mpsc::Sender<Received<Vec<Rtcp>>>,
) -> Result<Established, ConnectError> {
    let socket = Arc::new(
        UdpSocket::bind(SocketAddr::new(cfg.bind_ip, 0))
            .await
            .map_err(|e| ConnectError::new("ice", format!("bind {}: {e}", cfg.bind_ip)))?,
    );
    let shared = Arc::new(Shared {
        socket: socket.clone(),
        remote,
        local_ctx: Mutex::new(None),
        remote_ctx: Mutex::new(None),
        counters: PeerCounters::default(),
        delivery: cfg.delivery,
        rtp_tx: Mutex::new(Some(rtp_tx)),
        rtcp_tx: Mutex::new(Some(rtcp_tx)),
        latencies: Mutex::new(Vec::new()),
        per_ssrc: Mutex::new(HashMap::new()),
        stopped: AtomicBool::new(false),
    });
    let (dtls_tx, dtls_rx) = mpsc::unbounded_channel();
    let (stun_tx, mut stun_rx) = mpsc::channel::<Vec<u8>>(64);
    let mut tasks = vec![tokio::spawn(reader(shared.clone(), dtls_tx, stun_tx))];

    // ICE: checks with USE-CANDIDATE until a verified success response arrives.
    let deadline = Instant::now() + cfg.ice_timeout;
    let mut connected = false;
    'ice: while Instant::now() < deadline {
        let req = binding_request(
            &answer.ice_ufrag,
            &cfg.offer.ice_ufrag,
            &answer.ice_pwd,
            true,
        );
        let txid = req[8..20].to_vec();
        socket
            .send_to(&req, remote)
            .await
            .map_err(|e| ConnectError::new("ice", format!("send check: {e}")))?;
        let wait = Instant::now() + Duration::from_millis(200);
        while let Ok(Some(reply)) = tokio::time::timeout_at(wait.into(), stun_rx.recv()).await {
            if reply.len() < 20 || reply[8..20] != txid[..] {
                continue;
            }
            match decode_reply(&reply, &answer.ice_pwd) {
                StunReply::Success { .. } => {
                    connected = true;
                    break 'ice;
                }
                StunReply::Error { code } => {
                    abort_all(&tasks);
                    return Err(ConnectError::new("ice", format!("error response {code}")));
                }
            }
        }
    }
    if !connected {
        abort_all(&tasks);
        return Err(ConnectError::new(
            "ice",
            format!(
                "no success response from {remote} within {:?}",
                cfg.ice_timeout
            ),
        ));
    }
    // STUN replies from now on are consent responses; the reader counts them.
    drop(stun_rx);

    // DTLS client over the demultiplexed socket.
    let conn: Arc<dyn Conn + Send + Sync> =
        Arc::new(DemuxConn::new(socket.clone(), remote, dtls_rx));
    let config = DtlsConfig {
        certificates: vec![cert.clone()],
        srtp_protection_profiles: cfg.profiles.clone(),
        extended_master_secret: ExtendedMasterSecretType::Require,
        insecure_skip_verify: true,
        ..Default::default()
    };
    let dtls = match tokio::time::timeout(
        cfg.handshake_timeout,
        DTLSConn::new(conn.clone(), config, true, None),
    )
    .await
    {
        Ok(Ok(d)) => Arc::new(d),
        Ok(Err(e)) => {
            let _ = conn.close().await;
            abort_all(&tasks);
            return Err(ConnectError::new("dtls", e.to_string()));
        }
        Err(_) => {
            let _ = conn.close().await;
            abort_all(&tasks);
            return Err(ConnectError::new(
                "dtls",
                format!(
                    "handshake did not finish within {:?}",
                    cfg.handshake_timeout
                ),
            ));
        }
    };
    let state = dtls.connection_state().await;
    let got = state
        .peer_certificates
        .first()
        .map(|der| fingerprint_of_der(der))
        .unwrap_or_default();
    if got != answer.fingerprint {
        return fail(
            ConnectError::new(
                "fingerprint",
                format!(
                    "server certificate {got} does not match the answer's {}",
                    answer.fingerprint
                ),
            ),
            &tasks,
            dtls,
        )
        .await;
    }
    let dtls_profile = dtls.selected_srtpprotection_profile();
    let Some(profile) = srtp_profile(dtls_profile) else {
        return fail(
            ConnectError::new("keys", format!("no usable SRTP profile ({dtls_profile:?})")),
            &tasks,
            dtls,
        )
        .await;
    };
    let len = 2 * (profile.key_len() + profile.salt_len());
    let material = match state.export_keying_material(EXPORTER_LABEL, &[], len).await {
        Ok(m) => m,
        Err(e) => return fail(ConnectError::new("keys", e.to_string()), &tasks, dtls).await,
    };
    let (local, remote_ctx) = match srtp_contexts(&material, profile, true) {
        Ok(c) => c,
        Err(e) => return fail(ConnectError::new("keys", e), &tasks, dtls).await,
    };
    *shared.local_ctx.lock().expect("srtp lock") = Some(local);
    *shared.remote_ctx.lock().expect("srtp lock") = Some(remote_ctx);

    if let Some(every) = cfg.consent_interval {
        tasks.push(tokio::spawn(consent(
            shared.clone(),
            every,
            answer.ice_ufrag.clone(),
            cfg.offer.ice_ufrag.clone(),
            answer.ice_pwd.clone(),
        )));
    }
    Ok((shared, dtls, tasks, dtls_profile, profile))
}

async fn fail(
    e: ConnectError,
    tasks: &[JoinHandle<()>],
    dtls: Arc<DTLSConn>,
) -> Result<Established, ConnectError> {
    let _ = tokio::time::timeout(Duration::from_secs(1), dtls.close()).await;
    abort_all(tasks);
    Err(e)
}

fn abort_all(tasks: &[JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}

/// The single reader of the socket: RFC 7983 demultiplexing.
async fn reader(
    shared: Arc<Shared>,
    dtls_tx: mpsc::UnboundedSender<Vec<u8>>,
    stun_tx: mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0u8; 4096];
    let c = &shared.counters;
    loop {
        let (n, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if from != shared.remote {
            c.foreign_source.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let d = &buf[..n];
        match d.first() {
            Some(0..=3) => {
                c.stun.fetch_add(1, Ordering::Relaxed);
                if d.len() >= 2 && d[0] == 0x01 && d[1] == 0x01 {
                    c.stun_success.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stun_tx.try_send(d.to_vec());
            }
            Some(20..=63) => {
                c.dtls.fetch_add(1, Ordering::Relaxed);
                let _ = dtls_tx.send(d.to_vec());
            }
            Some(128..=191) if d.len() >= 2 && (192..=223).contains(&d[1]) => {
                handle_rtcp(&shared, d);
            }
            Some(128..=191) => handle_rtp(&shared, d),
            _ => {
                c.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn handle_rtp(shared: &Shared, d: &[u8]) {
    let c = &shared.counters;
    let plain = {
        let mut ctx = shared.remote_ctx.lock().expect("srtp lock");
        let Some(ctx) = ctx.as_mut() else {
            c.before_keys.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match ctx.decrypt_rtp(d) {
            Ok(p) => p,
            Err(_) => {
                c.srtp_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    let at = Instant::now();
    let at_ns = now_ns();
    let Some(pkt) = RtpPacket::parse(&plain) else {
        c.srtp_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.rtp.fetch_add(1, Ordering::Relaxed);
    c.rtp_bytes
        .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
    match shared.delivery {
        Delivery::Channel => {
            if let Some(tx) = shared.rtp_tx.lock().expect("rtp channel lock").as_ref() {
                let _ = tx.send(Received {
                    at,
                    at_ns,
                    packet: pkt,
                });
            }
        }
        Delivery::Stats => {
            if let Some((sent, _)) = payload_stamp(&pkt.payload) {
                shared
                    .latencies
                    .lock()
                    .expect("latency lock")
                    .push(at_ns.saturating_sub(sent));
            }
            *shared
                .per_ssrc
                .lock()
                .expect("per-ssrc lock")
                .entry(pkt.ssrc)
                .or_default() += 1;
        }
    }
}

fn handle_rtcp(shared: &Shared, d: &[u8]) {
    let c = &shared.counters;
    let plain = {
        let mut ctx = shared.remote_ctx.lock().expect("srtp lock");
        let Some(ctx) = ctx.as_mut() else {
            c.before_keys.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match ctx.decrypt_rtcp(d) {
            Ok(p) => p,
            Err(_) => {
                c.srtcp_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    let Ok(packets) = parse_rtcp(&plain) else {
        c.srtcp_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.rtcp.fetch_add(1, Ordering::Relaxed);
    if shared.delivery == Delivery::Channel {
        if let Some(tx) = shared.rtcp_tx.lock().expect("rtcp channel lock").as_ref() {
            let _ = tx.send(Received {
                at: Instant::now(),
                at_ns: now_ns(),
                packet: packets,
            });
        }
    }
}

/// Consent freshness: a Binding Request every `every` (RFC 7675 asks for ~5 s at most).
async fn consent(
    shared: Arc<Shared>,
    every: Duration,
    server_ufrag: String,
    client_ufrag: String,
    pwd: String,
) {
    loop {
        tokio::time::sleep(every).await;
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let req = binding_request(&server_ufrag, &client_ufrag, &pwd, false);
        let _ = shared.socket.send_to(&req, shared.remote).await;
    }
}

impl Peer {
    pub fn role(&self) -> Role {
        self.offer.role
    }

    /// Our SSRC for `kind` (publishers send with it).
    pub fn ssrc(&self, kind: Kind) -> u32 {
        self.offer.ssrc(kind)
    }

    /// Our SSRC as the sender of RTCP feedback (subscribers).
    pub fn rtcp_ssrc(&self) -> u32 {
        match self.offer.role {
            Role::Publisher => self.offer.video_ssrc,
            Role::Subscriber => self.rtcp_sender_ssrc,
        }
    }

    /// The payload type we offered first for `kind`.
    pub fn offered_pt(&self, kind: Kind) -> u8 {
        let codecs = match kind {
            Kind::Audio => self.offer.audio.as_ref(),
            Kind::Video => self.offer.video.as_ref(),
        };
        codecs
            .and_then(|c| c.first())
            .map(|c| c.pt)
            .unwrap_or_else(|| panic!("no {kind:?} m-line offered"))
    }

    pub fn counters(&self) -> &PeerCounters {
        &self.shared.counters
    }

    /// SRTP-protect a plaintext RTP packet (advances the ROC state like a real send).
    pub fn protect_rtp(&self, plain: &[u8]) -> Vec<u8> {
        let mut ctx = self.shared.local_ctx.lock().expect("srtp lock");
        ctx.as_mut()
            .expect("SRTP keys are set once connected")
            .encrypt_rtp(plain)
            .expect("SRTP protect")
            .to_vec()
    }

    pub fn protect_rtcp(&self, plain: &[u8]) -> Vec<u8> {
        let mut ctx = self.shared.local_ctx.lock().expect("srtp lock");
        ctx.as_mut()
            .expect("SRTP keys are set once connected")
            .encrypt_rtcp(plain)
            .expect("SRTCP protect")
            .to_vec()
    }

    /// Send bytes as they are from the peer's socket.
    pub fn send_raw(&self, datagram: &[u8]) {
        let socket = self.shared.socket.clone();
        let remote = self.remote;
        runtime()
            .block_on(socket.send_to(datagram, remote))
            .expect("send datagram to the gateway");
    }

    /// Non-blocking best-effort send (benchmarks); returns false if the socket was full.
    pub fn try_send_raw(&self, datagram: &[u8]) -> bool {
        self.shared
            .socket
            .try_send_to(datagram, self.remote)
            .is_ok()
    }

    pub fn send_rtp(&self, pkt: &RtpPacket) {
        let d = self.protect_rtp(&pkt.to_bytes());
        self.send_raw(&d);
    }

    /// Send a plaintext compound RTCP packet, SRTCP-protected.
    pub fn send_rtcp(&self, plain: &[u8]) {
        let d = self.protect_rtcp(plain);
        self.send_raw(&d);
    }

    /// A PLI about `media` (the SSRC we receive video on), in a compound with an empty RR.
    pub fn send_pli(&self, media: u32) {
        let s = self.rtcp_ssrc();
        self.send_rtcp(&rtcp::compound(&[rtcp::empty_rr(s), rtcp::pli(s, media)]));
    }

    pub fn send_fir(&self, media: u32, seq: u8) {
        let s = self.rtcp_ssrc();
        self.send_rtcp(&rtcp::compound(&[
            rtcp::empty_rr(s),
            rtcp::fir(s, media, seq),
        ]));
    }

    pub fn send_nack(&self, media: u32, lost: &[u16]) {
        let s = self.rtcp_ssrc();
        self.send_rtcp(&rtcp::compound(&[
            rtcp::empty_rr(s),
            rtcp::nack(s, media, lost),
        ]));
    }

    /// Next decrypted RTP packet, waiting at most `timeout`.
    pub fn recv_rtp(&self, timeout: Duration) -> Option<Received<RtpPacket>> {
        self.rtp_rx
            .lock()
            .expect("rtp receiver lock")
            .recv_timeout(timeout)
            .ok()
    }

    /// Everything that arrives within `window`.
    pub fn collect_rtp(&self, window: Duration) -> Vec<Received<RtpPacket>> {
        let deadline = Instant::now() + window;
        let rx = self.rtp_rx.lock().expect("rtp receiver lock");
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => out.push(p),
                Err(_) => return out,
            }
        }
    }

    /// Receive until `n` packets arrived or `timeout` passed.
    pub fn recv_rtp_n(&self, n: usize, timeout: Duration) -> Vec<Received<RtpPacket>> {
        let deadline = Instant::now() + timeout;
        let rx = self.rtp_rx.lock().expect("rtp receiver lock");
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => out.push(p),
                Err(_) => break,
            }
        }
        out
    }

    /// Discard whatever RTP/RTCP is queued.
    pub fn drain(&self) {
        while self
            .rtp_rx
            .lock()
            .expect("rtp receiver lock")
            .try_recv()
            .is_ok()
        {}
        while self
            .rtcp_rx
            .lock()
            .expect("rtcp receiver lock")
            .try_recv()
            .is_ok()
        {}
    }

    pub fn recv_rtcp(&self, timeout: Duration) -> Option<Received<Vec<Rtcp>>> {
        self.rtcp_rx
            .lock()
            .expect("rtcp receiver lock")
            .recv_timeout(timeout)
            .ok()
    }

    /// All RTCP packets (flattened) that arrive within `window`.
    pub fn collect_rtcp(&self, window: Duration) -> Vec<Rtcp> {
        let deadline = Instant::now() + window;
        let rx = self.rtcp_rx.lock().expect("rtcp receiver lock");
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => out.extend(p.packet),
                Err(_) => return out,
            }
        }
    }

    /// Latency samples (ns) recorded in [`Delivery::Stats`] mode, taken out of the peer.
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.shared.latencies.lock().expect("latency lock"))
    }

    pub fn rtp_received(&self) -> u64 {
        self.shared.counters.rtp.load(Ordering::Relaxed)
    }

    /// Send close_notify and stop the DTLS association (the socket stays open).
    pub fn close_dtls(&self) {
        let dtls = self.dtls.clone();
        runtime()
            .block_on(
                async move { tokio::time::timeout(Duration::from_secs(2), dtls.close()).await },
            )
            .expect("close_notify within 2 s")
            .expect("DTLS close");
    }

    /// Stop sending consent checks (the gateway will expire the session after 30 s).
    pub fn stop_consent(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }

    /// DELETE the WHIP/WHEP resource; returns the HTTP status.
    pub fn delete(&self) -> u16 {
        self.delete_with(self.bearer.as_deref())
    }

    pub fn delete_with(&self, bearer: Option<&str>) -> u16 {
        http_request(
            "DELETE",
            &format!("{}{}", self.base, self.location),
            None,
            None,
            bearer,
        )
        .status
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        abort_all(&self.tasks);
        // Dropping the senders ends nothing on the gateway: sessions live until DELETE,
        // close_notify or consent expiry, as for a browser tab that vanished.
        if let Ok(mut tx) = self.shared.rtp_tx.lock() {
            tx.take();
        }
        if let Ok(mut tx) = self.shared.rtcp_tx.lock() {
            tx.take();
        }
    }
}

/// A publisher's media sequence state for one stream: increasing seq/ts, marker at the end
/// of each frame.
#[derive(Clone, Debug)]
pub struct Stream {
    pub kind: Kind,
    pub ssrc: u32,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub counter: u64,
}

impl Stream {
    pub fn new(kind: Kind, ssrc: u32, pt: u8) -> Stream {
        let r = random_u32();
        Stream {
            kind,
            ssrc,
            pt,
            seq: (r & 0x7fff) as u16,
            ts: r >> 1,
            counter: 0,
        }
    }

    pub fn for_peer(peer: &Peer, kind: Kind) -> Stream {
        Stream::new(kind, peer.ssrc(kind), peer.offered_pt(kind))
    }

    /// The next packet of a frame split into `packets_per_frame` packets of `size` bytes.
    /// Video frames advance the timestamp by 3000 (30 fps), audio by 960 (20 ms Opus).
    /// Only the first video frame is a keyframe.
    pub fn next(&mut self, size: usize, packets_per_frame: u32) -> RtpPacket {
        self.next_with_keyframes(size, packets_per_frame, u64::MAX)
    }

    /// As [`Stream::next`], with every `keyframe_every`-th video frame a keyframe (frame 0
    /// included): a viewer that switches to this stream starts at a keyframe.
    pub fn next_with_keyframes(
        &mut self,
        size: usize,
        packets_per_frame: u32,
        keyframe_every: u64,
    ) -> RtpPacket {
        let per_frame = u64::from(packets_per_frame.max(1));
        let index = (self.counter % per_frame) as u32;
        let last = index + 1 == packets_per_frame.max(1);
        let keyframe = (self.counter / per_frame).is_multiple_of(keyframe_every.max(1));
        let payload = match self.kind {
            Kind::Video => vp8_payload(index == 0, keyframe, size, self.counter),
            Kind::Audio => opus_payload(size, self.counter),
        };
        let pkt = RtpPacket {
            marker: last,
            pt: self.pt,
            seq: self.seq,
            ts: self.ts,
            ssrc: self.ssrc,
            payload,
        };
        self.seq = self.seq.wrapping_add(1);
        self.counter += 1;
        if last {
            self.ts = self.ts.wrapping_add(match self.kind {
                Kind::Video => 3000,
                Kind::Audio => 960,
            });
        }
        pkt
    }
}

// ---------------------------------------------------------------------------------------
// Self-tests of the client pieces (no gateway needed)
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod client_tests {
    // Benches (harness = false) compile this module without its #[test] functions.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn simulcast_offer_and_extension_block() {
        let mut o = Offer::new(Role::Publisher).with_simulcast(&["q", "h", "f"]);
        o.fingerprint = "AA:BB".into();
        let sdp = o.to_sdp();
        let video = &sdp[sdp.find("m=video").expect("video m-line")..];
        for needle in [
            "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
            "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n",
            "a=simulcast:send q;h;f\r\n",
        ] {
            assert!(video.contains(needle), "offer lacks {needle:?}:\n{sdp}");
        }
        assert!(!video.contains("a=ssrc:") && sdp.contains(&format!("a=ssrc:{} ", o.audio_ssrc)));
        let pkt = Stream::new(Kind::Video, 9, 96).next(100, 1);
        let b = pkt.to_bytes_with_extensions(&[(EXT_ID_RID, b"h"), (EXT_ID_TWCC, &[1, 2])]);
        // X bit, 0xBEDE, one word: [0x20 'h' 0x31 1 2] padded to 8 bytes = 2 words.
        assert_eq!(b[0] & 0x10, 0x10);
        assert_eq!(
            &b[12..24],
            &[0xbe, 0xde, 0, 2, 0x20, b'h', 0x31, 1, 2, 0, 0, 0]
        );
        assert_eq!(RtpPacket::parse(&b), Some(pkt));
    }

    #[test]
    fn offer_has_the_lines_the_gateway_needs() {
        let mut o = Offer::new(Role::Publisher);
        o.fingerprint = "AA:BB".into();
        let sdp = o.to_sdp();
        for needle in [
            "v=0\r\n",
            "a=group:BUNDLE 0 1\r\n",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=rtpmap:96 VP8/90000\r\n",
            "a=rtcp-fb:96 nack pli\r\n",
            "a=rtcp-fb:96 ccm fir\r\n",
            "a=setup:actpass\r\n",
            "a=rtcp-mux\r\n",
            "a=sendonly\r\n",
            "a=fingerprint:sha-256 AA:BB\r\n",
            &format!("a=ssrc:{} cname:", o.video_ssrc),
            &format!("a=ice-ufrag:{}\r\n", o.ice_ufrag),
        ] {
            assert!(sdp.contains(needle), "offer lacks {needle:?}:\n{sdp}");
        }
        let mut s = Offer::new(Role::Subscriber);
        s.bundle = false;
        s.rtcp_mux = false;
        s.video = Some(vec![Codec::vp8(100)]);
        let sdp = s.to_sdp();
        assert!(!sdp.contains("BUNDLE") && !sdp.contains("rtcp-mux") && !sdp.contains("a=ssrc"));
        assert!(sdp.contains("a=recvonly") && sdp.contains("a=rtpmap:100 VP8/90000"));
    }

    #[test]
    fn answer_parsing() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
                   a=group:BUNDLE 0 1\r\na=fingerprint:sha-256 ab:cd\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n\
                   a=ice-ufrag:roomABCDEFGH\r\na=ice-pwd:secretsecretsecret\r\na=setup:passive\r\n\
                   a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=sendonly\r\na=ssrc:1234 cname:gw\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 7000 typ host\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:1\r\na=rtpmap:100 VP8/90000\r\n\
                   a=ssrc:5678 cname:gw\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7000 typ host\r\n";
        let a = Answer::parse(sdp).expect("parse");
        assert!(a.ice_lite);
        assert_eq!(a.bundle, ["0", "1"]);
        assert_eq!(a.ice_ufrag, "roomABCDEFGH");
        assert_eq!(a.fingerprint, "AB:CD");
        assert_eq!(a.setup, "passive");
        assert_eq!(a.candidates, ["127.0.0.1:7000".parse().expect("addr")]);
        assert_eq!(a.pt(Kind::Video), Some(100));
        assert_eq!(a.ssrc(Kind::Audio), Some(1234));
        assert_eq!(a.ssrc(Kind::Video), Some(5678));
        assert!(Answer::parse("v=0\r\n").is_err());
    }

    #[test]
    fn rtp_and_rtcp_roundtrip() {
        let mut s = Stream::new(Kind::Video, 42, 96);
        let p = s.next(1100, 3);
        assert_eq!(p.payload.len(), 1100);
        assert_eq!(RtpPacket::parse(&p.to_bytes()), Some(p.clone()));
        assert!(payload_stamp(&p.payload).is_some());
        let nack = rtcp::nack(1, 2, &[10, 11, 26, 27, 100]);
        let parsed = parse_rtcp(&rtcp::compound(&[rtcp::empty_rr(1), nack])).expect("rtcp");
        assert_eq!(
            parsed[0],
            Rtcp::ReceiverReport {
                ssrc: 1,
                reports: vec![]
            }
        );
        assert_eq!(
            parsed[1],
            Rtcp::Nack {
                sender: 1,
                media: 2,
                lost: vec![10, 11, 26, 27, 100]
            }
        );
        assert_eq!(
            parse_rtcp(&rtcp::sr(5, 0x0102_0304_0506_0708, 77, 10, 1000)).expect("sr"),
            [Rtcp::SenderReport {
                ssrc: 5,
                ntp: 0x0102_0304_0506_0708,
                rtp_ts: 77,
                packets: 10,
                octets: 1000,
                reports: vec![]
            }]
        );
        assert_eq!(
            parse_rtcp(&rtcp::pli(3, 4)).expect("pli"),
            [Rtcp::Pli {
                sender: 3,
                media: 4
            }]
        );
        assert_eq!(
            parse_rtcp(&rtcp::fir(3, 4, 9)).expect("fir"),
            [Rtcp::Fir {
                sender: 3,
                entries: vec![(4, 9)]
            }]
        );
    }

    #[test]
    fn srtp_roundtrip_both_profiles() {
        for profile in [
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::AeadAes128Gcm,
        ] {
            let material: Vec<u8> = (0..2 * (profile.key_len() + profile.salt_len()))
                .map(|i| i as u8)
                .collect();
            let (mut client_tx, mut client_rx) =
                srtp_contexts(&material, profile, true).expect("client contexts");
            let (mut server_tx, mut server_rx) =
                srtp_contexts(&material, profile, false).expect("server contexts");
            let pkt = Stream::new(Kind::Audio, 7, 111).next(120, 1).to_bytes();
            let enc = client_tx.encrypt_rtp(&pkt).expect("encrypt");
            assert_ne!(&enc[12..], &pkt[12..], "{profile:?} must encrypt");
            assert_eq!(&server_rx.decrypt_rtp(&enc).expect("decrypt")[..], &pkt[..]);
            let mut bad = enc.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(server_rx.decrypt_rtp(&bad).is_err(), "{profile:?} tag flip");
            let rr = rtcp::compound(&[rtcp::empty_rr(9), rtcp::pli(9, 7)]);
            let enc = server_tx.encrypt_rtcp(&rr).expect("encrypt rtcp");
            assert_eq!(
                &client_rx.decrypt_rtcp(&enc).expect("decrypt rtcp")[..],
                &rr[..]
            );
        }
    }

    /// The client's DTLS handshake, fingerprint check and key export against a
    /// webrtc-dtls server, over two real UDP sockets and the demultiplexing Conn on both
    /// ends; then SRTP both ways.
    #[test]
    fn dtls_handshake_and_srtp_against_a_local_server() {
        for offered in [
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ] {
            runtime().block_on(async move {
                let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                let (a_addr, b_addr) =
                    (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
                let pump = |s: Arc<UdpSocket>| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let (rtp_tx, rtp_rx) = mpsc::unbounded_channel::<Vec<u8>>();
                    let task = tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        while let Ok((n, _)) = s.recv_from(&mut buf).await {
                            match buf[0] {
                                20..=63 => {
                                    let _ = tx.send(buf[..n].to_vec());
                                }
                                128..=191 => {
                                    let _ = rtp_tx.send(buf[..n].to_vec());
                                }
                                _ => {}
                            }
                        }
                    });
                    (rx, rtp_rx, task)
                };
                let (a_dtls, _a_rtp, ta) = pump(a.clone());
                let (b_dtls, mut b_rtp, tb) = pump(b.clone());
                let server_cert = new_certificate();
                let server_fp = fingerprint_of(&server_cert);
                let server = tokio::spawn(async move {
                    let conn: Arc<dyn Conn + Send + Sync> =
                        Arc::new(DemuxConn::new(b.clone(), a_addr, b_dtls));
                    let cfg = DtlsConfig {
                        certificates: vec![server_cert],
                        srtp_protection_profiles: vec![
                            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                        ],
                        extended_master_secret: ExtendedMasterSecretType::Require,
                        client_auth: webrtc_dtls::config::ClientAuthType::RequireAnyClientCert,
                        insecure_skip_verify: true,
                        ..Default::default()
                    };
                    DTLSConn::new(conn, cfg, false, None)
                        .await
                        .expect("server handshake")
                });
                let client_cert = new_certificate();
                let conn: Arc<dyn Conn + Send + Sync> =
                    Arc::new(DemuxConn::new(a.clone(), b_addr, a_dtls));
                let cfg = DtlsConfig {
                    certificates: vec![client_cert.clone()],
                    srtp_protection_profiles: vec![offered],
                    extended_master_secret: ExtendedMasterSecretType::Require,
                    insecure_skip_verify: true,
                    ..Default::default()
                };
                let client = tokio::time::timeout(
                    Duration::from_secs(10),
                    DTLSConn::new(conn, cfg, true, None),
                )
                .await
                .expect("handshake within 10 s")
                .expect("client handshake");
                let server = server.await.expect("server task");
                let cs = client.connection_state().await;
                assert_eq!(
                    fingerprint_of_der(&cs.peer_certificates[0]),
                    server_fp,
                    "the client sees the server certificate"
                );
                let ss = server.connection_state().await;
                assert_eq!(
                    fingerprint_of_der(&ss.peer_certificates[0]),
                    fingerprint_of(&client_cert)
                );
                assert_eq!(client.selected_srtpprotection_profile(), offered);
                let profile = srtp_profile(offered).expect("profile");
                let len = 2 * (profile.key_len() + profile.salt_len());
                let cm = cs
                    .export_keying_material(EXPORTER_LABEL, &[], len)
                    .await
                    .expect("client export");
                let sm = ss
                    .export_keying_material(EXPORTER_LABEL, &[], len)
                    .await
                    .expect("server export");
                assert_eq!(cm, sm, "both ends derive the same material");
                let (mut c_tx, _) = srtp_contexts(&cm, profile, true).expect("ctx");
                let (_, mut s_rx) = srtp_contexts(&sm, profile, false).expect("ctx");
                let pkt = Stream::new(Kind::Video, 5, 96).next(500, 1).to_bytes();
                let enc = c_tx.encrypt_rtp(&pkt).expect("encrypt");
                a.send_to(&enc, b_addr).await.expect("send");
                let got = tokio::time::timeout(Duration::from_secs(2), b_rtp.recv())
                    .await
                    .expect("srtp arrives")
                    .expect("channel open");
                assert_eq!(&s_rx.decrypt_rtp(&got).expect("decrypt")[..], &pkt[..]);
                client.close().await.expect("close_notify");
                ta.abort();
                tb.abort();
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Benchmark receive path: the bench reads many peers' sockets itself
// ---------------------------------------------------------------------------------------

/// Decrypts and accounts single datagrams of one peer exactly as its reader task would
/// (counters, integrity failures, latency samples in [`Delivery::Stats`] mode).
#[derive(Clone)]
pub struct DatagramSampler(Arc<Shared>);

impl DatagramSampler {
    pub fn handle(&self, d: &[u8]) {
        match d {
            [128..=191, 192..=223, ..] => handle_rtcp(&self.0, d),
            [128..=191, ..] => handle_rtp(&self.0, d),
            _ => {}
        }
    }

    pub fn counters(&self) -> &PeerCounters {
        &self.0.counters
    }

    /// Latency samples (ns) of the datagrams handled so far, taken out.
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.latencies.lock().expect("latency lock"))
    }
}

/// A connected peer whose socket a benchmark reads itself (see [`Peer::detach`]): the
/// session stays up on the gateway (consent checks go on), but no task of this module
/// reads the socket any more.
pub struct DetachedPeer {
    pub fd: std::os::fd::RawFd,
    pub sampler: DatagramSampler,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DetachedPeer {
    fn drop(&mut self) {
        self.sampler.0.stopped.store(true, Ordering::Relaxed);
        abort_all(&self.tasks);
    }
}

impl Peer {
    /// Hand the socket over to a benchmark that counts the datagrams of many peers with
    /// one cheap loop and decrypts only a sample ([`DatagramSampler`]).
    ///
    /// The DTLS association is dropped without close_notify, because webrtc-dtls's record
    /// reader would otherwise spin on the closed demultiplexing channel once the socket
    /// reader is gone; SRTP keys are already derived, so media is unaffected.
    pub fn detach(self) -> DetachedPeer {
        use std::os::fd::AsRawFd;
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped after this; every field with drop glue is
        // read out exactly once and dropped (or kept) below, the rest are Copy.
        let (base, location, participant, offer, answer, cert, bearer) = unsafe {
            (
                std::ptr::read(&me.base),
                std::ptr::read(&me.location),
                std::ptr::read(&me.participant),
                std::ptr::read(&me.offer),
                std::ptr::read(&me.answer),
                std::ptr::read(&me.cert),
                std::ptr::read(&me.bearer),
            )
        };
        // SAFETY: as above.
        let (shared, dtls, rtp_rx, rtcp_rx, tasks) = unsafe {
            (
                std::ptr::read(&me.shared),
                std::ptr::read(&me.dtls),
                std::ptr::read(&me.rtp_rx),
                std::ptr::read(&me.rtcp_rx),
                std::ptr::read(&me.tasks),
            )
        };
        drop((base, location, participant, offer, answer, cert, bearer));
        drop((rtp_rx, rtcp_rx));
        // First the DTLS connection (its record reader ends with it), then the socket
        // reader (the first task `establish` spawns).
        drop(dtls);
        if let Some(reader) = tasks.first() {
            reader.abort();
        }
        DetachedPeer {
            fd: shared.socket.as_raw_fd(),
            sampler: DatagramSampler(shared),
            tasks,
        }
    }
}
