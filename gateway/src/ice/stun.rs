//! STUN Binding handling for an ICE-lite server (RFC 8489, RFC 8445 §7.3).
//!
//! Two steps, so the logic thread can route before it authenticates:
//! 1. [`parse`] checks the framing itself (bounded walk, exact lengths) and reads what
//!    routing needs (type, transaction ID, USERNAME, USE-CANDIDATE, where MESSAGE-INTEGRITY
//!    and FINGERPRINT sit) in place. It never runs stun-rs: a forged check must cost no more
//!    than this walk, one lookup and one HMAC. stun-rs decodes only authenticated requests
//!    (for the 420 list of unknown comprehension-required attributes).
//! 2. [`answer`] verifies FINGERPRINT and MESSAGE-INTEGRITY explicitly against the bytes as
//!    received, so each failure maps to its own RFC outcome (drop, 400, 401, 420) instead of
//!    collapsing into a single decode error.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, UnknownAttributes, XorMappedAddress,
};
use stun_rs::error::StunDecodeError;
use stun_rs::methods::BINDING;
use stun_rs::{
    HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute,
    StunMessage, StunMessageBuilder, TransactionId,
};

/// Largest datagram we treat as STUN. A Binding Request from a browser is ~100 bytes; a
/// message that does not fit one Ethernet MTU is not an ICE check, and the bound keeps
/// decoding cost per datagram small.
pub const MAX_MESSAGE_LEN: usize = 1500;
/// Most attributes walked per message; an ICE check carries about six. Bounds the work an
/// attacker can cause with a datagram of many empty attributes.
pub const MAX_ATTRIBUTES: usize = 32;

const HEADER_LEN: usize = 20;
const ATTR_HEADER_LEN: usize = 4;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// RFC 8489 §14.7: the CRC-32 is XORed with 0x5354554e.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const MESSAGE_INTEGRITY_LEN: usize = 20;
const FINGERPRINT_LEN: usize = 4;
/// RFC 8489 §14.8: the reason phrase is fewer than 128 characters.
const MAX_REASON_LEN: usize = 127;
/// Room for the largest response we build: header, ERROR-CODE with a bounded reason,
/// UNKNOWN-ATTRIBUTES with at most [`MAX_ATTRIBUTES`] entries, MESSAGE-INTEGRITY,
/// FINGERPRINT (about 300 bytes).
const RESPONSE_BUF_LEN: usize = 512;

/// Why a datagram is not a STUN message we are willing to look at. The caller drops it
/// and counts it as [`StunOutcome::Malformed`].
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error("{len} bytes is shorter than the 20-byte STUN header")]
    Truncated { len: usize },
    #[error("{len} bytes exceeds the {max}-byte limit for STUN")]
    TooLong { len: usize, max: usize },
    #[error("not STUN: top two bits set or magic cookie missing")]
    NotStun,
    #[error("declared length {declared} is not a multiple of 4")]
    UnalignedLength { declared: usize },
    #[error("declared length {declared} but {actual} bytes follow the header")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("attribute at offset {offset} runs past the end of the message")]
    AttributeOverrun { offset: usize },
    #[error("attribute {attr_type:#06x} has length {len}, expected {expected}")]
    AttributeLength {
        attr_type: u16,
        len: usize,
        expected: usize,
    },
    #[error("more than {max} attributes")]
    TooManyAttributes { max: usize },
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    #[error("USERNAME is not UTF-8")]
    UsernameNotUtf8,
    #[error("stun-rs rejected the message: {0}")]
    Decode(#[source] StunDecodeError),
}

/// Every way a STUN datagram can end, for per-outcome counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StunOutcome {
    /// Integrity verified; a success response was sent.
    Success,
    /// 400: USERNAME or MESSAGE-INTEGRITY missing.
    BadRequest,
    /// 401: unknown server ufrag or MESSAGE-INTEGRITY mismatch.
    Unauthorized,
    /// 420: authenticated, but carries comprehension-required attributes we do not know.
    UnknownAttribute,
    /// No session for the server ufrag (decided by the caller; dropped silently so the
    /// port is no reflector for scanners).
    UnknownUfrag,
    /// Not parseable as STUN.
    Malformed,
    /// FINGERPRINT present and wrong: by RFC 8489 §7.3 not a STUN message at all.
    BadFingerprint,
    /// A well-formed STUN message that is not a Binding Request (responses, indications).
    NotARequest,
}

impl StunOutcome {
    pub const ALL: [StunOutcome; 8] = [
        StunOutcome::Success,
        StunOutcome::BadRequest,
        StunOutcome::Unauthorized,
        StunOutcome::UnknownAttribute,
        StunOutcome::UnknownUfrag,
        StunOutcome::Malformed,
        StunOutcome::BadFingerprint,
        StunOutcome::NotARequest,
    ];

    /// Stable snake_case name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            StunOutcome::Success => "success",
            StunOutcome::BadRequest => "bad_request",
            StunOutcome::Unauthorized => "unauthorized",
            StunOutcome::UnknownAttribute => "unknown_attribute",
            StunOutcome::UnknownUfrag => "unknown_ufrag",
            StunOutcome::Malformed => "malformed",
            StunOutcome::BadFingerprint => "bad_fingerprint",
            StunOutcome::NotARequest => "not_a_request",
        }
    }
}

/// What to do with a Binding Request.
#[derive(Debug)]
pub enum Answer {
    /// Integrity verified: send `response`; `use_candidate` mirrors USE-CANDIDATE.
    Success {
        response: Vec<u8>,
        use_candidate: bool,
    },
    /// Send `response` (400/401/420); nothing is pinned.
    Reject {
        response: Vec<u8>,
        outcome: StunOutcome,
    },
    /// Send nothing.
    Drop { outcome: StunOutcome },
}

/// A parsed, *unauthenticated* STUN message. Everything read from it is attacker-chosen
/// until [`answer`] has verified MESSAGE-INTEGRITY.
#[derive(Debug)]
pub struct StunView<'a> {
    /// Exactly the message bytes (the datagram; [`parse`] rejects trailing bytes).
    bytes: &'a [u8],
    /// USE-CANDIDATE before MESSAGE-INTEGRITY. Matched by type number so it works
    /// whether or not stun-rs was built with its `ice` feature.
    use_candidate: bool,
    /// The first USERNAME before any integrity/fingerprint attribute, as on the wire. The
    /// raw bytes (not stun-rs's PRECIS-prepared copy) are what the eBPF steering hashes,
    /// so routing and authentication look at the same string.
    username: Option<&'a str>,
    /// Offsets of the first MESSAGE-INTEGRITY and of FINGERPRINT (always the last
    /// attribute), from the walk: verifying them needs no copy of the message.
    integrity_at: Option<usize>,
    fingerprint_at: Option<usize>,
}

/// Structural facts gathered by our own walk before stun-rs sees the bytes.
struct Walk<'a> {
    username: Option<&'a [u8]>,
    use_candidate: bool,
    integrity_at: Option<usize>,
    fingerprint_at: Option<usize>,
}

/// Checks framing with exact bounds. stun-rs would catch most of this too, but doing it
/// here first bounds the work per datagram and enforces rules stun-rs is lax about
/// (trailing bytes, FINGERPRINT last, exact MI/FINGERPRINT lengths).
fn walk(datagram: &[u8]) -> Result<Walk<'_>, StunError> {
    let len = datagram.len();
    if len < HEADER_LEN {
        return Err(StunError::Truncated { len });
    }
    if len > MAX_MESSAGE_LEN {
        return Err(StunError::TooLong {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    if datagram[0] & 0xC0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if declared % 4 != 0 {
        return Err(StunError::UnalignedLength { declared });
    }
    if declared != len - HEADER_LEN {
        return Err(StunError::LengthMismatch {
            declared,
            actual: len - HEADER_LEN,
        });
    }

    let mut username = None;
    let mut use_candidate = false;
    let mut integrity_at = None;
    let mut fingerprint_at = None;
    // Set once MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT was seen: later attributes are
    // not covered by integrity and RFC 8489 §14.5 says to ignore them (as stun-rs does).
    let mut sealed = false;
    let mut fingerprint_seen = false;
    let mut offset = HEADER_LEN;
    let mut count = 0;
    while offset < len {
        if fingerprint_seen {
            return Err(StunError::FingerprintNotLast);
        }
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(StunError::TooManyAttributes {
                max: MAX_ATTRIBUTES,
            });
        }
        let header = datagram
            .get(offset..offset + ATTR_HEADER_LEN)
            .ok_or(StunError::AttributeOverrun { offset })?;
        let attr_type = u16::from_be_bytes([header[0], header[1]]);
        let attr_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value_start = offset + ATTR_HEADER_LEN;
        let value = datagram
            .get(value_start..value_start + attr_len)
            .ok_or(StunError::AttributeOverrun { offset })?;
        // Values are padded to 4 bytes; the padding must be inside the message too.
        let next = value_start + attr_len.next_multiple_of(4);
        if next > len {
            return Err(StunError::AttributeOverrun { offset });
        }
        let exact = |expected: usize| {
            if attr_len == expected {
                Ok(())
            } else {
                Err(StunError::AttributeLength {
                    attr_type,
                    len: attr_len,
                    expected,
                })
            }
        };
        match attr_type {
            ATTR_USERNAME if !sealed && username.is_none() => username = Some(value),
            ATTR_USE_CANDIDATE if !sealed => use_candidate = true,
            // RFC 8489 §14.6: a MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 is ignored.
            ATTR_MESSAGE_INTEGRITY if !sealed => {
                exact(MESSAGE_INTEGRITY_LEN)?;
                integrity_at.get_or_insert(offset);
                sealed = true;
            }
            ATTR_MESSAGE_INTEGRITY_SHA256 => sealed = true,
            ATTR_FINGERPRINT => {
                exact(FINGERPRINT_LEN)?;
                sealed = true;
                fingerprint_seen = true;
                fingerprint_at = Some(offset);
            }
            _ => {}
        }
        offset = next;
    }
    Ok(Walk {
        username,
        use_candidate,
        integrity_at,
        fingerprint_at,
    })
}

/// Cheap look at a datagram already classified as STUN (first byte 0..=3). Parses the
/// message (bounded), without verifying integrity. `Err` means malformed: drop and count.
pub fn parse(datagram: &[u8]) -> Result<StunView<'_>, StunError> {
    let Walk {
        username,
        use_candidate,
        integrity_at,
        fingerprint_at,
    } = walk(datagram)?;
    let username = match username {
        Some(raw) => Some(std::str::from_utf8(raw).map_err(|_| StunError::UsernameNotUtf8)?),
        None => None,
    };
    // stun-rs decodes (and PRECIS-prepares USERNAME) only once a request has been
    // authenticated: a forged check costs the walk, the lookup and one HMAC, no more.
    Ok(StunView {
        bytes: datagram,
        use_candidate,
        username,
        integrity_at,
        fingerprint_at,
    })
}

impl StunView<'_> {
    /// The message type is Binding (0x001) of class Request: 0x0001 exactly.
    pub fn is_binding_request(&self) -> bool {
        self.bytes.get(..2) == Some(&BINDING_REQUEST[..])
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        if let Some(bytes) = self.bytes.get(8..HEADER_LEN) {
            id.copy_from_slice(bytes);
        }
        id
    }

    /// The raw USERNAME, if present.
    pub fn username(&self) -> Option<&str> {
        self.username
    }

    /// USERNAME split as "server:client" (RFC 8445 §7.2.2: the request's USERNAME is
    /// "RFRAG:LFRAG", and for the client the remote fragment is ours). Both parts must be
    /// non-empty and contain no further ':'.
    fn ufrags(&self) -> Option<(&str, &str)> {
        let (server, client) = self.username?.split_once(':')?;
        if server.is_empty() || client.is_empty() || client.contains(':') {
            return None;
        }
        Some((server, client))
    }

    /// The server ufrag part of USERNAME ("srv:cli" -> "srv"), if USERNAME is present and
    /// well-formed.
    pub fn server_ufrag(&self) -> Option<&str> {
        self.ufrags().map(|(s, _)| s)
    }

    /// The client ufrag part of USERNAME ("srv:cli" -> "cli").
    pub fn client_ufrag(&self) -> Option<&str> {
        self.ufrags().map(|(_, c)| c)
    }

    /// Whether USE-CANDIDATE is present (before MESSAGE-INTEGRITY).
    pub fn use_candidate(&self) -> bool {
        self.use_candidate
    }

    /// Comprehension-required attributes (type < 0x8000) that neither stun-rs nor we
    /// understand, deduplicated. Attributes after MESSAGE-INTEGRITY are not included:
    /// they are ignored anyway (RFC 8489 §14.5).
    /// Decodes with stun-rs (without a key: a decode error is about structure, never
    /// integrity), which is what knows its attributes; called after authentication only.
    fn unknown_comprehension_required(&self) -> Result<Vec<u16>, StunError> {
        let (msg, _) = MessageDecoderBuilder::default()
            .build()
            .decode(self.bytes)
            .map_err(StunError::Decode)?;
        let mut out = Vec::new();
        for attr in msg.attributes() {
            if let StunAttribute::Unknown(u) = attr {
                let t = u.attribute_type().as_u16();
                // PRIORITY and USE-CANDIDATE are understood here even when stun-rs lacks
                // its `ice` feature and reports them as unknown.
                let known_ice = t == ATTR_PRIORITY || t == ATTR_USE_CANDIDATE;
                if t < 0x8000 && !known_ice && !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// FINGERPRINT absent, or present and matching the bytes as received. The walk made
    /// it the last attribute and the declared length exact, so the header already ends
    /// the message just after it: the CRC (RFC 8489 §14.7) covers the bytes before it as
    /// they are, without the copy stun-rs's `get_input_text` makes.
    fn fingerprint_ok(&self) -> bool {
        let Some(at) = self.fingerprint_at else {
            return true;
        };
        let (Some(covered), Some(value)) = (
            self.bytes.get(..at),
            self.bytes
                .get(at + ATTR_HEADER_LEN..at + ATTR_HEADER_LEN + FINGERPRINT_LEN),
        ) else {
            return false;
        };
        let expected = crc32fast::hash(covered) ^ FINGERPRINT_XOR;
        value == expected.to_be_bytes()
    }

    /// MESSAGE-INTEGRITY verifies with `pwd`: HMAC-SHA1 over the bytes before it, the
    /// header's length rewritten to end just after it (RFC 8489 §14.5), compared in
    /// constant time. Fed in two pieces, so the flood path copies nothing.
    fn integrity_ok(&self, pwd: &str) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let (Some(header), Some(body), Some(tag)) = (
            self.bytes.get(..HEADER_LEN),
            self.bytes.get(HEADER_LEN..at),
            self.bytes
                .get(at + ATTR_HEADER_LEN..at + ATTR_HEADER_LEN + MESSAGE_INTEGRITY_LEN),
        ) else {
            return false;
        };
        let Ok(len) = u16::try_from(at - HEADER_LEN + ATTR_HEADER_LEN + MESSAGE_INTEGRITY_LEN)
        else {
            return false;
        };
        // The short-term key is the OpaqueString-prepared password (RFC 8489 §9.1.1).
        // roomgate generates every password from ice-chars (ASCII letters, digits, '+',
        // '/'), which that preparation leaves as they are: the bytes are the key, with
        // no PRECIS pass per request.
        let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(pwd.as_bytes()) else {
            return false;
        };
        mac.update(&header[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&header[4..]);
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    }
}

/// Decide and build the answer to a Binding Request for a session whose credentials are
/// known. Order follows RFC 8489: a bad FINGERPRINT makes it not STUN (drop); then the
/// short-term credential checks of §9.1.3 (400, then 401); only an authenticated request
/// learns about unknown attributes (420, §6.3.1), and only it gets a success.
pub fn answer(view: &StunView<'_>, local: &crate::ice::Credentials, from: SocketAddr) -> Answer {
    answer_limited(view, local, from, |_| true)
}

/// As [`answer`], but an unauthenticated error response (400/401) is built only if
/// `may_reject` allows it, and is otherwise [`Answer::Drop`] with the same outcome. Such
/// a response goes wherever the (possibly spoofed) source says, so the caller rate-limits
/// it; the limiter, not this function, knows why it refused.
pub fn answer_limited(
    view: &StunView<'_>,
    local: &crate::ice::Credentials,
    from: SocketAddr,
    mut may_reject: impl FnMut(StunOutcome) -> bool,
) -> Answer {
    let mut limited_reject = |code: u16, reason: &str, outcome: StunOutcome| {
        if may_reject(outcome) {
            reject(view, code, reason, outcome)
        } else {
            Answer::Drop { outcome }
        }
    };
    if !view.is_binding_request() {
        return Answer::Drop {
            outcome: StunOutcome::NotARequest,
        };
    }
    if !view.fingerprint_ok() {
        return Answer::Drop {
            outcome: StunOutcome::BadFingerprint,
        };
    }
    if view.username.is_none() {
        return limited_reject(
            400,
            "Bad Request: USERNAME missing",
            StunOutcome::BadRequest,
        );
    }
    if view.integrity_at.is_none() {
        return limited_reject(
            400,
            "Bad Request: MESSAGE-INTEGRITY missing",
            StunOutcome::BadRequest,
        );
    }
    if view.server_ufrag() != Some(local.ufrag.as_str()) {
        return limited_reject(401, "Unauthenticated", StunOutcome::Unauthorized);
    }
    if !view.integrity_ok(&local.pwd) {
        // RFC 8489 §9.1.3: no MESSAGE-INTEGRITY on this error, we could not authenticate.
        return limited_reject(401, "Unauthenticated", StunOutcome::Unauthorized);
    }
    // Authenticated: only now the PRECIS-prepared key for the response's own integrity.
    let key = match HMACKey::new_short_term(&local.pwd) {
        Ok(k) => k,
        Err(e) => {
            // Our own pwd is ice-chars, so this means a bug upstream; we cannot
            // sign anything with it.
            tracing::warn!(error = %e, "session pwd rejected as HMAC key");
            return limited_reject(401, "Unauthenticated", StunOutcome::Unauthorized);
        }
    };

    let Ok(unknown) = view.unknown_comprehension_required() else {
        return Answer::Drop {
            outcome: StunOutcome::Malformed,
        };
    };
    if !unknown.is_empty() {
        // Authenticated, so the 420 is integrity-protected like any response to an
        // authenticated request; the client can trust the list.
        let msg = error_message(view, 420, "Unknown Attribute")
            .with_attribute(UnknownAttributes::from(unknown.as_slice()))
            .with_attribute(MessageIntegrity::new(key))
            .with_attribute(Fingerprint::default())
            .build();
        return match encode(&msg) {
            Some(response) => Answer::Reject {
                response,
                outcome: StunOutcome::UnknownAttribute,
            },
            None => encode_failed(),
        };
    }

    let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(TransactionId::from(view.transaction_id()))
        .with_attribute(XorMappedAddress::from(unmapped(from)))
        .with_attribute(MessageIntegrity::new(key))
        .with_attribute(Fingerprint::default())
        .build();
    match encode(&msg) {
        Some(response) => Answer::Success {
            response,
            use_candidate: view.use_candidate(),
        },
        None => encode_failed(),
    }
}

/// A 400 Bad Request (ERROR-CODE + FINGERPRINT, no MESSAGE-INTEGRITY) for `view`, for when
/// no session is known, e.g. the request has no USERNAME. `reason` is truncated to the RFC
/// limit. Returns an empty vector (send nothing) only if encoding fails, which the fixed
/// shape of the message makes unreachable in practice.
pub fn bad_request(view: &StunView<'_>, reason: &str) -> Vec<u8> {
    let msg = error_message(view, 400, reason)
        .with_attribute(Fingerprint::default())
        .build();
    encode(&msg).unwrap_or_default()
}

/// Error response without MESSAGE-INTEGRITY: the request was not (or could not be)
/// authenticated, so RFC 8489 §9.1.3 forbids it.
fn reject(view: &StunView<'_>, code: u16, reason: &str, outcome: StunOutcome) -> Answer {
    let msg = error_message(view, code, reason)
        .with_attribute(Fingerprint::default())
        .build();
    match encode(&msg) {
        Some(response) => Answer::Reject { response, outcome },
        None => encode_failed(),
    }
}

/// Error response skeleton: same method and transaction id as the request, ERROR-CODE.
fn error_message(view: &StunView<'_>, code: u16, reason: &str) -> StunMessageBuilder {
    // Only Binding Requests are answered.
    let builder = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
        .with_transaction_id(TransactionId::from(view.transaction_id()));
    // Callers pass literals, but bad_request is public: keep the phrase within the limit
    // and cut on a char boundary so it stays valid UTF-8.
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    match stun_rs::ErrorCode::new(code, &reason[..end]) {
        Ok(ec) => builder.with_attribute(ErrorCode::new(ec)),
        Err(e) => {
            // Only reachable with a code outside 300..700, i.e. a bug here; still send the
            // response, just without the code.
            tracing::error!(code, error = %e, "invalid STUN error code");
            builder
        }
    }
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; RESPONSE_BUF_LEN];
    match MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
    {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding a STUN response failed");
            None
        }
    }
}

/// Our responses have a fixed, small shape; failing to encode one is a bug, not input.
/// Send nothing rather than a broken response.
fn encode_failed() -> Answer {
    Answer::Drop {
        outcome: StunOutcome::Malformed,
    }
}

/// A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the client knows itself as
/// a.b.c.d, so XOR-MAPPED-ADDRESS must use the IPv4 family to match its candidate.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ice::test_crypto::{crc32, hmac_sha1};

    /// Recompute a trailing FINGERPRINT after a test edited the message, so only the
    /// check under test can notice the edit.
    fn reseal_fingerprint(msg: &mut [u8]) {
        let n = msg.len();
        let crc = crc32(&msg[..n - 8]) ^ 0x5354_554e;
        msg[n - 4..].copy_from_slice(&crc.to_be_bytes());
    }
    use crate::ice::Credentials;
    use stun_rs::attributes::ice::{IceControlling, Priority, UseCandidate};
    use stun_rs::attributes::stun::{Software, UserName};
    use stun_rs::{get_input_text, DecoderContextBuilder};

    const SRV_UFRAG: &str = "roomAsrv1";
    const CLI_UFRAG: &str = "cli9";
    const PWD: &str = "abcdefghijklmnopqrstuvwx";
    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn creds() -> Credentials {
        Credentials {
            ufrag: SRV_UFRAG.into(),
            pwd: PWD.into(),
        }
    }

    fn v4() -> SocketAddr {
        "198.51.100.7:40000".parse().unwrap()
    }

    fn v6() -> SocketAddr {
        "[2001:db8::1:2]:50000".parse().unwrap()
    }

    pub(crate) struct Req<'a> {
        pub username: Option<&'a str>,
        pub mi_pwd: Option<&'a str>,
        pub fingerprint: bool,
        pub use_candidate: bool,
    }

    impl Default for Req<'_> {
        fn default() -> Self {
            Req {
                username: Some("roomAsrv1:cli9"),
                mi_pwd: Some(PWD),
                fingerprint: true,
                use_candidate: false,
            }
        }
    }

    /// A client check as a browser sends it, built with stun-rs's encoder.
    pub(crate) fn request(r: Req<'_>) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(TID));
        if let Some(u) = r.username {
            b = b.with_attribute(UserName::new(u).unwrap());
        }
        b = b
            .with_attribute(Priority::new(0x6e7f_1eff))
            .with_attribute(IceControlling::new(0x1122_3344_5566_7788));
        if r.use_candidate {
            b = b.with_attribute(UseCandidate::default());
        }
        if let Some(p) = r.mi_pwd {
            b = b.with_attribute(MessageIntegrity::new(HMACKey::new_short_term(p).unwrap()));
        }
        if r.fingerprint {
            b = b.with_attribute(Fingerprint::default());
        }
        let mut buf = vec![0u8; 512];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &b.build())
            .unwrap();
        buf.truncate(n);
        buf
    }

    fn set_len(msg: &mut [u8], len: usize) {
        msg[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    }

    /// Appends MESSAGE-INTEGRITY and FINGERPRINT computed with our own SHA-1/CRC-32, not
    /// stun-rs: an independent construction of the RFC 8489 §14.5/§14.7 rules.
    fn seal(msg: &mut Vec<u8>, pwd: &str) {
        let attrs = msg.len() - HEADER_LEN;
        set_len(msg, attrs + 24);
        let mac = hmac_sha1(pwd.as_bytes(), msg);
        msg.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        msg.extend_from_slice(&mac);
        set_len(msg, attrs + 24 + 8);
        let crc = crc32(msg) ^ 0x5354_554e;
        msg.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
        msg.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode_response(bytes: &[u8]) -> StunMessage {
        MessageDecoderBuilder::default()
            .build()
            .decode(bytes)
            .unwrap()
            .0
    }

    fn error_code_of(msg: &StunMessage) -> u16 {
        msg.get::<ErrorCode>()
            .unwrap()
            .as_error_code()
            .unwrap()
            .error_code()
            .error_code()
    }

    fn expect_reject(a: Answer, code: u16, outcome: StunOutcome) -> StunMessage {
        let Answer::Reject {
            response,
            outcome: got,
        } = a
        else {
            panic!("expected reject, got {a:?}");
        };
        assert_eq!(got, outcome);
        let msg = decode_response(&response);
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        assert_eq!(msg.method(), BINDING);
        assert_eq!(msg.transaction_id().as_bytes(), &TID);
        assert_eq!(error_code_of(&msg), code);
        assert!(msg.get::<Fingerprint>().is_some());
        let fp_input = get_input_text::<Fingerprint>(&response).unwrap();
        assert!(msg
            .get::<Fingerprint>()
            .unwrap()
            .as_fingerprint()
            .unwrap()
            .validate(&fp_input));
        msg
    }

    fn check_success(from: SocketAddr, use_candidate: bool) {
        let req = request(Req {
            use_candidate,
            ..Req::default()
        });
        let view = parse(&req).unwrap();
        assert!(view.is_binding_request());
        assert_eq!(view.transaction_id(), TID);
        assert_eq!(view.server_ufrag(), Some(SRV_UFRAG));
        assert_eq!(view.client_ufrag(), Some(CLI_UFRAG));
        let Answer::Success {
            response,
            use_candidate: uc,
        } = answer(&view, &creds(), from)
        else {
            panic!("expected success");
        };
        assert_eq!(uc, use_candidate);

        // Decoding with the key and validation on makes stun-rs check MI and FINGERPRINT.
        let key = HMACKey::new_short_term(PWD).unwrap();
        let ctx = DecoderContextBuilder::default()
            .with_key(key)
            .with_validation()
            .build();
        let (msg, _) = MessageDecoderBuilder::default()
            .with_context(ctx)
            .build()
            .decode(&response)
            .unwrap();
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(msg.method(), BINDING);
        assert_eq!(msg.transaction_id().as_bytes(), &TID);
        let xma = msg.get::<XorMappedAddress>().unwrap();
        assert_eq!(*xma.as_xor_mapped_address().unwrap().socket_address(), from);
        assert!(msg.get::<MessageIntegrity>().is_some());
        assert!(msg.get::<Fingerprint>().is_some());

        // And independently of stun-rs: MI is at len-32, FINGERPRINT at len-8.
        let n = response.len();
        let mut pre = response[..n - 32].to_vec();
        set_len(&mut pre, n - HEADER_LEN - 8);
        assert_eq!(hmac_sha1(PWD.as_bytes(), &pre)[..], response[n - 28..n - 8]);
        let crc = crc32(&response[..n - 8]) ^ 0x5354_554e;
        assert_eq!(crc.to_be_bytes()[..], response[n - 4..]);
    }

    #[test]
    fn success_v4_and_v6() {
        check_success(v4(), false);
        check_success(v6(), false);
        check_success(v4(), true);
    }

    #[test]
    fn success_maps_v4_mapped_v6_to_v4() {
        let req = request(Req::default());
        let view = parse(&req).unwrap();
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
        let Answer::Success { response, .. } = answer(&view, &creds(), mapped) else {
            panic!("expected success");
        };
        let msg = decode_response(&response);
        let xma = msg.get::<XorMappedAddress>().unwrap();
        assert_eq!(*xma.as_xor_mapped_address().unwrap().socket_address(), v4());
    }

    #[test]
    fn success_without_fingerprint() {
        // FINGERPRINT is optional in STUN; we do not insist on it.
        let req = request(Req {
            fingerprint: false,
            ..Req::default()
        });
        let view = parse(&req).unwrap();
        assert!(matches!(
            answer(&view, &creds(), v4()),
            Answer::Success { .. }
        ));
    }

    #[test]
    fn a_limited_rejection_is_dropped_and_only_rejections_ask_the_limiter() {
        let forged = request(Req {
            mi_pwd: Some("wrongwrongwrongwrongwrong"),
            ..Req::default()
        });
        let view = parse(&forged).unwrap();
        let mut asked = Vec::new();
        let a = answer_limited(&view, &creds(), v4(), |o| {
            asked.push(o);
            false
        });
        assert!(matches!(
            a,
            Answer::Drop {
                outcome: StunOutcome::Unauthorized
            }
        ));
        assert_eq!(asked, [StunOutcome::Unauthorized]);
        // Allowed, it is the usual 401.
        expect_reject(
            answer_limited(&view, &creds(), v4(), |_| true),
            401,
            StunOutcome::Unauthorized,
        );
        // An authenticated check never asks.
        let good = request(Req::default());
        let view = parse(&good).unwrap();
        let a = answer_limited(&view, &creds(), v4(), |_| panic!("asked for a success"));
        assert!(matches!(a, Answer::Success { .. }));
    }

    #[test]
    fn wrong_pwd_is_401_without_mi() {
        let req = request(Req {
            mi_pwd: Some("wrongwrongwrongwrongwrong"),
            ..Req::default()
        });
        let view = parse(&req).expect("a wrong MI must not look malformed");
        let msg = expect_reject(
            answer(&view, &creds(), v4()),
            401,
            StunOutcome::Unauthorized,
        );
        assert!(msg.get::<MessageIntegrity>().is_none());
    }

    #[test]
    fn tampered_body_is_401() {
        let mut req = request(Req::default());
        // Flip a PRIORITY byte, then repair FINGERPRINT so only MI notices.
        let prio = req.windows(2).position(|w| w == [0x00, 0x24]).unwrap();
        req[prio + 4] ^= 0x01;
        reseal_fingerprint(&mut req);
        let view = parse(&req).unwrap();
        expect_reject(
            answer(&view, &creds(), v4()),
            401,
            StunOutcome::Unauthorized,
        );
    }

    #[test]
    fn missing_mi_is_400() {
        let req = request(Req {
            mi_pwd: None,
            ..Req::default()
        });
        let view = parse(&req).unwrap();
        let msg = expect_reject(answer(&view, &creds(), v4()), 400, StunOutcome::BadRequest);
        assert!(msg.get::<MessageIntegrity>().is_none());
    }

    #[test]
    fn missing_username_is_400() {
        let req = request(Req {
            username: None,
            ..Req::default()
        });
        let view = parse(&req).unwrap();
        assert_eq!(view.server_ufrag(), None);
        expect_reject(answer(&view, &creds(), v4()), 400, StunOutcome::BadRequest);
    }

    #[test]
    fn bad_request_helper() {
        let req = request(Req {
            username: None,
            ..Req::default()
        });
        let view = parse(&req).unwrap();
        let long = "é".repeat(200); // 400 bytes, multi-byte: exercises the truncation
        for reason in ["USERNAME missing", long.as_str()] {
            let response = bad_request(&view, reason);
            let msg = decode_response(&response);
            assert_eq!(msg.class(), MessageClass::ErrorResponse);
            assert_eq!(msg.transaction_id().as_bytes(), &TID);
            assert_eq!(error_code_of(&msg), 400);
            assert!(msg.get::<Fingerprint>().is_some());
            assert!(msg.get::<MessageIntegrity>().is_none());
        }
    }

    #[test]
    fn wrong_server_ufrag_is_401() {
        for username in ["otherufrag:cli9", "nocolon", ":cli9", "roomAsrv1:", "a:b:c"] {
            let req = request(Req {
                username: Some(username),
                ..Req::default()
            });
            let view = parse(&req).unwrap();
            let msg = expect_reject(
                answer(&view, &creds(), v4()),
                401,
                StunOutcome::Unauthorized,
            );
            assert!(msg.get::<MessageIntegrity>().is_none(), "{username}");
        }
    }

    #[test]
    fn corrupted_fingerprint_is_dropped() {
        let mut req = request(Req::default());
        let n = req.len();
        req[n - 1] ^= 0xFF;
        // MI is still fine: only the fingerprint is wrong, and that wins (drop).
        let view = parse(&req).unwrap();
        assert!(matches!(
            answer(&view, &creds(), v4()),
            Answer::Drop {
                outcome: StunOutcome::BadFingerprint
            }
        ));
    }

    #[test]
    fn unknown_comprehension_required_is_420_listing_it() {
        // 0x7FF0: comprehension-required range, unassigned in the IANA STUN registry.
        const UNKNOWN: u16 = 0x7FF0;
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(TID))
            .with_attribute(UserName::new("roomAsrv1:cli9").unwrap())
            .with_attribute(Software::new("abcd").unwrap())
            .with_attribute(Priority::new(1))
            .build();
        let mut req = vec![0u8; 256];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut req, &msg)
            .unwrap();
        req.truncate(n);
        // Re-type the SOFTWARE placeholder, then seal with our own HMAC and CRC.
        let sw = req.windows(2).position(|w| w == [0x80, 0x22]).unwrap();
        req[sw..sw + 2].copy_from_slice(&UNKNOWN.to_be_bytes());
        seal(&mut req, PWD);

        let view = parse(&req).unwrap();
        let resp = expect_reject(
            answer(&view, &creds(), v4()),
            420,
            StunOutcome::UnknownAttribute,
        );
        let list = resp.get::<UnknownAttributes>().unwrap();
        assert_eq!(
            list.as_unknown_attributes().unwrap().attributes(),
            &[UNKNOWN]
        );
        // The request was authenticated, so the 420 is integrity-protected.
        assert!(resp.get::<MessageIntegrity>().is_some());

        // The same unknown attribute with a wrong MI is just 401: unauthenticated senders
        // learn nothing about what we understand.
        let n = req.len();
        req[n - 20] ^= 1; // inside the MI value
        reseal_fingerprint(&mut req);
        let view = parse(&req).unwrap();
        expect_reject(
            answer(&view, &creds(), v4()),
            401,
            StunOutcome::Unauthorized,
        );
    }

    #[test]
    fn unknown_comprehension_optional_is_ignored() {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(TID))
            .with_attribute(UserName::new("roomAsrv1:cli9").unwrap())
            .with_attribute(Software::new("abcd").unwrap())
            .build();
        let mut req = vec![0u8; 256];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut req, &msg)
            .unwrap();
        req.truncate(n);
        let sw = req.windows(2).position(|w| w == [0x80, 0x22]).unwrap();
        req[sw..sw + 2].copy_from_slice(&0xC0DEu16.to_be_bytes());
        seal(&mut req, PWD);
        let view = parse(&req).unwrap();
        assert!(matches!(
            answer(&view, &creds(), v4()),
            Answer::Success { .. }
        ));
    }

    #[test]
    fn independently_built_request_verifies() {
        // Header + USERNAME + USE-CANDIDATE, all by hand, sealed with our own crypto:
        // checks that stun-rs's MI input reconstruction matches the RFC rule.
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&TID);
        let user = b"roomAsrv1:cli9"; // 14 bytes, 2 bytes of padding
        req.extend_from_slice(&[0x00, 0x06, 0x00, 14]);
        req.extend_from_slice(user);
        req.extend_from_slice(&[0, 0]);
        req.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        seal(&mut req, PWD);
        let view = parse(&req).unwrap();
        assert!(matches!(
            answer(&view, &creds(), v6()),
            Answer::Success {
                use_candidate: true,
                ..
            }
        ));
    }

    /// RFC 5769 §2.1 "Sample Request", typed in from the RFC.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, // Binding Request, length 88
        0x21, 0x12, 0xa4, 0x42, // magic cookie
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, // tid
        0x80, 0x22, 0x00, 0x10, // SOFTWARE, 16
        0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, // "STUN tes"
        0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, // "t client"
        0x00, 0x24, 0x00, 0x04, // PRIORITY
        0x6e, 0x00, 0x01, 0xff, //
        0x80, 0x29, 0x00, 0x08, // ICE-CONTROLLED
        0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, //
        0x00, 0x06, 0x00, 0x09, // USERNAME, 9
        0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, // "evtj:h6vY"+pad
        0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY
        0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, //
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, //
        0x80, 0x28, 0x00, 0x04, // FINGERPRINT
        0xe5, 0x7a, 0x3b, 0xcf, //
    ];

    #[test]
    fn rfc5769_sample_request_verifies() {
        let rfc = Credentials {
            ufrag: "evtj".into(),
            pwd: "VOkJxbRl1RmTxUk/WvJxBt".into(),
        };
        let view = parse(&RFC5769_REQUEST).unwrap();
        assert_eq!(view.server_ufrag(), Some("evtj"));
        assert_eq!(view.client_ufrag(), Some("h6vY"));
        let Answer::Success {
            response,
            use_candidate,
        } = answer(&view, &rfc, v4())
        else {
            panic!("RFC 5769 sample must verify");
        };
        assert!(!use_candidate);
        assert_eq!(&response[8..20], &RFC5769_REQUEST[8..20]);

        // Our own crypto agrees with the RFC's MI and FINGERPRINT values.
        let mut pre = RFC5769_REQUEST[..76].to_vec();
        set_len(&mut pre, 80);
        assert_eq!(
            hmac_sha1(b"VOkJxbRl1RmTxUk/WvJxBt", &pre)[..],
            RFC5769_REQUEST[80..100]
        );
        let crc = crc32(&RFC5769_REQUEST[..100]) ^ 0x5354_554e;
        assert_eq!(crc.to_be_bytes()[..], RFC5769_REQUEST[104..]);

        // One wrong pwd char: 401.
        let wrong = Credentials {
            pwd: "VOkJxbRl1RmTxUk/WvJxBu".into(),
            ..rfc
        };
        assert!(matches!(
            answer(&view, &wrong, v4()),
            Answer::Reject {
                outcome: StunOutcome::Unauthorized,
                ..
            }
        ));
    }

    #[test]
    fn responses_and_indications_are_not_requests() {
        let mut req = request(Req::default());
        // Binding Indication (0x0011) and Binding Success Response (0x0101), re-sealed.
        for msg_type in [[0x00, 0x11], [0x01, 0x01]] {
            req[0..2].copy_from_slice(&msg_type);
            reseal_fingerprint(&mut req);
            let view = parse(&req).unwrap();
            assert!(!view.is_binding_request());
            assert!(matches!(
                answer(&view, &creds(), v4()),
                Answer::Drop {
                    outcome: StunOutcome::NotARequest
                }
            ));
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let good = request(Req::default());
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![0]),
            ("19 bytes", good[..19].to_vec()),
            ("truncated mid-attribute", good[..good.len() - 3].to_vec()),
            (
                "truncated at attribute boundary",
                good[..good.len() - 8].to_vec(),
            ),
        ];
        let mut garbage = vec![0xAB; 20];
        garbage[0] = 0x00;
        cases.push(("20-byte header with garbage", garbage));
        let mut zeros = vec![0u8; 20];
        cases.push(("20 zero bytes (no cookie)", zeros.clone()));
        zeros.extend_from_slice(&[0; 40]);
        cases.push(("60 zero bytes", zeros));
        let mut huge = good.clone();
        huge[2..4].copy_from_slice(&[0xFF, 0xFC]);
        cases.push(("huge declared length", huge));
        let mut unaligned = good.clone();
        unaligned[3] = unaligned[3].wrapping_add(1);
        cases.push(("unaligned length", unaligned));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        cases.push(("trailing bytes", trailing));
        // USERNAME is the first attribute at offset 20; claim it runs past the end.
        let mut overrun = good.clone();
        overrun[22..24].copy_from_slice(&[0x04, 0x00]);
        cases.push(("attribute length past end", overrun));
        let mut after_fp = good.clone();
        after_fp.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = after_fp.len() - HEADER_LEN;
        set_len(&mut after_fp, len);
        cases.push(("attribute after FINGERPRINT", after_fp));
        let mut bad_utf8 = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        bad_utf8.extend_from_slice(&TID);
        bad_utf8.extend_from_slice(&[0x00, 0x06, 0x00, 0x02, 0xC3, 0x28, 0, 0]);
        cases.push(("USERNAME not UTF-8", bad_utf8));
        let mut many = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        many.extend_from_slice(&TID);
        for _ in 0..=MAX_ATTRIBUTES {
            many.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        }
        let len = many.len() - HEADER_LEN;
        set_len(&mut many, len);
        cases.push(("too many attributes", many));
        let mut short_mi = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        short_mi.extend_from_slice(&TID);
        short_mi.extend_from_slice(&[0x00, 0x08, 0x00, 0x04, 1, 2, 3, 4]);
        cases.push(("MI of 4 bytes", short_mi));
        let mut top_bits = good.clone();
        top_bits[0] |= 0x80;
        cases.push(("top bits set", top_bits));
        cases.push(("too long", vec![0u8; MAX_MESSAGE_LEN + 1]));

        for (name, bytes) in cases {
            assert!(parse(&bytes).is_err(), "{name} parsed");
        }
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz loop.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Runs one input through everything a datagram can reach. Must never panic.
    fn exercise(bytes: &[u8]) -> bool {
        match parse(bytes) {
            Ok(view) => {
                let _ = view.server_ufrag();
                let _ = view.client_ufrag();
                let _ = answer(&view, &creds(), v4());
                let _ = bad_request(&view, "fuzz");
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn fuzz_random_and_mutated_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds = [
            request(Req::default()),
            request(Req {
                use_candidate: true,
                ..Req::default()
            }),
            RFC5769_REQUEST.to_vec(),
        ];
        let mut parsed = 0;
        for i in 0..30_000 {
            let bytes = match i % 3 {
                // Pure noise, but with a STUN-looking header half of the time so the
                // attribute walk is reached.
                0 => {
                    let len = rng.below(200);
                    let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if len >= 20 && rng.below(2) == 0 {
                        b[0] &= 0x03;
                        b[4..8].copy_from_slice(&MAGIC_COOKIE);
                        let attrs = u16::try_from((len - 20) & !3).unwrap();
                        b[2..4].copy_from_slice(&attrs.to_be_bytes());
                        b.truncate(20 + usize::from(attrs));
                    }
                    b
                }
                // A few random byte edits to a valid request.
                _ => {
                    let mut b = seeds[rng.below(seeds.len())].clone();
                    for _ in 0..1 + rng.below(4) {
                        let pos = rng.below(b.len());
                        match rng.below(4) {
                            0 => b[pos] ^= 1 << rng.below(8),
                            1 => b[pos] = rng.next() as u8,
                            2 => b.truncate(pos),
                            _ => {
                                // Keep the header length consistent so mutations reach
                                // attribute parsing instead of failing at the header.
                                b[pos] = rng.next() as u8;
                                if b.len() >= 20 {
                                    let l = u16::try_from(b.len() - 20).unwrap_or(0);
                                    b[2..4].copy_from_slice(&l.to_be_bytes());
                                }
                            }
                        }
                        if b.is_empty() {
                            break;
                        }
                    }
                    b
                }
            };
            if exercise(&bytes) {
                parsed += 1;
            }
        }
        // The loop must actually reach answer() often, or it proves little.
        assert!(parsed > 1_000, "only {parsed} inputs parsed");
    }

    #[test]
    fn outcome_names_are_unique_snake_case() {
        let names: Vec<&str> = StunOutcome::ALL.iter().map(|o| o.name()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
            assert!(!names[..i].contains(n), "duplicate {n}");
        }
    }
}
