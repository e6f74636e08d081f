//! SDP offer parsing and negotiation (offer -> answer), and the RFC 8840 fragments of
//! WHIP/WHEP PATCH.
//!
//! Whatever offer is accepted, the answer roomgate writes must parse back with the same
//! m-lines, its own credentials and exactly the accepted mids in BUNDLE: a browser
//! rejects anything else and the session is dead on arrival.

use std::net::SocketAddr;

use crate::ice::sdpfrag;
use crate::sdp::{
    build_answer, negotiate, parse_offer, AnswerParams, Codec, OutboundTrack, Role, Setup,
};

const UFRAG: &str = "room1+abcd";
const PWD: &str = "s3cretPasswordOf24Chars0";
const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

pub fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = sdpfrag::parse(&text);
    let Ok(offer) = parse_offer(&text) else {
        return;
    };
    let room_codecs = [
        codec(96, "VP8", 90_000, None, None),
        codec(111, "opus", 48_000, Some(2), None),
        codec(
            102,
            "H264",
            90_000,
            None,
            Some("packetization-mode=1;profile-level-id=42e01f"),
        ),
    ];
    let candidates: [SocketAddr; 2] = [
        SocketAddr::from(([203, 0, 113, 7], 7000)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 7000)),
    ];
    for (role, prefer) in [
        (Role::Publisher, &[][..]),
        (Role::Subscriber, &room_codecs[..]),
    ] {
        let Ok(negotiated) = negotiate(&offer, role, prefer) else {
            continue;
        };
        assert_eq!(negotiated.media.len(), offer.media.len());
        let outbound: Vec<Option<OutboundTrack>> = negotiated
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (role == Role::Subscriber && m.accepted).then(|| OutboundTrack {
                    ssrc: 1000 + i as u32,
                    rtx_ssrc: m.rtx_payload_type.map(|_| 2000 + i as u32),
                    cname: "roomgate".into(),
                    stream_id: "room1".into(),
                    track_id: format!("track{i}"),
                })
            })
            .collect();
        let answer = build_answer(
            &offer,
            &negotiated,
            &AnswerParams {
                ice_ufrag: UFRAG,
                ice_pwd: PWD,
                fingerprint_sha256: FP,
                candidates: &candidates,
                session_id: 42,
                outbound: &outbound,
            },
        );
        let back = parse_offer(&answer)
            .unwrap_or_else(|e| panic!("our answer does not parse: {e}\n{answer}"));
        assert_eq!(back.setup, Setup::Passive);
        assert_eq!(back.ice_ufrag, UFRAG);
        assert_eq!(back.ice_pwd, PWD);
        assert_eq!(back.fingerprint.value, FP);
        assert_eq!(back.media.len(), offer.media.len(), "{answer}");
        let accepted: Vec<&str> = negotiated.accepted().map(|m| m.mid.as_str()).collect();
        assert_eq!(back.bundle, accepted, "{answer}");
        for ((b, o), n) in back.media.iter().zip(&offer.media).zip(&negotiated.media) {
            assert_eq!(b.mid, o.mid, "{answer}");
            if n.accepted {
                assert!(b.rtcp_mux);
                assert_eq!(b.codecs.first(), n.codec.as_ref(), "{answer}");
            }
        }
    }
}

fn codec(pt: u8, name: &str, rate: u32, channels: Option<u8>, fmtp: Option<&str>) -> Codec {
    Codec {
        payload_type: pt,
        name: name.into(),
        clock_rate: rate,
        channels,
        fmtp: fmtp.map(str::to_owned),
        rtcp_fb: vec!["nack".into(), "nack pli".into(), "transport-cc".into()],
    }
}
