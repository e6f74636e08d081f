//! The STUN parser and the Binding responder.
//!
//! Random bytes almost never carry a valid MESSAGE-INTEGRITY, so the first input byte
//! selects fix-ups applied before parsing: the header length, the HMAC under the
//! session's password and the FINGERPRINT are recomputed as an honest client would. That
//! lets the fuzzer reach the authenticated paths (success, 420) and not only the rejects.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::ice::{answer, bad_request, parse, Answer, Credentials, StunOutcome};

/// The session the requests are answered for; the room part `lobby` + participant part.
pub const UFRAG: &str = "lobbyAbCd1234";
pub const PWD: &str = "s3cretPasswordOf24Chars0";

const FIX_LENGTH: u8 = 1;
const SIGN: u8 = 2;
const FINGERPRINT: u8 = 4;

pub fn stun(data: &[u8]) {
    if let Some(msg) = prepare(data) {
        check(&msg);
    }
}

/// The message after the fix-ups the first byte asks for.
fn prepare(data: &[u8]) -> Option<Vec<u8>> {
    let (&flags, message) = data.split_first()?;
    let mut msg = message.to_vec();
    if flags & FIX_LENGTH != 0 && msg.len() >= 20 && msg.len() - 20 <= usize::from(u16::MAX) {
        let body = (msg.len() - 20) as u16;
        msg[2..4].copy_from_slice(&body.to_be_bytes());
    }
    if flags & SIGN != 0 {
        sign(&mut msg);
    }
    if flags & FINGERPRINT != 0 {
        fingerprint(&mut msg);
    }
    Some(msg)
}

fn check(msg: &[u8]) {
    let Ok(view) = parse(msg) else {
        return;
    };
    let from: SocketAddr = "203.0.113.9:50000".parse().expect("literal address");
    let ours = Credentials {
        ufrag: UFRAG.into(),
        pwd: PWD.into(),
    };
    let txid = view.transaction_id();
    let (server, client) = (view.server_ufrag(), view.client_ufrag());
    assert_eq!(server.is_some(), client.is_some());
    let _ = view.use_candidate();
    match answer(&view, &ours, from) {
        Answer::Success { response, .. } => {
            assert_eq!(server, Some(UFRAG), "success for another session's ufrag");
            response_ok(&response, txid);
        }
        Answer::Reject { response, outcome } => {
            assert!(matches!(
                outcome,
                StunOutcome::BadRequest | StunOutcome::Unauthorized | StunOutcome::UnknownAttribute
            ));
            if outcome == StunOutcome::UnknownAttribute {
                assert_eq!(server, Some(UFRAG), "420 for another session's ufrag");
            }
            response_ok(&response, txid);
        }
        Answer::Drop { .. } => {}
    }
    // Another session's credentials must never authenticate this request.
    let theirs = Credentials {
        ufrag: UFRAG.into(),
        pwd: "anotherPasswordOf24Chars".into(),
    };
    if let Answer::Success { .. } = answer(&view, &theirs, from) {
        panic!("authenticated with the wrong password");
    }
    let reason = String::from_utf8_lossy(msg.get(20..).unwrap_or_default()).into_owned();
    let rejected = bad_request(&view, &reason);
    if !rejected.is_empty() {
        response_ok(&rejected, txid);
    }
}

/// A response we send must be well-formed STUN that our own parser accepts, must not be
/// a request, and must echo the transaction.
fn response_ok(response: &[u8], txid: [u8; 12]) {
    let view = parse(response).expect("our response parses");
    assert!(!view.is_binding_request());
    assert_eq!(view.transaction_id(), txid);
}

/// Attribute offsets and types, walked the way the framing allows; `None` on overrun.
fn attributes(msg: &[u8]) -> Vec<(usize, u16, usize)> {
    let mut out = Vec::new();
    let mut at = 20;
    while let Some(h) = msg.get(at..at + 4) {
        let ty = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        out.push((at, ty, len));
        at += 4 + len.next_multiple_of(4);
    }
    out
}

/// Recomputes the first MESSAGE-INTEGRITY (RFC 8489 14.5) under [`PWD`].
fn sign(msg: &mut [u8]) {
    let Some(&(at, _, 20)) = attributes(msg).iter().find(|(_, ty, _)| *ty == 0x0008) else {
        return;
    };
    if msg.len() < at + 24 {
        return;
    }
    let mut input = msg[..at].to_vec();
    let Ok(len) = u16::try_from(at + 24 - 20) else {
        return;
    };
    input[2..4].copy_from_slice(&len.to_be_bytes());
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(PWD.as_bytes()) else {
        return;
    };
    mac.update(&input);
    msg[at + 4..at + 24].copy_from_slice(&mac.finalize().into_bytes());
}

/// Recomputes a FINGERPRINT that is the last attribute (RFC 8489 14.7).
fn fingerprint(msg: &mut [u8]) {
    let Some(&(at, 0x8028, 4)) = attributes(msg).last() else {
        return;
    };
    if msg.len() != at + 8 {
        return;
    }
    let mut input = msg[..at].to_vec();
    let Ok(len) = u16::try_from(at + 8 - 20) else {
        return;
    };
    input[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(&input) ^ 0x5354_554e;
    msg[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/fuzz/seeds/stun/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).expect("seed exists")
    }

    fn answered(name: &str) -> Answer {
        let msg = prepare(&seed(name)).expect("has a flags byte");
        let view = parse(&msg).expect("seed parses");
        let ours = Credentials {
            ufrag: UFRAG.into(),
            pwd: PWD.into(),
        };
        answer(&view, &ours, "203.0.113.9:50000".parse().expect("address"))
    }

    /// The fix-ups really produce what an honest client sends, so the target reaches the
    /// authenticated paths and not only the rejects.
    #[test]
    fn seeds_reach_every_answer() {
        assert!(matches!(answered("signed"), Answer::Success { .. }));
        assert!(matches!(
            answered("use_candidate"),
            Answer::Success {
                use_candidate: true,
                ..
            }
        ));
        assert!(matches!(
            answered("unknown_attr"),
            Answer::Reject {
                outcome: StunOutcome::UnknownAttribute,
                ..
            }
        ));
        assert!(matches!(
            answered("wrong_session"),
            Answer::Reject {
                outcome: StunOutcome::Unauthorized,
                ..
            }
        ));
        assert!(matches!(
            answered("no_integrity"),
            Answer::Reject {
                outcome: StunOutcome::BadRequest,
                ..
            }
        ));
        // A flipped byte after signing is caught, so the signing is not vacuous.
        let mut msg = prepare(&seed("signed")).expect("flags byte");
        msg[30] ^= 1;
        let view = parse(&msg).expect("still framed");
        let ours = Credentials {
            ufrag: UFRAG.into(),
            pwd: PWD.into(),
        };
        assert!(!matches!(
            answer(&view, &ours, "203.0.113.9:50000".parse().expect("address")),
            Answer::Success { .. }
        ));
    }
}
