//! The SFU core fed arbitrary plaintext: a room with two publishers (audio + video with
//! RTX, and a three-layer simulcast video) and two viewers, driven only through
//! `RoomCore`'s API by a byte-coded script of packets, clock steps, layer requests and
//! membership changes.
//!
//! Invariants checked after every step: nothing is sent to a member that is not in the
//! room; every RTP packet a viewer gets parses and carries one of the SSRCs its answer
//! announced; every RTCP packet we send is a valid compound; the member counts match.

use std::time::{Duration, Instant};

use crate::sdp::{Codec, ExtensionKind, MediaKind};
use crate::sfu::rtcp::{self, FirEntry};
use crate::sfu::rtp::RtpHeader;
use crate::sfu::rtp_ext::ExtensionIds;
use crate::sfu::{
    ForwardConfig, LayerRequest, MemberId, Output, PublishedTrack, RoomCore, SubscribedSlot,
};

const P1: MemberId = 1;
const P2: MemberId = 2;
const V1: MemberId = 10;
const V2: MemberId = 11;
const STRANGER: MemberId = 99;
const MEMBERS: [MemberId; 5] = [P1, P2, V1, V2, STRANGER];

/// SSRCs the script can name by index, so the fuzzer need not guess 32-bit values.
const SSRCS: [u32; 10] = [
    0xa1, 0xa2, 0xa3, 0x100, 0x200, 0x300, 0x1000, 0x1001, 0x2000, 0x2001,
];
const PTS: [u8; 5] = [96, 97, 111, 102, 0];

const V1_SSRCS: [u32; 3] = [0x1000, 0x1001, 0x1002];
const V2_SSRCS: [u32; 3] = [0x2000, 0x2001, 0x2002];

pub fn sfu(data: &[u8]) {
    let start = Instant::now();
    let mut room = Room {
        core: RoomCore::new(ForwardConfig {
            sender_ssrc: 0x5e5e_5e5e,
            initial_estimate_bps: 250_000,
            // Small retransmission buffers: eviction is exercised within a short
            // script, and each run allocates less (the default 2048 slots per layer
            // dominated the cost of a run).
            rtx_max_packets: 256,
            ..ForwardConfig::default()
        }),
        now: start,
        present: [false; 4],
    };
    for id in [P1, P2, V1, V2] {
        room.join(id);
    }
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        room.step(op, &mut input);
        room.drain();
    }
    // Tear down: the room must end empty whatever happened.
    for id in MEMBERS {
        room.core.remove_member(id, room.now);
    }
    room.drain();
    assert!(room.core.is_empty());
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }

    /// A length-prefixed chunk (one length byte; at most what is left).
    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte().unwrap_or(0)).min(self.0.len());
        let (chunk, rest) = self.0.split_at(n);
        self.0 = rest;
        chunk
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte().unwrap_or(0)) % from.len()]
    }
}

struct Room {
    core: RoomCore,
    now: Instant,
    /// Whether P1, P2, V1, V2 are in the room.
    present: [bool; 4],
}

impl Room {
    fn index(id: MemberId) -> Option<usize> {
        [P1, P2, V1, V2].iter().position(|&m| m == id)
    }

    fn join(&mut self, id: MemberId) {
        let now = self.now;
        match id {
            P1 => {
                self.core.add_publisher(
                    P1,
                    vec![
                        track(MediaKind::Audio, Some(0xa1), opus(111), "0", &[], None),
                        track(MediaKind::Video, Some(0xa2), vp8(96), "1", &[], Some(0xa3)),
                    ],
                    now,
                );
                self.core.set_extensions(P1, ids(), now);
            }
            P2 => {
                self.core.add_publisher(
                    P2,
                    vec![track(
                        MediaKind::Video,
                        None,
                        vp8(96),
                        "0",
                        &["q", "h", "f"],
                        None,
                    )],
                    now,
                );
                self.core.set_extensions(P2, ids(), now);
            }
            V1 => {
                self.core.add_subscriber(V1, slots(&V1_SSRCS), None, now);
                self.core.set_extensions(V1, ids(), now);
            }
            V2 => {
                self.core
                    .add_subscriber(V2, slots(&V2_SSRCS), Some(P2), now);
            }
            _ => return,
        }
        if let Some(i) = Self::index(id) {
            self.present[i] = true;
        }
    }

    fn step(&mut self, op: u8, input: &mut Input<'_>) {
        let now = self.now;
        match op % 10 {
            0 => {
                let from = input.pick(&MEMBERS);
                let _ = self.core.handle_rtp(from, input.chunk(), now);
            }
            1 => {
                let from = input.pick(&MEMBERS);
                let _ = self.core.handle_rtcp(from, input.chunk(), now);
            }
            2 => {
                let from = input.pick(&[P1, P2, P2, P2]);
                let packet = rtp(input);
                let _ = self.core.handle_rtp(from, &packet, now);
            }
            3 => {
                let from = input.pick(&MEMBERS);
                let packet = feedback(input);
                let _ = self.core.handle_rtcp(from, &packet, now);
            }
            4 => {
                let step = match input.byte().unwrap_or(0) {
                    b @ 0..=239 => Duration::from_millis(u64::from(b) * 2),
                    b => Duration::from_secs(u64::from(b - 239)),
                };
                self.now += step;
                self.core.handle_timeout(self.now);
            }
            5 => {
                let id = input.pick(&[V1, V2, STRANGER]);
                let request = input.pick(&[
                    LayerRequest::Auto,
                    LayerRequest::Low,
                    LayerRequest::Mid,
                    LayerRequest::High,
                ]);
                let known = self.core.set_layer_request(id, request, now);
                let present = Self::index(id).is_some_and(|i| self.present[i]);
                assert_eq!(known, present && (id == V1 || id == V2));
            }
            6 => {
                let id = input.pick(&MEMBERS);
                self.core.remove_member(id, now);
                if let Some(i) = Self::index(id) {
                    self.present[i] = false;
                }
            }
            7 => {
                let id = input.pick(&[P1, P2, V1, V2]);
                self.join(id);
            }
            8 => {
                let id = input.pick(&MEMBERS);
                self.core.set_ready(id, now);
            }
            _ => {
                for id in [V1, V2] {
                    let _ = self.core.slot_views(id, now);
                }
                let _ = self.core.take_stats();
                let _ = self.core.published_codecs();
            }
        }
        let publishers = self.present[..2].iter().filter(|p| **p).count();
        let subscribers = self.present[2..].iter().filter(|p| **p).count();
        assert_eq!(self.core.publisher_count(), publishers);
        assert_eq!(self.core.subscriber_count(), subscribers);
    }

    fn drain(&mut self) {
        while let Some(output) = self.core.poll_output() {
            let (to, packet, is_rtp) = match output {
                Output::Rtp { to, packet } => (to, packet, true),
                Output::Rtcp { to, packet } => (to, packet, false),
            };
            let i = Self::index(to).expect("output to a member that never joined");
            assert!(self.present[i], "output to member {to} after it left");
            if is_rtp {
                let header = RtpHeader::parse(&packet).expect("forwarded RTP parses");
                let announced: &[u32] = match to {
                    V1 => &V1_SSRCS,
                    V2 => &V2_SSRCS,
                    _ => panic!("RTP sent to publisher {to}"),
                };
                assert!(
                    announced.contains(&header.ssrc()),
                    "SSRC {:#x} not announced to {to}",
                    header.ssrc()
                );
            } else {
                rtcp::validate_compound(&packet).expect("our RTCP is a valid compound");
            }
            self.core.recycle(packet);
        }
    }
}

/// An RTP packet from template fields: known SSRC and PT, fuzzed seq/ts/marker, an
/// optional one-byte extension block (mid, rid, transport seq) and a fuzzed payload.
fn rtp(input: &mut Input<'_>) -> Vec<u8> {
    let flags = input.byte().unwrap_or(0);
    let ssrc = input.pick(&SSRCS);
    let pt = input.pick(&PTS);
    let seq = input.u16();
    let ts = input.u32();
    let mut p = vec![0x80 | (flags & 0x10), pt | (flags & 0x80)];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    if flags & 1 != 0 {
        let rid = input.pick(&[&b"q"[..], b"h", b"f", b"x"]);
        let mid = input.pick(&[&b"0"[..], b"1", b"9"]);
        let mut ext = Vec::new();
        ext.push(0x40 | (mid.len() as u8 - 1));
        ext.extend_from_slice(mid);
        ext.push(0xa0 | (rid.len() as u8 - 1));
        ext.extend_from_slice(rid);
        ext.push(0x31);
        ext.extend_from_slice(&input.u16().to_be_bytes());
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        p[0] |= 0x10;
        p.extend_from_slice(&0xbedeu16.to_be_bytes());
        p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&ext);
    }
    if flags & 2 != 0 {
        // A VP8 keyframe start, so layer switches can happen.
        p.extend_from_slice(&[0x90, 0x80, 0x81, 0x00, 0x50, 0x00, 0x00]);
    }
    p.extend_from_slice(input.chunk());
    p
}

/// Well-formed feedback naming known SSRCs: NACK, PLI, FIR or RR.
fn feedback(input: &mut Input<'_>) -> Vec<u8> {
    let sender = input.pick(&SSRCS);
    let media = input.pick(&SSRCS);
    match input.byte().unwrap_or(0) % 4 {
        0 => {
            let base = input.u16();
            let lost: Vec<u16> = (0..u16::from(input.byte().unwrap_or(0) % 40))
                .map(|i| base.wrapping_add(i * u16::from(input.byte().unwrap_or(1) % 3 + 1)))
                .collect();
            rtcp::write_nack(sender, media, &lost).unwrap_or_else(|| rtcp::write_pli(sender, media))
        }
        1 => rtcp::write_pli(sender, media),
        2 => rtcp::write_fir(
            sender,
            &[FirEntry {
                ssrc: media,
                seq_nr: input.byte().unwrap_or(0),
            }],
        ),
        _ => rtcp::write_rr(
            sender,
            &[rtcp::ReportBlock {
                ssrc: media,
                fraction_lost: input.byte().unwrap_or(0),
                cumulative_lost: i32::from(input.u16()),
                extended_highest_seq: input.u32(),
                jitter: u32::from(input.u16()),
                last_sr: input.u32(),
                delay_since_last_sr: input.u32(),
            }],
        ),
    }
}

fn track(
    kind: MediaKind,
    ssrc: Option<u32>,
    codec: Codec,
    mid: &str,
    rids: &[&str],
    rtx_ssrc: Option<u32>,
) -> PublishedTrack {
    PublishedTrack {
        kind,
        ssrc,
        codec,
        mid: mid.into(),
        rids: rids.iter().map(|r| r.to_string()).collect(),
        rtx_payload_type: rtx_ssrc.map(|_| 97),
        rtx_ssrc,
    }
}

fn slots(ssrcs: &[u32; 3]) -> Vec<SubscribedSlot> {
    vec![
        SubscribedSlot {
            kind: MediaKind::Audio,
            out_ssrc: ssrcs[0],
            codec: opus(111),
            mid: "0".into(),
            rtx: None,
        },
        SubscribedSlot {
            kind: MediaKind::Video,
            out_ssrc: ssrcs[1],
            codec: vp8(96),
            mid: "1".into(),
            rtx: Some((97, ssrcs[2])),
        },
    ]
}

fn ids() -> ExtensionIds {
    ExtensionIds::new(&[
        (2, ExtensionKind::AbsSendTime),
        (3, ExtensionKind::TransportWideCc),
        (4, ExtensionKind::Mid),
        (10, ExtensionKind::RtpStreamId),
        (11, ExtensionKind::RepairedRtpStreamId),
    ])
    .expect("distinct ids")
}

fn vp8(pt: u8) -> Codec {
    Codec {
        payload_type: pt,
        name: "VP8".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: None,
        rtcp_fb: vec!["nack".into(), "nack pli".into(), "transport-cc".into()],
    }
}

fn opus(pt: u8) -> Codec {
    Codec {
        payload_type: pt,
        name: "opus".into(),
        clock_rate: 48_000,
        channels: Some(2),
        fmtp: Some("minptime=10;useinbandfec=1".into()),
        rtcp_fb: vec![],
    }
}
