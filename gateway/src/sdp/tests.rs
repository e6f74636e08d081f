//! Tests against offers written in the style of the clients roomgate serves.

use std::net::SocketAddr;

use super::*;

const CHROME_WHIP: &str = include_str!("testdata/chrome_whip.sdp");
const CHROME_WHEP: &str = include_str!("testdata/chrome_whep.sdp");
const FIREFOX: &str = include_str!("testdata/firefox_sendrecv.sdp");
const GSTREAMER: &str = include_str!("testdata/gstreamer_h264.sdp");
const OBS: &str = include_str!("testdata/obs_whip.sdp");
const DATACHANNEL: &str = include_str!("testdata/chrome_datachannel.sdp");
/// Chrome M120+ with `sendEncodings` rids q/h/f: no `a=ssrc` for the layers.
const CHROME_SIMULCAST: &str = include_str!("testdata/chrome_simulcast_whip.sdp");
/// Firefox 128 with `sendEncodings` rids a/b/c: one SSRC (plus RTX) per layer.
const FIREFOX_SIMULCAST: &str = include_str!("testdata/firefox_simulcast.sdp");
/// OBS-style (libdatachannel) WHIP simulcast: mid and rtp-stream-id only, SSRCs announced.
const OBS_SIMULCAST: &str = include_str!("testdata/obs_simulcast_whip.sdp");

const FIXTURES: &[(&str, &str)] = &[
    ("chrome_whip", CHROME_WHIP),
    ("chrome_whep", CHROME_WHEP),
    ("firefox_sendrecv", FIREFOX),
    ("gstreamer_h264", GSTREAMER),
    ("obs_whip", OBS),
    ("chrome_datachannel", DATACHANNEL),
    ("chrome_simulcast_whip", CHROME_SIMULCAST),
    ("firefox_simulcast", FIREFOX_SIMULCAST),
    ("obs_simulcast_whip", OBS_SIMULCAST),
];

const SERVER_FP: &str = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9";

/// Fixtures are stored with LF; browsers send CRLF.
fn crlf(sdp: &str) -> String {
    sdp.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn parse(sdp: &str) -> Offer {
    match parse_offer(&crlf(sdp)) {
        Ok(offer) => offer,
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

fn negotiated(sdp: &str, role: Role, prefer: &[Codec]) -> (Offer, Negotiated) {
    let offer = parse(sdp);
    match negotiate(&offer, role, prefer) {
        Ok(n) => (offer, n),
        Err(e) => panic!("negotiation failed: {e}"),
    }
}

fn chosen(n: &Negotiated, index: usize) -> &Codec {
    n.media[index]
        .codec
        .as_ref()
        .unwrap_or_else(|| panic!("m-line {index} has no codec: {:?}", n.media[index]))
}

/// Applies `f` to every line and drops the lines it maps to `None`.
fn edit(sdp: &str, f: impl FnMut(&str) -> Option<String>) -> String {
    sdp.lines().filter_map(f).map(|l| l + "\r\n").collect()
}

fn without_pts(sdp: &str, pts: &[u8]) -> String {
    edit(sdp, |l| {
        for pt in pts {
            for prefix in ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"] {
                if l.starts_with(&format!("{prefix}{pt} ")) {
                    return None;
                }
            }
        }
        if let Some(rest) = l.strip_prefix("m=") {
            let kept: Vec<&str> = rest
                .split(' ')
                .enumerate()
                .filter(|(i, w)| *i < 3 || !pts.iter().any(|pt| pt.to_string() == *w))
                .map(|(_, w)| w)
                .collect();
            return Some(format!("m={}", kept.join(" ")));
        }
        Some(l.to_owned())
    })
}

fn codec(name: &str, clock_rate: u32, channels: Option<u8>, fmtp: Option<&str>) -> Codec {
    Codec {
        payload_type: 100,
        name: name.to_owned(),
        clock_rate,
        channels,
        fmtp: fmtp.map(str::to_owned),
        rtcp_fb: Vec::new(),
    }
}

fn candidates() -> Vec<SocketAddr> {
    vec![
        "203.0.113.7:7000".parse().unwrap(),
        "[2001:db8::7]:7000".parse().unwrap(),
        "[::ffff:198.51.100.9]:7001".parse().unwrap(),
    ]
}

fn answer_for(offer: &Offer, n: &Negotiated, outbound: &[Option<OutboundTrack>]) -> String {
    let candidates = candidates();
    build_answer(
        offer,
        n,
        &AnswerParams {
            ice_ufrag: "room1+abcd",
            ice_pwd: "s3cretPasswordOf24Chars0",
            fingerprint_sha256: SERVER_FP,
            candidates: &candidates,
            session_id: 1234567890,
            outbound,
        },
    )
}

fn offer_err(sdp: &str) -> SdpError {
    match parse_offer(sdp) {
        Ok(_) => panic!("offer parsed but should not have"),
        Err(e) => e,
    }
}

fn negotiate_err(sdp: &str, role: Role) -> SdpError {
    let offer = parse(sdp);
    match negotiate(&offer, role, &[]) {
        Ok(n) => panic!("negotiation succeeded but should not have: {n:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

#[test]
fn parses_chrome_whip_offer() {
    let offer = parse(CHROME_WHIP);
    assert_eq!(offer.bundle, ["0", "1"]);
    assert_eq!(offer.ice_ufrag, "EsAw");
    assert_eq!(offer.ice_pwd, "bP+XJMM09aR8AiX1jdukzR6Y");
    assert!(!offer.ice_lite);
    assert_eq!(offer.setup, Setup::ActPass);
    assert_eq!(offer.fingerprint.algorithm, "sha-256");
    assert!(offer.fingerprint.value.starts_with("27:73:C8:B5"));
    assert_eq!(offer.media.len(), 2);

    let audio = &offer.media[0];
    assert_eq!(audio.kind, Some(MediaKind::Audio));
    assert_eq!(audio.media, "audio");
    assert_eq!(audio.mid, "0");
    assert_eq!(audio.port, 9);
    assert_eq!(audio.protocol, "UDP/TLS/RTP/SAVPF");
    assert_eq!(
        audio.formats,
        ["111", "63", "9", "0", "8", "13", "110", "126"]
    );
    assert_eq!(audio.direction, Direction::SendOnly);
    assert!(audio.rtcp_mux && audio.rtcp_rsize);
    let pts: Vec<u8> = audio.codecs.iter().map(|c| c.payload_type).collect();
    assert_eq!(pts, [111, 63, 9, 0, 8, 13, 110, 126]);
    let opus = &audio.codecs[0];
    assert_eq!(
        (opus.name.as_str(), opus.clock_rate, opus.channels),
        ("opus", 48000, Some(2))
    );
    assert_eq!(opus.fmtp.as_deref(), Some("minptime=10;useinbandfec=1"));
    assert_eq!(opus.rtcp_fb, ["transport-cc"]);
    assert_eq!(audio.ssrcs, [3735928559]);
    assert_eq!(
        audio.msid.as_deref(),
        Some("fdc2bb5b-e433-49e8-80cc-aaab8265ae1e a9d6e2e3-8769-4b84-92c6-98ee2558d5a6")
    );

    let video = &offer.media[1];
    assert_eq!(video.kind, Some(MediaKind::Video));
    assert_eq!(video.codecs.len(), 25);
    assert_eq!(video.codecs[0].name, "VP8");
    assert_eq!(
        video.codecs[0].rtcp_fb,
        ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    );
    assert_eq!(video.codecs[1].fmtp.as_deref(), Some("apt=96"));
}

#[test]
fn ssrcs_exclude_rtx_and_fec_repair_streams() {
    // Chrome: the FID group precedes the ssrc lines.
    assert_eq!(parse(CHROME_WHIP).media[1].ssrcs, [2847312221]);
    // Firefox: the FID group follows them.
    assert_eq!(parse(FIREFOX).media[1].ssrcs, [2290183265]);

    let sdp = edit(CHROME_WHIP, |l| {
        if l.starts_with("a=ssrc-group:FID") {
            Some(
                "a=ssrc-group:FID 2847312221 1120593447\r\n\
                 a=ssrc-group:FEC-FR 2847312221 77\r\n\
                 a=ssrc:77 cname:q8bG3Vn2xN0kLp7A\r\n\
                 a=ssrc:2847312221 cname:dup"
                    .to_owned(),
            )
        } else {
            Some(l.to_owned())
        }
    });
    let offer = parse_offer(&sdp).unwrap();
    assert_eq!(offer.media[1].ssrcs, [2847312221]);
}

#[test]
fn simulcast_group_keeps_every_layer() {
    let sdp = edit(CHROME_WHIP, |l| {
        if l.starts_with("a=ssrc-group:FID") {
            Some(
                "a=ssrc-group:SIM 10 20 30\r\na=ssrc-group:FID 10 11\r\n\
                 a=ssrc-group:FID 20 21\r\na=ssrc-group:FID 30 31\r\n\
                 a=ssrc:10 cname:x\r\na=ssrc:11 cname:x\r\na=ssrc:20 cname:x\r\n\
                 a=ssrc:21 cname:x\r\na=ssrc:30 cname:x\r\na=ssrc:31 cname:x"
                    .to_owned(),
            )
        } else if l.starts_with("a=ssrc:2847312221") || l.starts_with("a=ssrc:1120593447") {
            None
        } else {
            Some(l.to_owned())
        }
    });
    assert_eq!(parse_offer(&sdp).unwrap().media[1].ssrcs, [10, 20, 30]);
}

#[test]
fn lf_and_crlf_parse_the_same() {
    for (name, sdp) in FIXTURES {
        let lf = parse_offer(sdp).unwrap_or_else(|e| panic!("{name}: {e}"));
        let crlf = parse_offer(&crlf(sdp)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(lf, crlf, "{name}");
    }
}

#[test]
fn firefox_session_level_fingerprint_applies() {
    let offer = parse(FIREFOX);
    assert_eq!(offer.fingerprint.algorithm, "sha-256");
    assert!(offer.fingerprint.value.starts_with("B9:8F:D3"));
    assert_eq!(offer.ice_ufrag, "4bd2e7a9");
    assert_eq!(offer.setup, Setup::ActPass);
    assert_eq!(offer.media[0].direction, Direction::SendRecv);
    assert_eq!(offer.media[1].codecs[0].name, "VP8");
    // Static payload types with an rtpmap are kept, in m-line order.
    let pts: Vec<u8> = offer.media[0]
        .codecs
        .iter()
        .map(|c| c.payload_type)
        .collect();
    assert_eq!(pts, [109, 9, 0, 8, 101]);
}

#[test]
fn session_level_transport_is_the_fallback_and_media_level_wins() {
    let offer = parse(OBS);
    assert_eq!(offer.ice_ufrag, "Vc0x");
    assert_eq!(offer.ice_pwd, "kEaBkgbLu2Ffp3D1nG2ngF");
    assert_eq!(offer.setup, Setup::ActPass);
    assert!(offer.fingerprint.value.starts_with("92:E3"));
    assert_eq!(offer.media[0].port, 58713);

    let sdp = edit(OBS, |l| {
        if l == "a=mid:0" {
            Some("a=mid:0\r\na=ice-ufrag:Over\r\na=setup:active".to_owned())
        } else {
            Some(l.to_owned())
        }
    });
    let offer = parse_offer(&sdp).unwrap();
    assert_eq!(offer.ice_ufrag, "Over");
    assert_eq!(offer.ice_pwd, "kEaBkgbLu2Ffp3D1nG2ngF");
    assert_eq!(offer.setup, Setup::Active);
}

#[test]
fn session_level_direction_is_the_default() {
    let sdp = edit(OBS, |l| match l {
        "a=sendonly" => None,
        "t=0 0" => Some("t=0 0\r\na=recvonly".to_owned()),
        _ => Some(l.to_owned()),
    });
    let offer = parse_offer(&sdp).unwrap();
    assert!(offer
        .media
        .iter()
        .all(|m| m.direction == Direction::RecvOnly));
    let sdp = edit(OBS, |l| (l != "a=sendonly").then(|| l.to_owned()));
    let offer = parse_offer(&sdp).unwrap();
    assert!(offer
        .media
        .iter()
        .all(|m| m.direction == Direction::SendRecv));
}

#[test]
fn ice_lite_is_read_from_the_session_level() {
    let sdp = edit(OBS, |l| {
        if l == "t=0 0" {
            Some("t=0 0\r\na=ice-lite".to_owned())
        } else {
            Some(l.to_owned())
        }
    });
    assert!(parse_offer(&sdp).unwrap().ice_lite);
}

#[test]
fn sha256_fingerprint_is_preferred_and_normalized() {
    let sdp = edit(GSTREAMER, |l| {
        if let Some(fp) = l.strip_prefix("a=fingerprint:sha-256 ") {
            Some(format!(
                "a=fingerprint:SHA-1 fb:8d:54:06:31:da:6c:df:c6:01:cb:81:c9:78:2e:b0:17:a1:67:13\r\n\
                 a=fingerprint:SHA-256 {}",
                fp.to_ascii_lowercase()
            ))
        } else {
            Some(l.to_owned())
        }
    });
    let offer = parse_offer(&sdp).unwrap();
    assert_eq!(offer.fingerprint.algorithm, "sha-256");
    assert!(offer.fingerprint.value.starts_with("D4:53:1A:F1"));
}

#[test]
fn msid_falls_back_to_the_ssrc_attribute() {
    let offer = parse(GSTREAMER);
    assert_eq!(
        offer.media[0].msid.as_deref(),
        Some("user1372416170@host-6d3a1c0e webrtctransceiver0")
    );
    assert_eq!(offer.media[0].ssrcs, [1966382441]);
    assert!(!offer.media[0].rtcp_rsize);
    assert!(parse(CHROME_WHEP)
        .media
        .iter()
        .all(|m| m.msid.is_none() && m.ssrcs.is_empty()));
}

#[test]
fn rtcp_fb_wildcard_applies_to_every_codec() {
    let sdp = edit(GSTREAMER, |l| {
        if l == "a=rtcp-fb:96 nack" {
            Some("a=rtcp-fb:*  transport-cc\r\na=rtcp-fb:96 nack".to_owned())
        } else if l == "m=video 9 UDP/TLS/RTP/SAVPF 96" {
            Some("m=video 9 UDP/TLS/RTP/SAVPF 96 97".to_owned())
        } else if l == "a=rtpmap:96 H264/90000" {
            Some("a=rtpmap:96 H264/90000\r\na=rtpmap:97 rtx/90000".to_owned())
        } else {
            Some(l.to_owned())
        }
    });
    let offer = parse_offer(&sdp).unwrap();
    let codecs = &offer.media[0].codecs;
    assert_eq!(
        codecs[0].rtcp_fb,
        ["transport-cc", "nack", "nack pli", "ccm fir"]
    );
    assert_eq!(codecs[1].rtcp_fb, ["transport-cc"]);
}

#[test]
fn datachannel_media_has_no_kind_and_no_codecs() {
    let offer = parse(DATACHANNEL);
    let app = &offer.media[1];
    assert_eq!(app.kind, None);
    assert_eq!(app.media, "application");
    assert_eq!(app.protocol, "UDP/DTLS/SCTP");
    assert_eq!(app.formats, ["webrtc-datachannel"]);
    assert!(app.codecs.is_empty());
    assert_eq!(app.mid, "1");
}

fn syntax_line(e: &SdpError) -> usize {
    match e {
        SdpError::Syntax { line, .. } => *line,
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn malformed_offers_are_400_with_line_context() {
    // v=0 must come first.
    let e = offer_err(&CHROME_WHIP.replacen("v=0", "v=1", 1));
    assert_eq!((syntax_line(&e), e.http_status()), (1, 400));
    let e = offer_err(&format!("o=- 1 2 IN IP4 0.0.0.0\n{CHROME_WHIP}"));
    assert_eq!(syntax_line(&e), 1);

    // Not `x=value`.
    let e = offer_err(&CHROME_WHIP.replacen("s=-", "s:-", 1));
    assert_eq!(syntax_line(&e), 3);
    let e = offer_err(&CHROME_WHIP.replacen("s=-", "S=-", 1));
    assert_eq!(syntax_line(&e), 3);

    // m-line syntax.
    let e = offer_err(&GSTREAMER.replacen("m=video 9 ", "m=video 9/2 ", 1));
    assert_eq!(syntax_line(&e), 7);
    assert!(e.to_string().contains("port/count"), "{e}");
    let e = offer_err(&GSTREAMER.replacen("m=video 9 ", "m=video 70000 ", 1));
    assert_eq!(syntax_line(&e), 7);
    let e = offer_err(&GSTREAMER.replacen("UDP/TLS/RTP/SAVPF 96", "UDP/TLS/RTP/SAVPF", 1));
    assert_eq!(syntax_line(&e), 7);

    // Attributes roomgate acts on.
    for (from, to) in [
        ("a=rtpmap:96 H264/90000", "a=rtpmap:96 H264"),
        ("a=rtpmap:96 H264/90000", "a=rtpmap:200 H264/90000"),
        ("a=rtpmap:96 H264/90000", "a=rtpmap:96 H264/0"),
        ("a=rtpmap:96 H264/90000", "a=rtpmap:96 H264/90000/0"),
        ("a=rtcp-fb:96 nack pli", "a=rtcp-fb:x nack pli"),
        ("a=ssrc:1966382441 cname", "a=ssrc:-5 cname"),
        ("a=mid:video0", "a=mid:vid\"eo"),
        ("a=setup:actpass", "a=setup:server"),
        ("a=ice-ufrag:Jq2e", "a=ice-ufrag:J:q2e"),
        ("a=fingerprint:sha-256 D4:53", "a=fingerprint:sha-256 D4:5"),
        ("a=fingerprint:sha-256 D4:53:", "a=fingerprint:sha-256 "),
        ("a=sendonly", "a=sendonly\na=recvonly"),
    ] {
        let sdp = GSTREAMER.replacen(from, to, 1);
        assert_ne!(sdp, GSTREAMER, "{from}");
        let e = offer_err(&sdp);
        assert_eq!(e.http_status(), 400, "{to}: {e}");
        assert!(
            matches!(e, SdpError::Syntax { line, .. } if line > 6),
            "{to}: {e:?}"
        );
    }

    // A lone CR inside a line could inject lines into the answer.
    let e = offer_err(&GSTREAMER.replacen("a=mid:video0", "a=mid:video0\rX", 1));
    assert_eq!(syntax_line(&e), 13);
}

#[test]
fn missing_required_parts_are_named() {
    fn missing(sdp: &str) -> &'static str {
        match parse_offer(sdp) {
            Err(e @ SdpError::Missing { what }) => {
                assert_eq!(e.http_status(), 400);
                assert!(e.to_string().contains(what));
                what
            }
            other => panic!("expected Missing, got {other:?}"),
        }
    }
    assert_eq!(missing(""), "v=0 line");
    assert_eq!(missing("\r\n\r\n"), "v=0 line");
    let drop =
        |prefix: &'static str| edit(OBS, move |l| (!l.starts_with(prefix)).then(|| l.to_owned()));
    assert_eq!(missing(&drop("o=")), "o= line");
    assert_eq!(missing(&drop("a=ice-ufrag")), "a=ice-ufrag");
    assert_eq!(missing(&drop("a=ice-pwd")), "a=ice-pwd");
    assert_eq!(missing(&drop("a=fingerprint")), "a=fingerprint");
    assert_eq!(missing(&drop("a=setup")), "a=setup");
    assert_eq!(
        missing("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"),
        "m= line"
    );
}

#[test]
fn bounds_are_enforced() {
    // Total size.
    let padding = "a=x-pad\r\n".repeat(MAX_SDP_BYTES / 9 + 1);
    let e = offer_err(&format!("{}{padding}", crlf(OBS)));
    assert!(
        matches!(
            e,
            SdpError::TooLarge {
                max: MAX_SDP_BYTES,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 400);

    // Line length.
    let long = format!("a=x-long:{}", "y".repeat(MAX_LINE_BYTES));
    let e = offer_err(&OBS.replacen("t=0 0", &format!("t=0 0\n{long}"), 1));
    assert!(matches!(e, SdpError::LineTooLong { line: 5, .. }), "{e:?}");
    assert_eq!(e.http_status(), 400);
    // Exactly at the bound is fine.
    let fits = format!("a=x-long:{}", "y".repeat(MAX_LINE_BYTES - 9));
    assert!(parse_offer(&OBS.replacen("t=0 0", &format!("t=0 0\n{fits}"), 1)).is_ok());

    // m-lines.
    let section = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let at_limit = format!("{}{}", crlf(OBS), section.repeat(MAX_MEDIA - 2));
    assert_eq!(parse_offer(&at_limit).unwrap().media.len(), MAX_MEDIA);
    let e = offer_err(&format!("{at_limit}{section}"));
    assert!(
        matches!(
            e,
            SdpError::Limit {
                what: "m-lines",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 400);

    // Formats per m-line.
    let fmts: Vec<String> = (0..=MAX_CODECS).map(|pt| pt.to_string()).collect();
    let e = offer_err(&GSTREAMER.replacen("SAVPF 96", &format!("SAVPF {}", fmts.join(" ")), 1));
    assert!(matches!(e, SdpError::Limit { line: 7, .. }), "{e:?}");
    let ok = GSTREAMER.replacen("SAVPF 96", &format!("SAVPF {}", fmts[1..].join(" ")), 1);
    assert!(parse_offer(&ok).is_ok());
}

#[test]
fn duplicate_mids_are_rejected() {
    let e = offer_err(&CHROME_WHIP.replacen("a=mid:1", "a=mid:0", 1));
    assert!(
        matches!(&e, SdpError::DuplicateMid { mid, .. } if mid == "0"),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 400);
}

#[test]
fn unknown_lines_and_attributes_are_ignored() {
    let sdp = OBS.replacen(
        "t=0 0",
        "t=0 0\nb=AS:2000\nz=0 0\na=x-future-thing:1 2 3\na=\na=fmtp:abc",
        1,
    );
    assert_eq!(parse_offer(&sdp).unwrap(), parse_offer(OBS).unwrap());
}

// ---------------------------------------------------------------------------------------
// Negotiation

#[test]
fn chrome_whip_publisher_gets_opus_and_vp8() {
    let (_, n) = negotiated(CHROME_WHIP, Role::Publisher, &[]);
    assert_eq!(n.media.len(), 2);
    let audio = &n.media[0];
    assert!(audio.accepted);
    assert_eq!(
        (audio.mid.as_str(), audio.kind),
        ("0", Some(MediaKind::Audio))
    );
    assert_eq!(audio.direction, Direction::RecvOnly);
    assert_eq!(audio.ssrcs, [3735928559]);
    let opus = chosen(&n, 0);
    assert_eq!((opus.payload_type, opus.name.as_str()), (111, "opus"));
    assert_eq!(opus.fmtp.as_deref(), Some("minptime=10;useinbandfec=1"));
    // transport-cc stays because the transport-wide-cc extension is negotiated too.
    assert_eq!(opus.rtcp_fb, ["transport-cc"]);

    let video = &n.media[1];
    assert_eq!(video.direction, Direction::RecvOnly);
    assert_eq!(video.ssrcs, [2847312221]);
    let vp8 = chosen(&n, 1);
    assert_eq!((vp8.payload_type, vp8.name.as_str()), (96, "VP8"));
    assert_eq!(vp8.rtcp_fb, ["transport-cc", "ccm fir", "nack", "nack pli"]);
}

#[test]
fn prefer_picks_the_rooms_codec_keeping_the_offerers_payload_type() {
    // The room forwards constrained-baseline H.264 (a publisher's PT and level differ).
    let room = codec(
        "h264",
        90000,
        None,
        Some("profile-level-id=42E034;packetization-mode=1"),
    );
    let (_, n) = negotiated(CHROME_WHEP, Role::Subscriber, std::slice::from_ref(&room));
    let h264 = chosen(&n, 1);
    assert_eq!(h264.payload_type, 106);
    assert_eq!(
        h264.fmtp.as_deref(),
        Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
    );
    assert_eq!(
        h264.rtcp_fb,
        ["transport-cc", "ccm fir", "nack", "nack pli"]
    );
    // Audio falls back to the default: the room has no audio codec preference.
    assert_eq!(chosen(&n, 0).payload_type, 111);

    // Offer order decides between several matching preferences.
    let vp8 = codec("VP8", 90000, None, None);
    let vp9 = codec("VP9", 90000, None, Some("profile-id=0"));
    let (_, n) = negotiated(CHROME_WHEP, Role::Subscriber, &[vp9.clone(), room, vp8]);
    assert_eq!(chosen(&n, 1).payload_type, 96);

    // A room codec the client does not offer is ignored.
    let (_, n) = negotiated(GSTREAMER, Role::Publisher, &[vp9]);
    assert_eq!(chosen(&n, 0).payload_type, 96);
}

#[test]
fn auxiliary_formats_are_never_chosen() {
    let aux = [
        codec("rtx", 90000, None, Some("apt=96")),
        codec("red", 90000, None, None),
        codec("ulpfec", 90000, None, None),
        codec("red", 48000, Some(2), None),
        codec("telephone-event", 8000, None, None),
        codec("CN", 8000, None, None),
    ];
    let (_, n) = negotiated(CHROME_WHIP, Role::Publisher, &aux);
    assert_eq!(chosen(&n, 0).name, "opus");
    assert_eq!(chosen(&n, 1).name, "VP8");

    // Audio offering only redundancy, DTMF and comfort noise: rejected m-line.
    let sdp = without_pts(CHROME_WHIP, &[111, 9, 0, 8]);
    let (offer, n) = negotiated(&sdp, Role::Publisher, &aux);
    assert_eq!(offer.media[0].formats, ["63", "13", "110", "126"]);
    assert!(!n.media[0].accepted);
    assert!(n.media[1].accepted);
}

#[test]
fn h264_default_prefers_constrained_baseline_then_baseline() {
    // Chrome lists 42001f before 42e01f; constrained baseline still wins.
    let no_vp8 = without_pts(CHROME_WHIP, &[96]);
    let (_, n) = negotiated(&no_vp8, Role::Publisher, &[]);
    assert_eq!(chosen(&n, 1).payload_type, 106);

    let no_cb = without_pts(&no_vp8, &[106]);
    let (_, n) = negotiated(&no_cb, Role::Publisher, &[]);
    assert_eq!(chosen(&n, 1).payload_type, 102);

    // Only main/high profiles and packetization-mode 0 left: first mode-1 one, not VP9/AV1.
    let no_baseline = without_pts(&no_cb, &[102]);
    let (_, n) = negotiated(&no_baseline, Role::Publisher, &[]);
    assert_eq!(chosen(&n, 1).payload_type, 127);

    // GStreamer's 42c01f is neither tier but still H.264 mode 1.
    let (_, n) = negotiated(GSTREAMER, Role::Publisher, &[]);
    assert_eq!(chosen(&n, 0).payload_type, 96);
}

#[test]
fn h264_packetization_mode_0_only_has_no_shared_codec() {
    let sdp = GSTREAMER.replacen("packetization-mode=1;", "", 1);
    let e = negotiate_err(&sdp, Role::Publisher);
    assert_eq!(e, SdpError::NoSharedCodec);
    assert_eq!(e.http_status(), 406);

    // The same on one m-line of two only rejects that m-line.
    let video_pm0: Vec<u8> = vec![96, 102, 106, 127, 45, 98, 100, 112];
    let sdp = without_pts(CHROME_WHIP, &video_pm0);
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(offer.media[1].codecs.iter().any(|c| c.name == "H264"));
    assert!(n.media[0].accepted);
    assert!(!n.media[1].accepted);
    assert_eq!(n.media[1].codec, None);
    assert!(n.media[1].ssrcs.is_empty());
}

#[test]
fn subscriber_gets_sendonly_for_chrome_whep() {
    let (_, n) = negotiated(CHROME_WHEP, Role::Subscriber, &[]);
    for m in &n.media {
        assert!(m.accepted);
        assert_eq!(m.direction, Direction::SendOnly);
        assert!(m.ssrcs.is_empty());
    }
    assert_eq!(chosen(&n, 0).payload_type, 111);
    assert_eq!(chosen(&n, 1).payload_type, 96);
}

#[test]
fn wrong_direction_is_accepted_as_inactive() {
    // A WHEP offer sent to a WHIP endpoint and vice versa.
    let (_, n) = negotiated(CHROME_WHEP, Role::Publisher, &[]);
    assert!(n
        .media
        .iter()
        .all(|m| m.accepted && m.direction == Direction::Inactive));
    let (_, n) = negotiated(CHROME_WHIP, Role::Subscriber, &[]);
    assert!(n
        .media
        .iter()
        .all(|m| m.accepted && m.direction == Direction::Inactive));
    let inactive = OBS.replace("a=sendonly", "a=inactive");
    for role in [Role::Publisher, Role::Subscriber] {
        let (_, n) = negotiated(&inactive, role, &[]);
        assert!(n
            .media
            .iter()
            .all(|m| m.accepted && m.direction == Direction::Inactive));
    }
}

#[test]
fn firefox_sendrecv_works_for_both_roles() {
    let (_, n) = negotiated(FIREFOX, Role::Publisher, &[]);
    assert_eq!(n.media[0].direction, Direction::RecvOnly);
    assert_eq!(chosen(&n, 0).payload_type, 109);
    assert_eq!(chosen(&n, 1).payload_type, 120);
    assert_eq!(n.media[1].ssrcs, [2290183265]);
    let (_, n) = negotiated(FIREFOX, Role::Subscriber, &[]);
    assert!(n.media.iter().all(|m| m.direction == Direction::SendOnly));
}

#[test]
fn obs_offer_gets_opus_and_h264() {
    let (_, n) = negotiated(OBS, Role::Publisher, &[]);
    let opus = chosen(&n, 0);
    assert_eq!((opus.payload_type, opus.name.as_str()), (111, "opus"));
    let h264 = chosen(&n, 1);
    assert_eq!((h264.payload_type, h264.name.as_str()), (96, "H264"));
    assert_eq!(h264.rtcp_fb, ["nack", "nack pli"]);
    assert_eq!(n.media[1].ssrcs, [3155021587]);
}

#[test]
fn datachannel_and_port_zero_m_lines_are_rejected_not_fatal() {
    let (_, n) = negotiated(DATACHANNEL, Role::Publisher, &[]);
    assert!(n.media[0].accepted);
    assert!(!n.media[1].accepted);
    assert_eq!(n.media[1].kind, None);
    assert_eq!(n.media[1].mid, "1");

    // A stopped transceiver (port 0), even outside BUNDLE and without rtcp-mux.
    let sdp = CHROME_WHIP
        .replacen("m=video 9 ", "m=video 0 ", 1)
        .replacen("a=group:BUNDLE 0 1", "a=group:BUNDLE 0", 1)
        .replace("a=rtcp-mux\na=rtcp-rsize\na=rtpmap:96", "a=rtpmap:96");
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(n.media[0].accepted && !n.media[1].accepted);
}

#[test]
fn unserveable_offers_are_406() {
    type Check = Box<dyn Fn(&SdpError) -> bool>;
    let cases: Vec<(String, Check)> = vec![
        (
            CHROME_WHIP.replacen("a=group:BUNDLE 0 1\n", "", 1),
            Box::new(|e| *e == SdpError::NoBundle),
        ),
        (
            CHROME_WHIP.replacen("a=group:BUNDLE 0 1", "a=group:BUNDLE 0", 1),
            Box::new(|e| matches!(e, SdpError::NotBundled { mid } if mid == "1")),
        ),
        (
            GSTREAMER.replacen("a=mid:video0\n", "", 1),
            Box::new(|e| matches!(e, SdpError::NotBundled { mid } if mid.is_empty())),
        ),
        (
            OBS.replacen("a=rtcp-mux\n", "", 1),
            Box::new(|e| matches!(e, SdpError::NoRtcpMux { mid } if mid == "0")),
        ),
        (
            OBS.replace("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP"),
            Box::new(|e| matches!(e, SdpError::UnsupportedProtocol { protocol, .. } if protocol == "UDP/TLS/RTP/SAVP")),
        ),
        (
            OBS.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
            Box::new(|e| matches!(e, SdpError::UnsupportedProtocol { .. })),
        ),
        (
            OBS.replacen("a=setup:actpass", "a=setup:passive", 1),
            Box::new(|e| *e == SdpError::UnsupportedSetup { setup: Setup::Passive }),
        ),
        (
            OBS.replacen("a=setup:actpass", "a=setup:holdconn", 1),
            Box::new(|e| *e == SdpError::UnsupportedSetup { setup: Setup::HoldConn }),
        ),
        (
            OBS.replacen(
                "a=fingerprint:sha-256 92:E3:44:13:7F:1F:97:BD:F2:03:4A:D8:7A:0F:28:72:BF:3E:97:0E:74:70:B3:02:7C:21:29:FD:5A:AE:1F:82",
                "a=fingerprint:sha-1 fb:8d:54:06:31:da:6c:df:c6:01:cb:81:c9:78:2e:b0:17:a1:67:13",
                1,
            ),
            Box::new(|e| matches!(e, SdpError::NoSha256Fingerprint { algorithm } if algorithm == "sha-1")),
        ),
        (
            without_pts(CHROME_WHIP, &[111, 96, 102, 106, 127, 112]),
            Box::new(|e| *e == SdpError::NoSharedCodec),
        ),
        (
            without_pts(DATACHANNEL, &[111]),
            Box::new(|e| *e == SdpError::NoSharedCodec),
        ),
    ];
    for (sdp, expected) in cases {
        let e = negotiate_err(&sdp, Role::Publisher);
        assert!(expected(&e), "unexpected error {e:?}");
        assert_eq!(e.http_status(), 406, "{e}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn active_setup_is_accepted() {
    let (offer, _) = negotiated(
        &OBS.replacen("a=setup:actpass", "a=setup:active", 1),
        Role::Publisher,
        &[],
    );
    assert_eq!(offer.setup, Setup::Active);
}

#[test]
fn rtp_savpf_protocol_is_accepted() {
    let sdp = OBS.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVPF");
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(n.media.iter().all(|m| m.accepted));
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(answer.contains("m=audio 9 RTP/SAVPF 111\r\n"), "{answer}");
}

// ---------------------------------------------------------------------------------------
// Codec helpers

#[test]
fn same_format_rules() {
    let opus = codec("opus", 48000, Some(2), Some("minptime=10"));
    assert!(opus.same_format(&codec("OPUS", 48000, None, None)));
    assert!(!opus.same_format(&codec("opus", 16000, Some(2), None)));
    let pcmu = codec("PCMU", 8000, None, None);
    assert!(pcmu.same_format(&codec("pcmu", 8000, Some(1), None)));
    assert!(!pcmu.same_format(&codec("PCMU", 8000, Some(2), None)));
    assert!(!pcmu.same_format(&codec("PCMA", 8000, None, None)));

    let h264 = |fmtp: &str| codec("H264", 90000, None, Some(fmtp));
    let cb31 = h264("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f");
    assert!(cb31.same_format(&h264("packetization-mode=1;profile-level-id=42E034")));
    assert!(cb31.same_format(&h264(
        " profile-level-id = 42e00a ; packetization-mode = 1 "
    )));
    assert!(!cb31.same_format(&h264("packetization-mode=0;profile-level-id=42e01f")));
    assert!(!cb31.same_format(&h264("packetization-mode=1;profile-level-id=42001f")));
    assert!(!cb31.same_format(&h264("packetization-mode=1;profile-level-id=4d001f")));
    // Defaults: packetization-mode 0, profile-level-id 42001f.
    let bare = codec("H264", 90000, None, None);
    assert!(bare.same_format(&h264("packetization-mode=0;profile-level-id=420029")));
    assert!(!bare.same_format(&h264("packetization-mode=1")));
    assert!(h264("profile-level-id=zz").same_format(&h264("profile-level-id=ZZ")));

    let vp8 = codec("VP8", 90000, None, None);
    assert!(vp8.same_format(&codec("vp8", 90000, None, Some("max-fs=12288"))));
    assert!(!vp8.same_format(&codec("VP9", 90000, None, None)));
}

#[test]
fn kind_hints() {
    assert_eq!(
        codec("opus", 48000, Some(2), None).kind_hint(),
        Some(MediaKind::Audio)
    );
    assert_eq!(
        codec("VP8", 90000, None, None).kind_hint(),
        Some(MediaKind::Video)
    );
    assert_eq!(
        codec("h264", 90000, None, None).kind_hint(),
        Some(MediaKind::Video)
    );
    assert_eq!(codec("rtx", 90000, None, None).kind_hint(), None);
    assert_eq!(codec("x-unknown", 90000, None, None).kind_hint(), None);
}

// ---------------------------------------------------------------------------------------
// Answer

fn answer_lines(answer: &str) -> Vec<&str> {
    assert!(answer.ends_with("\r\n"));
    assert!(
        !answer.replace("\r\n", "").contains(['\r', '\n']),
        "every line ends with CRLF"
    );
    answer.split_terminator("\r\n").collect()
}

#[test]
fn publisher_answer_to_chrome() {
    let (offer, n) = negotiated(CHROME_WHIP, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None, None]);
    let lines = answer_lines(&answer);
    assert_eq!(
        lines[..8],
        [
            "v=0",
            "o=roomgate 1234567890 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=ice-lite",
            "a=group:BUNDLE 0 1",
            "a=extmap-allow-mixed",
            "a=msid-semantic: WMS *",
        ]
    );
    let audio_start = lines.iter().position(|l| l.starts_with("m=audio")).unwrap();
    let video_start = lines.iter().position(|l| l.starts_with("m=video")).unwrap();
    let fp_line = format!("a=fingerprint:sha-256 {SERVER_FP}");
    assert_eq!(
        lines[audio_start..video_start],
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            "a=ice-ufrag:room1+abcd",
            "a=ice-pwd:s3cretPasswordOf24Chars0",
            fp_line.as_str(),
            "a=setup:passive",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=recvonly",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtcp-fb:111 transport-cc",
            "a=candidate:1 1 udp 2130706431 203.0.113.7 7000 typ host",
            "a=candidate:2 1 udp 2130706430 2001:db8::7 7000 typ host",
            "a=candidate:3 1 udp 2130706429 198.51.100.9 7001 typ host",
            "a=end-of-candidates",
        ]
    );
    assert_eq!(
        lines[video_start..],
        [
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            "c=IN IP4 0.0.0.0",
            "a=mid:1",
            "a=ice-ufrag:room1+abcd",
            "a=ice-pwd:s3cretPasswordOf24Chars0",
            fp_line.as_str(),
            "a=setup:passive",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=recvonly",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:13 urn:3gpp:video-orientation",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            "a=rtpmap:96 VP8/90000",
            "a=rtcp-fb:96 transport-cc",
            "a=rtcp-fb:96 ccm fir",
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:96 nack pli",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=candidate:1 1 udp 2130706431 203.0.113.7 7000 typ host",
            "a=candidate:2 1 udp 2130706430 2001:db8::7 7000 typ host",
            "a=candidate:3 1 udp 2130706429 198.51.100.9 7001 typ host",
            "a=end-of-candidates",
        ]
    );
    // No simulcast offered, none answered; REMB is never promised.
    assert!(!answer.contains("a=rid") && !answer.contains("a=simulcast"));
    assert!(!answer.contains("goog-remb"));
}

#[test]
fn answers_parse_back_with_every_required_field() {
    for (name, sdp) in FIXTURES {
        for role in [Role::Publisher, Role::Subscriber] {
            let (offer, n) = negotiated(sdp, role, &[]);
            let outbound: Vec<Option<OutboundTrack>> = n
                .media
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    (role == Role::Subscriber).then(|| OutboundTrack {
                        ssrc: 1000 + i as u32,
                        rtx_ssrc: None,
                        cname: "roomgate".to_owned(),
                        stream_id: "room1".to_owned(),
                        track_id: format!("track{i}"),
                    })
                })
                .collect();
            let answer = answer_for(&offer, &n, &outbound);
            let back = parse_offer(&answer).unwrap_or_else(|e| panic!("{name}: {e}\n{answer}"));
            assert!(back.ice_lite, "{name}");
            assert_eq!(back.setup, Setup::Passive);
            assert_eq!(back.ice_ufrag, "room1+abcd");
            assert_eq!(back.ice_pwd, "s3cretPasswordOf24Chars0");
            assert_eq!(back.fingerprint.algorithm, "sha-256");
            assert_eq!(back.fingerprint.value, SERVER_FP);
            let accepted: Vec<&str> = n.accepted().map(|m| m.mid.as_str()).collect();
            assert_eq!(back.bundle, accepted, "{name}");
            assert_eq!(back.media.len(), offer.media.len());
            for ((b, o), neg) in back.media.iter().zip(&offer.media).zip(&n.media) {
                assert_eq!(b.mid, o.mid);
                assert_eq!(b.media, o.media);
                assert_eq!(b.protocol, o.protocol);
                if neg.accepted {
                    assert_eq!(b.port, 9);
                    assert!(b.rtcp_mux);
                    assert_eq!(b.rtcp_rsize, o.rtcp_rsize, "{name}");
                    assert_eq!(b.direction, neg.direction);
                    // The chosen codec, then its rtx format when RTX was agreed.
                    assert_eq!(b.codecs.first(), neg.codec.as_ref());
                    let rtx: Vec<(u8, Option<&str>)> = b.codecs[1..]
                        .iter()
                        .map(|c| (c.payload_type, c.fmtp.as_deref()))
                        .collect();
                    let apt = neg
                        .codec
                        .as_ref()
                        .map(|c| format!("apt={}", c.payload_type));
                    let expected: Vec<(u8, Option<&str>)> = neg
                        .rtx_payload_type
                        .map(|pt| (pt, apt.as_deref()))
                        .into_iter()
                        .collect();
                    assert_eq!(rtx, expected, "{name}");
                    let back_ext: Vec<(u8, Option<ExtensionKind>)> =
                        b.extmaps.iter().map(|e| (e.id, e.kind())).collect();
                    let negotiated_ext: Vec<(u8, Option<ExtensionKind>)> = neg
                        .extensions
                        .iter()
                        .map(|&(id, k)| (id, Some(k)))
                        .collect();
                    assert_eq!(back_ext, negotiated_ext, "{name}");
                    let back_rids: Vec<&str> = b.rids.iter().map(|r| r.id.as_str()).collect();
                    assert_eq!(back_rids, neg.rids, "{name}");
                    assert!(b.rids.iter().all(|r| r.direction == RidDirection::Recv));
                    let back_layers: Vec<&str> = b
                        .simulcast
                        .iter()
                        .flat_map(|s| s.recv.iter().map(|l| l.rid.as_str()))
                        .collect();
                    assert_eq!(back_layers, neg.rids, "{name}");
                } else {
                    assert_eq!(b.port, 0);
                    assert_eq!(b.direction, Direction::Inactive);
                    assert_eq!(b.formats[..], o.formats[..1]);
                }
                if role == Role::Subscriber && neg.accepted {
                    assert_eq!(b.ssrcs.len(), 1);
                    assert!(b.msid.as_deref().unwrap().starts_with("room1 track"));
                } else {
                    assert!(b.ssrcs.is_empty() && b.msid.is_none());
                }
            }
            // The same candidates on every accepted m-line.
            assert_eq!(
                answer.matches("a=candidate:").count(),
                3 * accepted.len(),
                "{name}"
            );
            assert_eq!(
                answer.matches("a=end-of-candidates").count(),
                accepted.len()
            );
            assert_eq!(back.extmap_allow_mixed, offer.extmap_allow_mixed, "{name}");
            assert!(!answer.contains("goog-remb"), "{name}");
        }
    }
}

#[test]
fn subscriber_answer_announces_outbound_ssrcs() {
    let (offer, n) = negotiated(CHROME_WHEP, Role::Subscriber, &[]);
    let outbound = [
        Some(OutboundTrack {
            ssrc: 11223344,
            rtx_ssrc: None,
            cname: "rg-7f3a".to_owned(),
            stream_id: "room1-alice".to_owned(),
            track_id: "audio-1".to_owned(),
        }),
        None,
    ];
    let answer = answer_for(&offer, &n, &outbound);
    let lines = answer_lines(&answer);
    let msid = lines
        .iter()
        .position(|l| *l == "a=msid:room1-alice audio-1")
        .unwrap();
    assert_eq!(
        lines[msid..msid + 3],
        [
            "a=msid:room1-alice audio-1",
            "a=ssrc:11223344 cname:rg-7f3a",
            "a=ssrc:11223344 msid:room1-alice audio-1",
        ]
    );
    assert!(lines[..msid].contains(&"a=sendonly"));
    assert_eq!(
        answer.matches("a=ssrc:").count(),
        2,
        "nothing on the video m-line"
    );
}

#[test]
fn rejected_m_lines_render_with_port_zero() {
    let (offer, n) = negotiated(DATACHANNEL, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None, None]);
    let lines = answer_lines(&answer);
    assert!(lines.contains(&"a=group:BUNDLE 0"));
    let app = lines
        .iter()
        .position(|l| l.starts_with("m=application"))
        .unwrap();
    assert_eq!(
        lines[app..],
        [
            "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 0.0.0.0",
            "a=mid:1",
            "a=inactive",
        ]
    );

    // Without a mid there is no a=mid line.
    let sdp = DATACHANNEL.replacen("a=mid:1\n", "", 1);
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(answer.ends_with(
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\n"
    ));

    // A rejected video m-line echoes its first offered format.
    let sdp = without_pts(CHROME_WHIP, &[96, 102, 106, 127, 45, 98, 100, 112]);
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(
        answer.contains(
            "\r\nm=video 0 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=inactive\r\n"
        ),
        "{answer}"
    );
    assert!(answer.contains("a=group:BUNDLE 0\r\n"));
}

#[test]
fn answer_without_rtcp_rsize_when_not_offered() {
    let (offer, n) = negotiated(GSTREAMER, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None]);
    assert!(!answer.contains("rtcp-rsize"));
    assert!(answer.contains("a=mid:video0\r\n"));
    assert!(answer.contains(
        "a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAH9oBQBbpUgAAAwACAAADAGQeMGVA,aM4NiA==\r\n"
    ));
}

#[test]
fn caller_values_cannot_break_lines() {
    let (offer, n) = negotiated(OBS, Role::Subscriber, &[]);
    let outbound = [
        Some(OutboundTrack {
            ssrc: 1,
            rtx_ssrc: None,
            cname: "c name\r\na=injected".to_owned(),
            stream_id: "room one\nx".to_owned(),
            track_id: String::new(),
        }),
        None,
    ];
    let answer = build_answer(
        &offer,
        &n,
        &AnswerParams {
            ice_ufrag: "ufrag\r\n",
            ice_pwd: "pwd pwd pwd pwd pwd pwd pwd",
            fingerprint_sha256: SERVER_FP,
            candidates: &[],
            session_id: 0,
            outbound: &outbound,
        },
    );
    let lines = answer_lines(&answer);
    assert!(!lines.iter().any(|l| l.starts_with("a=injected")));
    assert!(lines.contains(&"a=msid:room-one-x -"));
    assert!(lines.contains(&"a=ssrc:1 cname:cnamea=injected"));
    assert!(lines.contains(&"a=ice-ufrag:ufrag"));
    let back = parse_offer(&answer).unwrap();
    assert_eq!(back.media[0].msid.as_deref(), Some("room-one-x -"));
    // No candidates still terminates the (empty) candidate list.
    assert_eq!(answer.matches("a=end-of-candidates").count(), 2);
}

#[test]
fn answer_params_debug_hides_the_password() {
    let params = AnswerParams {
        ice_ufrag: "u",
        ice_pwd: "topsecretpassword",
        fingerprint_sha256: SERVER_FP,
        candidates: &[],
        session_id: 1,
        outbound: &[],
    };
    assert!(!format!("{params:?}").contains("topsecret"));
}

// ---------------------------------------------------------------------------------------
// Robustness

/// Runs the whole pipeline; must never panic, and every answer must parse back.
fn exercise(text: &str) {
    let Ok(offer) = parse_offer(text) else { return };
    let prefer = [
        codec(
            "H264",
            90000,
            None,
            Some("packetization-mode=1;profile-level-id=42e01f"),
        ),
        codec("opus", 48000, Some(2), None),
    ];
    for role in [Role::Publisher, Role::Subscriber] {
        for prefer in [&prefer[..], &[]] {
            let Ok(n) = negotiate(&offer, role, prefer) else {
                continue;
            };
            assert_eq!(n.media.len(), offer.media.len());
            let outbound: Vec<Option<OutboundTrack>> = n
                .media
                .iter()
                .map(|_| {
                    Some(OutboundTrack {
                        ssrc: 7,
                        rtx_ssrc: None,
                        cname: "c".to_owned(),
                        stream_id: "s".to_owned(),
                        track_id: "t".to_owned(),
                    })
                })
                .collect();
            let answer = answer_for(&offer, &n, &outbound);
            if let Err(e) = parse_offer(&answer) {
                panic!("answer does not parse back: {e}\n--- offer\n{text}\n--- answer\n{answer}");
            }
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn truncated_offers_never_panic() {
    for (_, sdp) in FIXTURES {
        for text in [sdp.to_string(), crlf(sdp)] {
            // Every cut around a line break (where parser state changes) plus a stride
            // through the rest keeps this quadratic test fast in debug builds.
            let near_break = |i: usize| {
                text.as_bytes()[i.saturating_sub(2)..(i + 1).min(text.len())].contains(&b'\n')
            };
            for end in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
                if end % 11 == 0 || near_break(end) {
                    exercise(&text[..end]);
                    exercise(&text[end..]);
                }
            }
        }
    }
}

#[test]
fn line_edits_never_panic() {
    for (_, sdp) in FIXTURES {
        let lines: Vec<&str> = sdp.lines().collect();
        for skip in 0..lines.len() {
            let dropped: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            exercise(&dropped.join("\r\n"));
            let mut doubled = lines.clone();
            doubled.insert(skip, lines[skip]);
            exercise(&doubled.join("\n"));
            // Every line cut at each of its separators.
            for (pos, _) in lines[skip].match_indices([':', ' ', '/', '=', ';']) {
                let mut cut = lines.clone();
                cut[skip] = &lines[skip][..pos];
                exercise(&cut.join("\n"));
                cut[skip] = &lines[skip][pos..];
                exercise(&cut.join("\n"));
            }
        }
    }
}

#[test]
fn garbled_offers_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let noise: &[&str] = &[
        "",
        " ",
        "  ",
        ":",
        "/",
        "=",
        "*",
        "\r",
        "\n",
        "\r\n",
        "\0",
        "é",
        "\u{85}",
        "0",
        "127",
        "128",
        "4294967295",
        "4294967296",
        "-1",
        "65535",
        "65536",
        "a=",
        "m=",
        "v=0",
        "FID",
        "BUNDLE",
        "opus/48000/2",
        "H264/90000",
        "packetization-mode=1",
        "profile-level-id=",
        "sha-256",
        "AB:",
        "9/2",
        "\u{1F600}",
    ];
    for (_, sdp) in FIXTURES {
        let bytes = sdp.as_bytes();
        for _ in 0..800 {
            let mut text = String::from_utf8_lossy(bytes).into_owned();
            for _ in 0..=rng.below(4) {
                let mut at = rng.below(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match rng.below(3) {
                    0 => text.insert_str(at, noise[rng.below(noise.len())]),
                    1 => {
                        let mut end = (at + rng.below(16)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    _ => {
                        let mut end = (at + 1).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, noise[rng.below(noise.len())]);
                    }
                }
            }
            exercise(&text);
        }
    }
}

#[test]
fn random_bytes_and_random_lines_never_panic() {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for _ in 0..2000 {
        let len = rng.below(2048);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&String::from_utf8_lossy(&bytes));
        let mut prefixed = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n".to_vec();
        prefixed.extend_from_slice(&bytes);
        exercise(&String::from_utf8_lossy(&prefixed));
    }

    // SDP-shaped lines in random order reach deeper than random bytes.
    let pieces: &[&str] = &[
        "a=group:BUNDLE 0 1",
        "a=group:BUNDLE",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 27:73:C8:B5:98:28:E6:49:5C:05:5C:FF:77:CC:FE:AF:FA:6F:9E:EA:35:A9:68:17:0A:2E:49:6A:79:E4:05:85",
        "a=setup:actpass",
        "a=setup:active",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
        "m=video 0 UDP/TLS/RTP/SAVPF 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:0",
        "a=mid:1",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=sendonly",
        "a=recvonly",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=rtpmap:98 H264/90000",
        "a=fmtp:98 packetization-mode=1",
        "a=fmtp:97 apt=96",
        "a=rtcp-fb:* nack",
        "a=rtcp-fb:96 goog-remb",
        "a=ssrc:1 cname:x",
        "a=ssrc:2 msid:a b",
        "a=ssrc-group:FID 1 2",
        "a=msid:s t",
        "a=ice-lite",
        "c=IN IP4 0.0.0.0",
    ];
    for _ in 0..20000 {
        let mut text = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
        for _ in 0..rng.below(40) {
            text.push_str(pieces[rng.below(pieces.len())]);
            text.push_str("\r\n");
        }
        exercise(&text);
    }
}

#[test]
fn bundle_only_m_lines_ride_the_bundle_transport() {
    // The max-bundle form: the second m-line has port 0 and a=bundle-only.
    let port_zero = |bundle_only: bool| {
        edit(CHROME_WHIP, move |l| match l.strip_prefix("m=video 9 ") {
            Some(rest) if bundle_only => Some(format!("m=video 0 {rest}\r\na=bundle-only")),
            Some(rest) => Some(format!("m=video 0 {rest}")),
            None => Some(l.to_owned()),
        })
    };
    let (o, n) = negotiated(&port_zero(true), Role::Publisher, &[]);
    assert!(
        o.media[1].bundle_only && o.media[1].port == 0,
        "{:?}",
        o.media[1]
    );
    assert!(n.media[1].accepted, "bundle-only video is accepted");
    let answer = answer_for(&o, &n, &[None, None]);
    assert!(answer.contains("a=group:BUNDLE 0 1"), "{answer}");
    // A port-0 m-line without bundle-only is still a rejection.
    let (_, n) = negotiated(&port_zero(false), Role::Publisher, &[]);
    assert!(!n.media[1].accepted);
}

#[test]
fn answer_has_a_session_level_fingerprint() {
    let offer = crlf(include_str!("testdata/chrome_datachannel.sdp"));
    let (o, n) = negotiated(&offer, Role::Publisher, &[]);
    let answer = answer_for(&o, &n, &vec![None; n.media.len()]);
    let first_m = answer.find("\r\nm=").expect("an m-line");
    assert!(
        answer[..first_m].contains("a=fingerprint:sha-256 "),
        "{answer}"
    );
}

// ---------------------------------------------------------------------------------------
// Header extensions and simulcast

const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Inserts `new` (one or more lines) after the first line starting with `after`.
fn insert_after(sdp: &str, after: &str, new: &str) -> String {
    let mut done = false;
    let out = edit(sdp, |l| {
        if !done && l.starts_with(after) {
            done = true;
            Some(format!("{l}\r\n{new}"))
        } else {
            Some(l.to_owned())
        }
    });
    assert!(done, "no line starts with {after:?}");
    out
}

/// Replaces the first line starting with `prefix` by `new` (`None` drops it).
fn replace_line(sdp: &str, prefix: &str, new: Option<&str>) -> String {
    let mut done = false;
    let out = edit(sdp, |l| {
        if !done && l.starts_with(prefix) {
            done = true;
            new.map(str::to_owned)
        } else {
            Some(l.to_owned())
        }
    });
    assert!(done, "no line starts with {prefix:?}");
    out
}

fn ids(m: &OfferedMedia) -> Vec<(u8, Option<Direction>, &str)> {
    m.extmaps
        .iter()
        .map(|e| (e.id, e.direction, e.uri.as_str()))
        .collect()
}

fn layers(streams: &[SimulcastStream]) -> Vec<(&str, bool)> {
    streams.iter().map(|s| (s.rid.as_str(), s.paused)).collect()
}

#[test]
fn parses_chrome_extmaps_and_allow_mixed() {
    let offer = parse(CHROME_SIMULCAST);
    assert!(offer.extmap_allow_mixed);
    let [audio, video] = &offer.media[..] else {
        panic!("two m-lines expected");
    };
    assert!(audio.extmap_allow_mixed && video.extmap_allow_mixed);
    assert_eq!(
        ids(audio),
        [
            (1, None, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            (
                2,
                None,
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            ),
            (3, None, TWCC_URI),
            (4, None, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        ]
    );
    // Unknown URIs are parsed and kept; negotiation drops them.
    let video_ids: Vec<u8> = video.extmaps.iter().map(|e| e.id).collect();
    assert_eq!(video_ids, [14, 2, 13, 3, 5, 6, 7, 8, 4, 10, 11]);
    assert_eq!(video.extmaps[0].kind(), None);
    assert_eq!(video.extmaps[9].kind(), Some(ExtensionKind::RtpStreamId));
}

#[test]
fn parses_chrome_rids_and_simulcast_without_ssrcs() {
    let video = &parse(CHROME_SIMULCAST).media[1];
    assert!(video.ssrcs.is_empty(), "Chrome announces no SSRC per layer");
    let rids: Vec<(&str, RidDirection)> = video
        .rids
        .iter()
        .map(|r| (r.id.as_str(), r.direction))
        .collect();
    assert_eq!(
        rids,
        [
            ("q", RidDirection::Send),
            ("h", RidDirection::Send),
            ("f", RidDirection::Send)
        ]
    );
    assert!(video.rids.iter().all(|r| r.params.is_none()));
    let simulcast = video.simulcast.as_ref().unwrap();
    assert_eq!(
        layers(&simulcast.send),
        [("q", false), ("h", false), ("f", false)]
    );
    assert!(simulcast.recv.is_empty());
    assert!(parse(CHROME_WHIP).media[1].simulcast.is_none());
}

#[test]
fn parses_firefox_simulcast_and_directional_extmaps() {
    let offer = parse(FIREFOX_SIMULCAST);
    assert!(!offer.extmap_allow_mixed);
    let audio = &offer.media[0];
    assert_eq!(
        ids(audio)[1],
        (
            2,
            Some(Direction::RecvOnly),
            "urn:ietf:params:rtp-hdrext:csrc-audio-level"
        )
    );
    let video = &offer.media[1];
    let simulcast = video.simulcast.as_ref().unwrap();
    assert_eq!(
        layers(&simulcast.send),
        [("a", false), ("b", false), ("c", false)]
    );
    // One media SSRC per layer; the RTX SSRCs of the FID groups are left out.
    assert_eq!(video.ssrcs, [2290183265, 1054779343, 3187263081]);
}

#[test]
fn simulcast_pause_alternatives_and_recv_lists() {
    let sdp = insert_after(
        CHROME_SIMULCAST,
        "a=rid:f send",
        "a=rid:x send\r\na=rid:r recv",
    );
    let sdp = replace_line(
        &sdp,
        "a=simulcast:",
        Some("a=simulcast: recv r send ~q;h,x;f"),
    );
    let video = &parse(&sdp).media[1];
    let simulcast = video.simulcast.as_ref().unwrap();
    assert_eq!(
        layers(&simulcast.send),
        [("q", true), ("h", false), ("f", false)]
    );
    assert_eq!(layers(&simulcast.recv), [("r", false)]);
    assert_eq!(video.rids[3].id, "x");
}

#[test]
fn rid_params_are_kept_and_restrict_payload_types() {
    let sdp = replace_line(
        CHROME_SIMULCAST,
        "a=rid:q send",
        Some("a=rid:q send pt=102,106;max-width=320;max-height=180"),
    );
    let rid = &parse(&sdp).media[1].rids[0];
    assert_eq!(
        rid.params.as_deref(),
        Some("pt=102,106;max-width=320;max-height=180")
    );
    assert!(rid.allows_payload_type(106));
    assert!(!rid.allows_payload_type(96));
    assert!(parse(CHROME_SIMULCAST).media[1].rids[0].allows_payload_type(96));

    // VP8 (96) is chosen, so the layer limited to H.264 cannot be received.
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert_eq!(n.media[1].rids, ["h", "f"]);
}

#[test]
fn session_level_extmaps_apply_to_every_m_line() {
    let sdp = insert_after(
        OBS,
        "a=fingerprint:",
        &format!("a=extmap:3 {TWCC_URI}\r\na=extmap:5 urn:example:unknown"),
    );
    let offer = parse(&sdp);
    for m in &offer.media {
        assert_eq!(
            ids(m)[..2],
            [(3, None, TWCC_URI), (5, None, "urn:example:unknown")]
        );
    }
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    for m in &n.media {
        assert_eq!(m.extensions, [(3, ExtensionKind::TransportWideCc)]);
    }
    // The same mapping repeated at media level is not a conflict.
    let again = insert_after(&sdp, "a=mid:1", &format!("a=extmap:3 {TWCC_URI}"));
    assert_eq!(parse(&again).media[1].extmaps.len(), 2);
}

#[test]
fn extmap_ids_follow_allow_mixed() {
    // OBS offers no a=extmap-allow-mixed: only the one-byte range is valid.
    let with = |line: &str| insert_after(OBS, "a=mid:1", line);
    let ok = parse(&with("a=extmap:14 urn:3gpp:video-orientation"));
    assert_eq!(ok.media[1].extmaps[0].id, 14);
    assert!(!ok.media[1].extmap_allow_mixed);

    // Chrome allows mixed at session level: 15..=255 are valid.
    for id in [15, 200, 255] {
        let sdp = replace_line(
            CHROME_WHIP,
            "a=extmap:13 ",
            Some(&format!("a=extmap:{id} urn:3gpp:video-orientation")),
        );
        let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
        assert_eq!(
            n.media[1].extension_id(ExtensionKind::VideoOrientation),
            Some(id)
        );
        assert!(n.media[1].extmap_allow_mixed);
        let answer = answer_for(&offer, &n, &[None, None]);
        assert!(answer.contains(&format!("a=extmap:{id} urn:3gpp:video-orientation\r\n")));
        parse_offer(&answer).unwrap();
    }

    // Media-level allow-mixed counts even when it follows the extmap line, and the
    // answer repeats it on that m-line only.
    let sdp = with("a=extmap:16 urn:3gpp:video-orientation\r\na=extmap-allow-mixed");
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(!offer.extmap_allow_mixed && !n.extmap_allow_mixed);
    assert!(!n.media[0].extmap_allow_mixed && n.media[1].extmap_allow_mixed);
    let answer = answer_for(&offer, &n, &[None, None]);
    let lines = answer_lines(&answer);
    let video_start = lines.iter().position(|l| l.starts_with("m=video")).unwrap();
    let mixed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == "a=extmap-allow-mixed")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(mixed.len(), 1);
    assert!(mixed[0] > video_start);
    parse_offer(&answer).unwrap();
}

#[test]
fn bad_extmaps_are_400() {
    let with = |line: &str| insert_after(OBS, "a=mid:1", line);
    let line_of_insert = OBS.lines().position(|l| l == "a=mid:1").unwrap() + 2;
    for (bad, needle) in [
        ("a=extmap:0 urn:3gpp:video-orientation", "not in 1..=255"),
        ("a=extmap:256 urn:3gpp:video-orientation", "not in 1..=255"),
        (
            "a=extmap:99999 urn:3gpp:video-orientation",
            "not in 1..=255",
        ),
        ("a=extmap:123456 urn:3gpp:video-orientation", "not a number"),
        ("a=extmap:x urn:3gpp:video-orientation", "not a number"),
        ("a=extmap:+3 urn:3gpp:video-orientation", "not a number"),
        ("a=extmap:-3 urn:3gpp:video-orientation", "not a number"),
        ("a=extmap: urn:3gpp:video-orientation", "needs"),
        ("a=extmap:3", "needs"),
        ("a=extmap:3/upward urn:3gpp:video-orientation", "direction"),
        ("a=extmap:3 not-a-uri", "not a URI"),
        (
            "a=extmap:15 urn:3gpp:video-orientation",
            "need a=extmap-allow-mixed",
        ),
        (
            "a=extmap:100 urn:3gpp:video-orientation",
            "need a=extmap-allow-mixed",
        ),
    ] {
        let Err(e) = parse_offer(&with(bad)) else {
            panic!("{bad} parsed");
        };
        assert_eq!(e.http_status(), 400, "{bad}");
        assert_eq!(syntax_line(&e), line_of_insert, "{bad}: {e}");
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }

    // One ID naming two URIs on the same m-line: the second line is the error.
    let e = offer_err(&with(
        "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:2 urn:3gpp:video-orientation",
    ));
    assert_eq!(
        (e.http_status(), syntax_line(&e)),
        (400, line_of_insert + 1),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("line {line_of_insert}")),
        "{e}"
    );

    // A media-level mapping conflicting with a session-level one.
    let sdp = insert_after(
        OBS_SIMULCAST,
        "a=fingerprint:",
        "a=extmap:1 urn:3gpp:video-orientation",
    );
    let e = offer_err(&sdp);
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("urn:3gpp:video-orientation"), "{e}");

    // The same ID twice at session level.
    let sdp = insert_after(
        OBS,
        "a=fingerprint:",
        &format!("a=extmap:3 {TWCC_URI}\r\na=extmap:3 urn:3gpp:video-orientation"),
    );
    assert_eq!(offer_err(&sdp).http_status(), 400);

    // Mapping one URI to two IDs is legal (RFC 8285 §5); the first is negotiated.
    let sdp = with(&format!("a=extmap:7 {TWCC_URI}\r\na=extmap:8 {TWCC_URI}"));
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert_eq!(
        n.media[1].extension_id(ExtensionKind::TransportWideCc),
        Some(7)
    );
}

#[test]
fn bad_rids_and_simulcast_are_400() {
    let rid_line = CHROME_SIMULCAST
        .lines()
        .position(|l| l == "a=rid:q send")
        .unwrap()
        + 1;
    let long = "r".repeat(256);
    let bad_rid_line = |to: &str| replace_line(CHROME_SIMULCAST, "a=rid:q send", Some(to));
    for (to, needle) in [
        ("a=rid:q! send".to_owned(), "A-Z a-z 0-9 - _"),
        ("a=rid:q.1 send".to_owned(), "A-Z a-z 0-9 - _"),
        (format!("a=rid:{long} send"), "1 to 255"),
        ("a=rid:q sideways".to_owned(), "not send or recv"),
        ("a=rid:q".to_owned(), "needs"),
        ("a=rid:h send".to_owned(), "second a=rid"),
    ] {
        let e = offer_err(&bad_rid_line(&to));
        assert_eq!(e.http_status(), 400, "{to}");
        assert!(e.to_string().contains(needle), "{to}: {e}");
        let line = syntax_line(&e);
        assert!(line == rid_line || line == rid_line + 1, "{to}: {e}");
    }
    // 255 characters is the longest valid RID.
    let longest = "r".repeat(255);
    let ok = bad_rid_line(&format!("a=rid:{longest} send"));
    let ok = replace_line(
        &ok,
        "a=simulcast:",
        Some(&format!("a=simulcast:send {longest};h;f")),
    );
    let (offer, n) = negotiated(&ok, Role::Publisher, &[]);
    assert_eq!(n.media[1].rids[0], longest);
    parse_offer(&answer_for(&offer, &n, &[None, None])).unwrap();

    let sim_line = CHROME_SIMULCAST
        .lines()
        .position(|l| l.starts_with("a=simulcast:"))
        .unwrap()
        + 1;
    for (to, needle) in [
        ("a=simulcast:send q;h;z", "no a=rid line"),
        ("a=simulcast:send q;h,z;f", "no a=rid line"),
        ("a=simulcast:send q;h;~z", "no a=rid line"),
        ("a=simulcast:send q;h;f;q", "twice"),
        ("a=simulcast:send q;;f", "A-Z a-z 0-9 - _"),
        ("a=simulcast:send q;h;f;", "A-Z a-z 0-9 - _"),
        ("a=simulcast:send ~", "A-Z a-z 0-9 - _"),
        ("a=simulcast:send q;h!;f", "A-Z a-z 0-9 - _"),
        ("a=simulcast:send", "needs"),
        ("a=simulcast:send q;h;f recv", "needs"),
        ("a=simulcast:send q send h", "two send lists"),
        ("a=simulcast:sideways q;h;f", "not send or recv"),
        ("a=simulcast:recv q;h;f", "declares send"),
        (
            "a=simulcast:send q;h;f\na=simulcast:send q;h;f",
            "second a=simulcast",
        ),
    ] {
        let sdp = replace_line(CHROME_SIMULCAST, "a=simulcast:", Some(to));
        let e = offer_err(&sdp);
        assert_eq!(e.http_status(), 400, "{to}");
        assert!(e.to_string().contains(needle), "{to}: {e}");
        let line = syntax_line(&e);
        assert!(line == sim_line || line == sim_line + 1, "{to}: {e}");
    }
}

#[test]
fn too_many_rids_are_a_400_limit() {
    let extra: Vec<String> = (0..14).map(|i| format!("a=rid:x{i} send")).collect();
    let sdp = insert_after(CHROME_SIMULCAST, "a=rid:f send", &extra.join("\r\n"));
    let e = offer_err(&sdp);
    assert!(matches!(e, SdpError::Limit { max: 16, .. }), "{e:?}");
    assert_eq!(e.http_status(), 400);
}

#[test]
fn chrome_simulcast_publisher_negotiation() {
    let (_, n) = negotiated(CHROME_SIMULCAST, Role::Publisher, &[]);
    assert!(n.extmap_allow_mixed);
    let audio = &n.media[0];
    assert_eq!(
        audio.extensions,
        [
            (1, ExtensionKind::AudioLevel),
            (2, ExtensionKind::AbsSendTime),
            (3, ExtensionKind::TransportWideCc),
            (4, ExtensionKind::Mid),
        ]
    );
    assert!(audio.rids.is_empty());
    let video = &n.media[1];
    // toffset, playout-delay, content-type, timing and color-space are not offered back.
    assert_eq!(
        video.extensions,
        [
            (2, ExtensionKind::AbsSendTime),
            (13, ExtensionKind::VideoOrientation),
            (3, ExtensionKind::TransportWideCc),
            (4, ExtensionKind::Mid),
            (10, ExtensionKind::RtpStreamId),
            (11, ExtensionKind::RepairedRtpStreamId),
        ]
    );
    assert_eq!(video.rids, ["q", "h", "f"]);
    assert!(video.ssrcs.is_empty());
    assert_eq!(video.direction, Direction::RecvOnly);
    assert_eq!(
        chosen(&n, 1).rtcp_fb,
        ["transport-cc", "ccm fir", "nack", "nack pli"]
    );
}

#[test]
fn chrome_simulcast_publisher_answer() {
    let (offer, n) = negotiated(CHROME_SIMULCAST, Role::Publisher, &[]);
    let answer = answer_for(&offer, &n, &[None, None]);
    let lines = answer_lines(&answer);
    assert_eq!(lines[5..7], ["a=group:BUNDLE 0 1", "a=extmap-allow-mixed"]);
    let video_start = lines.iter().position(|l| l.starts_with("m=video")).unwrap();
    let fp_line = format!("a=fingerprint:sha-256 {SERVER_FP}");
    assert_eq!(
        lines[video_start..lines.len() - 4],
        [
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            "c=IN IP4 0.0.0.0",
            "a=mid:1",
            "a=ice-ufrag:room1+abcd",
            "a=ice-pwd:s3cretPasswordOf24Chars0",
            fp_line.as_str(),
            "a=setup:passive",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=recvonly",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:13 urn:3gpp:video-orientation",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            "a=rtpmap:96 VP8/90000",
            "a=rtcp-fb:96 transport-cc",
            "a=rtcp-fb:96 ccm fir",
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:96 nack pli",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=rid:q recv",
            "a=rid:h recv",
            "a=rid:f recv",
            "a=simulcast:recv q;h;f",
        ]
    );
    let back = parse_offer(&answer).unwrap();
    let simulcast = back.media[1].simulcast.as_ref().unwrap();
    assert!(simulcast.send.is_empty());
    assert_eq!(
        layers(&simulcast.recv),
        [("q", false), ("h", false), ("f", false)]
    );
}

#[test]
fn firefox_simulcast_publisher() {
    let (offer, n) = negotiated(FIREFOX_SIMULCAST, Role::Publisher, &[]);
    // csrc-audio-level is unknown and recvonly: neither reason lets it through.
    assert_eq!(
        n.media[0].extensions,
        [(1, ExtensionKind::AudioLevel), (3, ExtensionKind::Mid)]
    );
    // Firefox offers no transport-cc feedback for opus.
    assert!(chosen(&n, 0).rtcp_fb.is_empty());
    let video = &n.media[1];
    assert_eq!(
        video.extensions,
        [
            (3, ExtensionKind::Mid),
            (4, ExtensionKind::AbsSendTime),
            (7, ExtensionKind::TransportWideCc),
            (8, ExtensionKind::RtpStreamId),
            (9, ExtensionKind::RepairedRtpStreamId),
        ]
    );
    assert_eq!(video.rids, ["a", "b", "c"]);
    assert_eq!(video.ssrcs, [2290183265, 1054779343, 3187263081]);
    assert_eq!(
        chosen(&n, 1).rtcp_fb,
        ["nack", "nack pli", "ccm fir", "transport-cc"]
    );
    assert!(!n.extmap_allow_mixed);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(!answer.contains("a=extmap-allow-mixed"));
    assert!(answer.contains(
        "\r\na=rid:a recv\r\na=rid:b recv\r\na=rid:c recv\r\na=simulcast:recv a;b;c\r\n"
    ));
}

#[test]
fn obs_offers() {
    // Plain OBS: no extensions, so no transport-cc, and REMB is not promised.
    let (offer, n) = negotiated(OBS, Role::Publisher, &[]);
    assert!(n
        .media
        .iter()
        .all(|m| m.extensions.is_empty() && m.rids.is_empty()));
    assert_eq!(chosen(&n, 1).rtcp_fb, ["nack", "nack pli"]);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(!answer.contains("extmap") && !answer.contains("simulcast"));

    // OBS-style simulcast: mid and rtp-stream-id, SSRCs announced per layer.
    let (offer, n) = negotiated(OBS_SIMULCAST, Role::Publisher, &[]);
    assert_eq!(n.media[0].extensions, [(1, ExtensionKind::Mid)]);
    let video = &n.media[1];
    assert_eq!(
        video.extensions,
        [(1, ExtensionKind::Mid), (2, ExtensionKind::RtpStreamId)]
    );
    assert_eq!(video.rids, ["0", "1", "2"]);
    assert_eq!(video.ssrcs, [3155021587, 3155021588, 3155021589]);
    assert_eq!(chosen(&n, 1).name, "H264");
    assert_eq!(chosen(&n, 1).rtcp_fb, ["nack", "nack pli"]);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(answer.contains("a=simulcast:recv 0;1;2\r\n"));
    assert!(!answer.contains("transport-cc"));
}

#[test]
fn more_than_three_layers_keep_the_first_three_active() {
    let four = insert_after(CHROME_SIMULCAST, "a=rid:f send", "a=rid:x send");
    let sdp = replace_line(&four, "a=simulcast:", Some("a=simulcast:send q;h;f;x"));
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert_eq!(n.media[1].rids, ["q", "h", "f"]);
    assert_eq!(MAX_SIMULCAST_LAYERS, 3);

    // Paused streams are not counted; alternatives resolve to the first.
    let sdp = replace_line(&four, "a=simulcast:", Some("a=simulcast:send ~q;h,x;f"));
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert_eq!(n.media[1].rids, ["h", "f"]);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(answer.contains("\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv h;f\r\n"));
    assert!(!answer.contains("a=rid:q") && !answer.contains("a=rid:x"));

    let sdp = replace_line(&four, "a=simulcast:", Some("a=simulcast:send ~q;~h;~f;x"));
    assert_eq!(
        negotiated(&sdp, Role::Publisher, &[]).1.media[1].rids,
        ["x"]
    );
    let sdp = replace_line(&four, "a=simulcast:", Some("a=simulcast:send ~q;~h;~f;~x"));
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(n.media[1].rids.is_empty());
    assert!(!answer_for(&offer, &n, &[None, None]).contains("a=simulcast"));
}

#[test]
fn simulcast_without_rtp_stream_id_is_answered_without_simulcast() {
    let sdp = replace_line(
        CHROME_SIMULCAST,
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        None,
    );
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    let video = &n.media[1];
    assert!(video.accepted);
    assert!(video.rids.is_empty());
    assert_eq!(video.extension_id(ExtensionKind::RtpStreamId), None);
    // The repair extension is still understood for a later RTX stream.
    assert_eq!(
        video.extension_id(ExtensionKind::RepairedRtpStreamId),
        Some(11)
    );
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(!answer.contains("a=rid") && !answer.contains("a=simulcast"));
}

#[test]
fn subscriber_gets_no_rid_extensions_and_no_simulcast() {
    let (offer, n) = negotiated(CHROME_WHEP, Role::Subscriber, &[]);
    let video = &n.media[1];
    assert_eq!(video.direction, Direction::SendOnly);
    assert_eq!(
        video.extensions,
        [
            (2, ExtensionKind::AbsSendTime),
            (13, ExtensionKind::VideoOrientation),
            (3, ExtensionKind::TransportWideCc),
            (4, ExtensionKind::Mid),
        ]
    );
    assert!(video.rids.is_empty());
    assert_eq!(
        chosen(&n, 1).rtcp_fb,
        ["transport-cc", "ccm fir", "nack", "nack pli"]
    );
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(!answer.contains("rtp-stream-id"));

    // A simulcast offer for the wrong role gets an inactive m-line and no layers.
    let (_, n) = negotiated(CHROME_SIMULCAST, Role::Subscriber, &[]);
    assert_eq!(n.media[1].direction, Direction::Inactive);
    assert!(n.media[1].rids.is_empty());
    // A subscriber asking to receive simulcast is answered with one stream.
    let sdp = insert_after(
        CHROME_WHEP,
        "a=extmap:11 ",
        "a=rid:lo recv\r\na=rid:hi recv\r\na=simulcast:recv lo;hi",
    );
    let (offer, n) = negotiated(&sdp, Role::Subscriber, &[]);
    assert!(n.media[1].rids.is_empty());
    assert!(!answer_for(&offer, &n, &[None, None]).contains("a=simulcast"));
}

#[test]
fn extensions_are_filtered_by_media_kind() {
    // Video-only extensions offered on audio and the other way round.
    let sdp = insert_after(
        CHROME_WHIP,
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:13 urn:3gpp:video-orientation\r\na=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    );
    let sdp = insert_after(
        &sdp,
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    );
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    let kinds = |i: usize| -> Vec<ExtensionKind> {
        n.media[i].extensions.iter().map(|&(_, k)| k).collect()
    };
    assert!(!kinds(0).contains(&ExtensionKind::VideoOrientation));
    assert!(!kinds(0).contains(&ExtensionKind::RtpStreamId));
    assert!(!kinds(1).contains(&ExtensionKind::AudioLevel));
}

#[test]
fn transport_cc_feedback_only_with_the_extension() {
    let sdp = replace_line(CHROME_WHIP, &format!("a=extmap:3 {TWCC_URI}"), None);
    // The first match is the audio m-line's; drop the video one too.
    let no_twcc = replace_line(&sdp, &format!("a=extmap:3 {TWCC_URI}"), None);
    let (offer, n) = negotiated(&no_twcc, Role::Publisher, &[]);
    assert!(chosen(&n, 0).rtcp_fb.is_empty());
    assert_eq!(chosen(&n, 1).rtcp_fb, ["ccm fir", "nack", "nack pli"]);
    assert!(!answer_for(&offer, &n, &[None, None]).contains("transport-cc"));

    // Only audio lost it: video keeps the feedback.
    let (_, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert!(chosen(&n, 0).rtcp_fb.is_empty());
    assert_eq!(chosen(&n, 1).rtcp_fb[0], "transport-cc");
}

#[test]
fn extension_directions_follow_the_role() {
    let sdp = replace_line(
        FIREFOX,
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        Some("a=extmap:1/recvonly urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    );
    let sdp = replace_line(
        &sdp,
        "a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        Some("a=extmap:4/sendonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    );
    // The offerer only receives audio levels: useless to roomgate as a receiver.
    let (offer, n) = negotiated(&sdp, Role::Publisher, &[]);
    assert_eq!(n.media[0].extension_id(ExtensionKind::AudioLevel), None);
    assert_eq!(n.media[1].extension_id(ExtensionKind::AbsSendTime), Some(4));
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(answer.contains(
        "\r\na=extmap:4/recvonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    ));

    let (offer, n) = negotiated(&sdp, Role::Subscriber, &[]);
    assert_eq!(n.media[0].extension_id(ExtensionKind::AudioLevel), Some(1));
    assert_eq!(n.media[1].extension_id(ExtensionKind::AbsSendTime), None);
    let answer = answer_for(&offer, &n, &[None, None]);
    assert!(
        answer.contains("\r\na=extmap:1/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n")
    );
    parse_offer(&answer).unwrap();

    let inactive = replace_line(
        FIREFOX,
        "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
        Some("a=extmap:3/inactive urn:ietf:params:rtp-hdrext:sdes:mid"),
    );
    for role in [Role::Publisher, Role::Subscriber] {
        let (_, n) = negotiated(&inactive, role, &[]);
        assert_eq!(n.media[0].extension_id(ExtensionKind::Mid), None);
    }
}

#[test]
fn rejected_m_lines_negotiate_nothing() {
    let (_, n) = negotiated(DATACHANNEL, Role::Publisher, &[]);
    let data = &n.media[1];
    assert!(!data.accepted);
    assert!(data.extensions.is_empty() && data.rids.is_empty() && !data.extmap_allow_mixed);
}

#[test]
fn rtx_is_negotiated_with_nack_and_announced_with_its_ssrc() {
    // A publisher's FID group names its RTX SSRC; the answer pairs rtx with the codec.
    let (_, n) = negotiated(CHROME_WHIP, Role::Publisher, &[]);
    let video = n
        .accepted()
        .find(|m| m.kind == Some(MediaKind::Video))
        .expect("video");
    let pt = video.codec.as_ref().expect("codec").payload_type;
    let rtx = video.rtx_payload_type.expect("rtx offered with apt");
    assert_eq!((pt, rtx), (96, 97));
    assert_eq!(video.rtx_ssrc, Some(1_120_593_447));
    let audio = n
        .accepted()
        .find(|m| m.kind == Some(MediaKind::Audio))
        .expect("audio");
    assert_eq!(audio.rtx_payload_type, None, "no RTX for audio");

    // A subscriber's answer announces roomgate's RTX stream in a FID group.
    let (offer, n) = negotiated(CHROME_WHEP, Role::Subscriber, &[]);
    let outbound: Vec<Option<OutboundTrack>> = n
        .media
        .iter()
        .map(|m| {
            (m.accepted && m.kind == Some(MediaKind::Video)).then(|| OutboundTrack {
                ssrc: 5000,
                rtx_ssrc: m.rtx_payload_type.map(|_| 5001),
                cname: "c".to_owned(),
                stream_id: "s".to_owned(),
                track_id: "t".to_owned(),
            })
        })
        .collect();
    let answer = answer_for(&offer, &n, &outbound);
    let lines = answer_lines(&answer);
    for expected in [
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=ssrc-group:FID 5000 5001",
        "a=ssrc:5001 cname:c",
    ] {
        assert!(lines.contains(&expected), "{expected} in {answer}");
    }

    // Without NACK there is nothing for RTX to carry.
    let no_nack = edit(CHROME_WHEP, |l| {
        (!l.contains(" nack")).then(|| l.to_owned())
    });
    let (_, n) = negotiated(&no_nack, Role::Subscriber, &[]);
    assert!(n.accepted().all(|m| m.rtx_payload_type.is_none()));
}
