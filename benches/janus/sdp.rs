//! SDP the load generator sends to Janus: a subscriber's answer to Janus's offer (Janus
//! offers to subscribers) and the host candidate lines both roles carry.
use std::{fmt::Write as _, net::SocketAddr};

use crate::webrtc::{Answer, Kind};

/// `a=candidate` lines (one host candidate of the client socket) and `a=end-of-candidates`, so
/// Janus needs no trickle: the client gathered before it offered or answered.
pub fn candidate_lines(local: SocketAddr) -> Vec<String> {
    vec![
        format!(
            "a=candidate:1 1 udp 2130706431 {} {} typ host",
            local.ip(),
            local.port()
        ),
        "a=end-of-candidates".to_owned(),
    ]
}

/// The codec we accept for `kind` (Opus, VP8) and the RTCP feedback we ask for with it.
fn wanted(kind: &str) -> Option<(&'static str, &'static [&'static str])> {
    match kind {
        k if k == Kind::Audio.as_str() => Some(("opus", &[])),
        k if k == Kind::Video.as_str() => Some(("VP8", &["nack", "nack pli", "ccm fir"])),
        _ => None,
    }
}

/// Our answer to Janus's subscriber offer: every m-line in order with its mid, the offered
/// payload type of the codec we take, `recvonly`, BUNDLE and rtcp-mux, `setup:active`
/// (we are the DTLS client). Lines we cannot take are rejected with port 0.
pub fn subscriber_answer(
    offer: &Answer,
    ufrag: &str,
    pwd: &str,
    fingerprint: &str,
    local: SocketAddr,
) -> Result<String, String> {
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=- {} 2 IN IP4 {}\r\ns=-\r\nt=0 0\r\n",
        crate::webrtc::random_u32(),
        local.ip()
    );
    let mut accepted = Vec::new();
    let mut body = String::new();
    let mut any = false;
    for m in &offer.media {
        let mid = m
            .mid
            .clone()
            .ok_or_else(|| format!("offered {} m-line has no mid", m.kind))?;
        let chosen = wanted(&m.kind).and_then(|(name, fb)| {
            m.rtpmap
                .iter()
                .find(|(_, n, _)| n.eq_ignore_ascii_case(name))
                .map(|(pt, n, clock)| (*pt, n.clone(), *clock, fb))
        });
        let Some((pt, name, clock, fb)) = chosen else {
            let pts: Vec<String> = m.pts.iter().map(u8::to_string).collect();
            let _ = write!(
                body,
                "m={} 0 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=inactive\r\n",
                m.kind,
                pts.join(" ")
            );
            continue;
        };
        any = true;
        accepted.push(mid.clone());
        let _ = write!(
            body,
            "m={} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n\
             a=fingerprint:sha-256 {fingerprint}\r\na=setup:active\r\na=mid:{mid}\r\n\
             a=recvonly\r\na=rtcp-mux\r\n",
            m.kind
        );
        if name.eq_ignore_ascii_case("opus") {
            let _ = write!(body, "a=rtpmap:{pt} {name}/{clock}/2\r\n");
        } else {
            let _ = write!(body, "a=rtpmap:{pt} {name}/{clock}\r\n");
        }
        for f in fb {
            let _ = write!(body, "a=rtcp-fb:{pt} {f}\r\n");
        }
        if accepted.len() == 1 {
            for l in candidate_lines(local) {
                let _ = write!(body, "{l}\r\n");
            }
        }
    }
    if !any {
        return Err("Janus offered neither Opus nor VP8".into());
    }
    let _ = write!(s, "a=group:BUNDLE {}\r\n", accepted.join(" "));
    s.push_str("a=msid-semantic: WMS *\r\n");
    s.push_str(&body);
    Ok(s)
}
