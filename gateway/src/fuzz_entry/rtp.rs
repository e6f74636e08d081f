//! RTP and RTCP parsing: the header view, header extensions, the codec payload
//! descriptors the SFU reads, and compound RTCP with every packet type it interprets.

use crate::sdp::ExtensionKind;
use crate::sfu::codec::{h264, vp8, Vp8Continuity};
use crate::sfu::rtcp::{self, RtcpPacket};
use crate::sfu::rtp::{RtpHeader, RtpHeaderMut};
use crate::sfu::rtp_ext::{parse_extensions, ExtensionIds};

pub fn rtp_rtcp(data: &[u8]) {
    rtp(data);
    rtcp(data);
}

fn rtp(data: &[u8]) {
    let Ok(header) = RtpHeader::parse(data) else {
        return;
    };
    let payload = header.payload();
    let at = header.payload_offset();
    assert!(at <= data.len());
    assert!(at + payload.len() + header.padding_len() <= data.len());
    assert_eq!(header.csrcs().count(), usize::from(header.csrc_count()));
    let _ = (
        header.marker(),
        header.sequence_number(),
        header.timestamp(),
    );
    for ids in [one_byte_ids(), mixed_ids()] {
        if let Ok(ext) = parse_extensions(&header, &ids) {
            for kind in [
                ExtensionKind::Mid,
                ExtensionKind::RtpStreamId,
                ExtensionKind::AudioLevel,
            ] {
                if let Some(v) = ext.passthrough(kind) {
                    assert!(v.len() <= data.len());
                }
            }
        }
    }
    let _ = h264::is_keyframe(payload);
    let _ = h264::classify(payload);
    let _ = h264::stap_a_nal_types(payload).count();
    let _ = vp8::is_keyframe(payload);
    if let Ok(desc) = vp8::Vp8Descriptor::parse(payload) {
        assert!(desc.payload_offset() <= payload.len());
        for at in [desc.picture_id_offset(), desc.tl0_pic_idx_offset()]
            .into_iter()
            .flatten()
        {
            assert!(at < payload.len());
        }
        let mut continuity = Vp8Continuity::new();
        let mapped = continuity.map(desc.ids(), true);
        let mut copy = payload.to_vec();
        if let Some(ids) = mapped {
            let before = vp8::rewrite(&mut copy, ids).expect("descriptor parsed once");
            assert_eq!(before, desc);
            let after = vp8::Vp8Descriptor::parse(&copy).expect("rewrite keeps the layout");
            assert_eq!(after.payload_offset(), desc.payload_offset());
        }
    }
    let mut copy = data.to_vec();
    if let Ok(mut m) = RtpHeaderMut::new(&mut copy) {
        m.set_payload_type(96);
        m.set_sequence_number(header.sequence_number().wrapping_add(1));
        m.set_timestamp(1);
        m.set_ssrc(7);
    }
    let again = RtpHeader::parse(&copy).expect("rewriting the fixed header keeps it valid");
    assert_eq!(again.payload(), payload);
}

fn rtcp(data: &[u8]) {
    let valid = rtcp::validate_compound(data);
    let mut packets = 0;
    let mut failed = false;
    for packet in rtcp::parse_compound(data) {
        let Ok(packet) = packet else {
            failed = true;
            continue;
        };
        packets += 1;
        walk(packet);
    }
    assert!(packets > 0 || failed, "an empty compound must be an error");
    match valid {
        Ok(n) => assert!(!failed && n == packets),
        Err(_) => assert!(failed),
    }
}

fn walk(packet: RtcpPacket<'_>) {
    match packet {
        RtcpPacket::SenderReport(sr) => {
            let _ = (sr.sender_ssrc(), sr.sender_info().ntp_middle());
            let _ = sr.report_blocks().count();
            let out = sr.rewritten(1, 2);
            assert_eq!(rtcp::validate_compound(&out).ok(), Some(1));
        }
        RtcpPacket::ReceiverReport(rr) => {
            let blocks: Vec<_> = rr.report_blocks().collect();
            if blocks.len() <= 31 {
                let out = rtcp::write_rr(rr.sender_ssrc(), &blocks);
                assert_eq!(rtcp::validate_compound(&out).ok(), Some(1));
            }
        }
        RtcpPacket::Sdes(sdes) => {
            let _ = sdes.chunks().count();
        }
        RtcpPacket::Bye(bye) => {
            let _ = (bye.ssrcs().count(), bye.reason());
        }
        RtcpPacket::Nack(nack) => {
            let _ = (
                nack.sender_ssrc(),
                nack.media_ssrc(),
                nack.entries().count(),
            );
            let lost: Vec<u16> = nack.lost_seqs().take(4096).collect();
            if let Some(out) = rtcp::write_nack(nack.sender_ssrc(), nack.media_ssrc(), &lost) {
                assert_eq!(rtcp::validate_compound(&out).ok(), Some(1));
            }
        }
        RtcpPacket::Pli(_) => {}
        RtcpPacket::Fir(fir) => {
            let entries: Vec<_> = fir.entries().collect();
            let _ = fir.media_ssrc();
            let out = rtcp::write_fir(fir.sender_ssrc(), &entries);
            assert_eq!(rtcp::validate_compound(&out).ok(), Some(1));
        }
        RtcpPacket::TransportFeedback(fb) => {
            let _ = (fb.sender_ssrc(), fb.media_ssrc(), fb.base_seq());
            let _ = (fb.reference_time(), fb.fb_pkt_count(), fb.has_timestamps());
            assert!(fb.packets().count() <= usize::from(fb.status_count()));
        }
        RtcpPacket::Other { .. } => {}
    }
}

fn one_byte_ids() -> ExtensionIds {
    ExtensionIds::new(&[
        (1, ExtensionKind::AudioLevel),
        (2, ExtensionKind::AbsSendTime),
        (3, ExtensionKind::TransportWideCc),
        (4, ExtensionKind::Mid),
        (10, ExtensionKind::RtpStreamId),
        (11, ExtensionKind::RepairedRtpStreamId),
        (13, ExtensionKind::VideoOrientation),
    ])
    .expect("distinct ids")
}

fn mixed_ids() -> ExtensionIds {
    ExtensionIds::new(&[
        (1, ExtensionKind::Mid),
        (15, ExtensionKind::RtpStreamId),
        (200, ExtensionKind::TransportWideCc),
    ])
    .unwrap_or_default()
}
