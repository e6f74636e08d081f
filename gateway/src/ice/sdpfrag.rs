//! RFC 8840 `application/trickle-ice-sdpfrag` bodies as WHIP/WHEP PATCH carries them
//! (RFC 9725 §4.3): the client's fragment in, roomgate's answer to an ICE restart out.
//!
//! roomgate is ICE-lite, so the client's candidates are never used: they are validated
//! (a malformed fragment is refused as a whole, so a client learns about its bug) and
//! counted, nothing more. What matters is whether the fragment carries new ICE
//! credentials, which is an ICE restart.
use std::net::SocketAddr;

use super::Credentials;

pub const CONTENT_TYPE: &str = "application/trickle-ice-sdpfrag";
/// Largest fragment accepted: a few candidates and credentials are well under 4 KiB.
pub const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// Lines in a fragment; a real one has a handful per candidate address.
const MAX_LINES: usize = 200;
/// RFC 8839 §5.4: ice-ufrag is 4 to 256 ice-chars, ice-pwd 22 to 256.
const UFRAG_LEN: std::ops::RangeInclusive<usize> = 4..=256;
const PWD_LEN: std::ops::RangeInclusive<usize> = 22..=256;
/// Host candidate priority, as in SDP answers: type preference 126, local preference
/// 65535, component 1 (RFC 8445 §5.1.2.1); later addresses get one less.
const HOST_PRIORITY: u32 = 2_130_706_431;

/// What a client's fragment says, once validated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// The client's ICE credentials (`a=ice-ufrag` and `a=ice-pwd`, at session level or
    /// in a media section; every occurrence equal). `None` for a fragment of candidates
    /// only.
    pub credentials: Option<Credentials>,
    /// `a=candidate` lines.
    pub candidates: usize,
    /// `a=end-of-candidates` was present.
    pub end_of_candidates: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("the fragment is empty")]
    Empty,
    #[error("the fragment has more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(
        "a=ice-ufrag and a=ice-pwd come together (RFC 8839 §5.4); the fragment has only {present}"
    )]
    HalfCredentials { present: &'static str },
    #[error("the fragment names two different {what} values")]
    Conflicting { what: &'static str },
}

/// Parse a fragment (CRLF or LF line endings). Only `a=`, `m=` and `c=` lines may appear
/// (RFC 8840 §9: session-level ICE attributes and media descriptions); a full SDP (`v=`,
/// `o=` ...) is not a fragment.
pub fn parse(text: &str) -> Result<Fragment, FragmentError> {
    let mut fragment = Fragment::default();
    let mut ufrag: Option<&str> = None;
    let mut pwd: Option<&str> = None;
    let mut lines = 0;
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        lines += 1;
        if lines > MAX_LINES {
            return Err(FragmentError::TooManyLines);
        }
        let number = index + 1;
        let bad = |reason: String| FragmentError::Line {
            line: number,
            reason,
        };
        if !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad("only printable ASCII is allowed".into()));
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(bad(format!("{line:?} is not an SDP line (<type>=<value>)")));
        };
        match kind {
            "a" => {
                let (name, arg) = match value.split_once(':') {
                    Some((n, a)) => (n, Some(a)),
                    None => (value, None),
                };
                match (name, arg) {
                    ("ice-ufrag", Some(v)) => {
                        credential(v, &UFRAG_LEN).map_err(|r| bad(format!("a=ice-ufrag {r}")))?;
                        set_once(&mut ufrag, v, "a=ice-ufrag")?;
                    }
                    ("ice-pwd", Some(v)) => {
                        credential(v, &PWD_LEN).map_err(|r| bad(format!("a=ice-pwd {r}")))?;
                        set_once(&mut pwd, v, "a=ice-pwd")?;
                    }
                    ("candidate", Some(v)) => {
                        candidate(v).map_err(|r| bad(format!("a=candidate: {r}")))?;
                        fragment.candidates += 1;
                    }
                    ("end-of-candidates", None) => fragment.end_of_candidates = true,
                    ("ice-ufrag" | "ice-pwd" | "candidate", None) => {
                        return Err(bad(format!("a={name} needs a value")));
                    }
                    ("end-of-candidates", Some(_)) => {
                        return Err(bad("a=end-of-candidates takes no value".into()));
                    }
                    // a=mid, a=ice-options, a=group, a=ice-lite ...: allowed, not needed.
                    (name, _) if is_token(name) => {}
                    (name, _) => return Err(bad(format!("bad attribute name {name:?}"))),
                }
            }
            "m" => media_line(value).map_err(|r| bad(format!("m= line: {r}")))?,
            "c" => {}
            other => {
                return Err(bad(format!(
                    "{other}= lines do not belong in an SDP fragment (a full SDP is not a fragment)"
                )))
            }
        }
    }
    if lines == 0 {
        return Err(FragmentError::Empty);
    }
    fragment.credentials = match (ufrag, pwd) {
        (Some(u), Some(p)) => Some(Credentials {
            ufrag: u.to_owned(),
            pwd: p.to_owned(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(FragmentError::HalfCredentials {
                present: "a=ice-ufrag",
            })
        }
        (None, Some(_)) => {
            return Err(FragmentError::HalfCredentials {
                present: "a=ice-pwd",
            })
        }
    };
    Ok(fragment)
}

/// roomgate's answer to an ICE restart, as RFC 9725 §4.3.2 shows it: its new
/// credentials and its host candidates. CRLF line endings.
pub fn restart_answer(credentials: &Credentials, candidates: &[SocketAddr]) -> String {
    let mut out = String::with_capacity(160 + 64 * candidates.len());
    out.push_str("a=ice-lite\r\n");
    out.push_str(&format!("a=ice-ufrag:{}\r\n", credentials.ufrag));
    out.push_str(&format!("a=ice-pwd:{}\r\n", credentials.pwd));
    for (i, addr) in candidates.iter().enumerate() {
        let priority = HOST_PRIORITY.saturating_sub(u32::try_from(i).unwrap_or(u32::MAX));
        out.push_str(&format!(
            "a=candidate:{} 1 udp {priority} {} {} typ host\r\n",
            i + 1,
            addr.ip().to_canonical(),
            addr.port()
        ));
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    what: &'static str,
) -> Result<(), FragmentError> {
    match slot {
        Some(existing) if *existing != value => Err(FragmentError::Conflicting { what }),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// ice-char per RFC 8839: ALPHA / DIGIT / "+" / "/".
fn credential(value: &str, len: &std::ops::RangeInclusive<usize>) -> Result<(), String> {
    if !len.contains(&value.len()) {
        return Err(format!(
            "must be {} to {} characters, not {}",
            len.start(),
            len.end(),
            value.len()
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err("must be ice-chars (A-Z a-z 0-9 + /)".into());
    }
    Ok(())
}

/// RFC 8839 §5.1: `foundation component transport priority address port typ type
/// *(extension)`. The address is not resolved: an mDNS name is as valid as an IP.
fn candidate(value: &str) -> Result<(), String> {
    let fields: Vec<&str> = value.split(' ').collect();
    if fields.len() < 8 {
        return Err(format!(
            "needs at least 8 fields (foundation component transport priority address port typ type), has {}",
            fields.len()
        ));
    }
    let foundation = fields[0];
    if foundation.is_empty()
        || foundation.len() > 32
        || !foundation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(format!("bad foundation {foundation:?}"));
    }
    if !matches!(fields[1].parse::<u16>(), Ok(1..=256)) {
        return Err(format!("bad component {:?}", fields[1]));
    }
    if !is_token(fields[2]) {
        return Err(format!("bad transport {:?}", fields[2]));
    }
    if fields[3].parse::<u32>().is_err() {
        return Err(format!("bad priority {:?}", fields[3]));
    }
    if fields[4].is_empty() || !fields[4].bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("bad address {:?}", fields[4]));
    }
    if fields[5].parse::<u16>().is_err() {
        return Err(format!("bad port {:?}", fields[5]));
    }
    if fields[6] != "typ" || !is_token(fields[7]) {
        return Err(format!(
            "expected \"typ <type>\", got {:?} {:?}",
            fields[6], fields[7]
        ));
    }
    Ok(())
}

/// `m=<media> <port> <proto> <fmt> ...` (RFC 8866 §5.14).
fn media_line(value: &str) -> Result<(), String> {
    let fields: Vec<&str> = value.split(' ').collect();
    if fields.len() < 4 {
        return Err("needs <media> <port> <proto> <fmt>".into());
    }
    if !is_token(fields[0]) {
        return Err(format!("bad media {:?}", fields[0]));
    }
    let port = fields[1].split_once('/').map_or(fields[1], |(p, _)| p);
    if port.parse::<u16>().is_err() {
        return Err(format!("bad port {:?}", fields[1]));
    }
    if !fields[2..]
        .iter()
        .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err("bad protocol or format".into());
    }
    Ok(())
}

/// RFC 8866 token characters (attribute names, transports, candidate types).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'{'
                        | b'|'
                        | b'}'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Chromium ICE restart fragment as a WHIP client sends it (RFC 9725 §4.3.2 shape).
    const RESTART: &str = "a=ice-ufrag:ysXw\r\n\
        a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag ysXw network-id 1\r\n\
        a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag ysXw network-id 2\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn a_restart_fragment_carries_the_new_credentials() {
        let f = parse(RESTART).unwrap();
        assert_eq!(
            f.credentials,
            Some(Credentials {
                ufrag: "ysXw".into(),
                pwd: "vw5LmwG4y/e6dPP/zAP9Gp5k".into()
            })
        );
        assert_eq!((f.candidates, f.end_of_candidates), (2, true));
    }

    #[test]
    fn a_trickle_fragment_may_be_candidates_only() {
        let f = parse("a=candidate:1 1 udp 2130706431 192.0.2.7 5000 typ host\n").unwrap();
        assert_eq!(f.credentials, None);
        assert_eq!(f.candidates, 1);
        let f = parse("a=end-of-candidates\r\n").unwrap();
        assert!(f.end_of_candidates);
        // Credentials at session level and in a media section agree: one set.
        let f = parse(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=group:BUNDLE 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
             a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
             a=candidate:1 1 udp 2130706431 abc.local 5000 typ host\r\n",
        )
        .unwrap();
        assert_eq!(f.credentials.unwrap().ufrag, "EsAw");
    }

    #[test]
    fn malformed_fragments_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("\r\n\r\n", "empty"),
            ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "do not belong"),
            (
                "a=ice-ufrag:abc\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n",
                "4 to 256",
            ),
            (
                "a=ice-ufrag:ab:cd\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n",
                "ice-chars",
            ),
            ("a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n", "22 to 256"),
            ("a=ice-ufrag:abcd\r\n", "only a=ice-ufrag"),
            ("a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n", "only a=ice-pwd"),
            (
                "a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n",
                "two different a=ice-ufrag",
            ),
            (
                "a=candidate:1 1 udp 2130706431 192.0.2.7\r\n",
                "at least 8 fields",
            ),
            (
                "a=candidate:1 1 udp high 192.0.2.7 5000 typ host\r\n",
                "bad priority",
            ),
            (
                "a=candidate:1 1 udp 1 192.0.2.7 99999 typ host\r\n",
                "bad port",
            ),
            (
                "a=candidate:1 1 udp 1 192.0.2.7 5000 type host\r\n",
                "typ <type>",
            ),
            ("a=candidate\r\n", "needs a value"),
            ("a=end-of-candidates:now\r\n", "takes no value"),
            ("m=audio\r\n", "m= line"),
            ("hello\r\n", "not an SDP line"),
            ("a=ice-ufrag:abcd\u{e9}\r\n", "printable ASCII"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
        let many = "a=end-of-candidates\n".repeat(MAX_LINES + 1);
        assert_eq!(parse(&many), Err(FragmentError::TooManyLines));
    }

    #[test]
    fn the_restart_answer_has_roomgates_credentials_and_candidates() {
        let answer = restart_answer(
            &Credentials {
                ufrag: "room1AbCd1234".into(),
                pwd: "abcdefghijklmnopqrstuvwx".into(),
            },
            &[
                "127.0.0.1:7000".parse().unwrap(),
                "[::1]:7000".parse().unwrap(),
            ],
        );
        assert_eq!(
            answer,
            "a=ice-lite\r\na=ice-ufrag:room1AbCd1234\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 7000 typ host\r\n\
             a=candidate:2 1 udp 2130706430 ::1 7000 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        // roomgate's own answer is a valid fragment.
        assert!(parse(&answer).unwrap().credentials.is_some());
    }
}
