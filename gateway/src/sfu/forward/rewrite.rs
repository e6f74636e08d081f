//! How a publisher's packet becomes a subscriber's: the subscriber's extensions and
//! transport-wide seq, its SSRC, payload type, seq and timestamp, continuous VP8 picture
//! IDs, and the padding packets that probe its link.

use std::time::Instant;

use crate::sdp::ExtensionKind;
use crate::sfu::codec;
use crate::sfu::congestion::SubscriberCc;
use crate::sfu::pool::BufferPool;
use crate::sfu::rtp::{RtpHeader, RtpHeaderMut};
use crate::sfu::rtp_ext::{self, ExtensionIds, Extensions, OutgoingExtensions};
use crate::sfu::slot::Slot;

/// A padding packet: header, one-byte extension block with transport-cc, padding.
pub(super) const PADDING_PACKET_LEN: usize = 12 + 8 + crate::sfu::congestion::PADDING_BYTES;
/// SRTP adds an auth tag (10 or 16 bytes): counted so the estimator sees wire sizes.
pub(super) const SRTP_OVERHEAD: usize = 16;

/// A transport-wide seq for a packet to this subscriber, when it negotiated one.
pub(super) fn stamp(
    cc: &mut Option<Box<SubscriberCc>>,
    ids: &ExtensionIds,
    len: usize,
    now: Instant,
) -> Option<u16> {
    ids.id(ExtensionKind::TransportWideCc)?;
    Some(cc.as_mut()?.stamp(len + SRTP_OVERHEAD, now))
}

/// Copy a publisher's packet into a pooled buffer with the subscriber's extensions:
/// the pass-through ones under the subscriber's IDs, roomgate's own transport-wide seq
/// and send time, nothing else.
pub(super) fn forwarded(
    pool: &mut BufferPool,
    header: &RtpHeader<'_>,
    ext: &Extensions<'_>,
    ids: &ExtensionIds,
    transport_seq: Option<u16>,
    abs_send_time: Option<[u8; 3]>,
) -> Vec<u8> {
    let seq_bytes = transport_seq.map(rtp_ext::encode_transport_seq);
    let mut values = OutgoingExtensions::default();
    if let Some(level) = ext.audio_level {
        values.set(ExtensionKind::AudioLevel, level);
    }
    if let Some(cvo) = ext.video_orientation {
        values.set(ExtensionKind::VideoOrientation, cvo);
    }
    if let Some(abs) = abs_send_time.as_ref() {
        values.set(ExtensionKind::AbsSendTime, abs);
    }
    if let Some(seq) = seq_bytes.as_ref() {
        values.set(ExtensionKind::TransportWideCc, seq);
    }
    let mut out = pool.take();
    if values.write(&mut out, header, ids).is_err() {
        // Only oversized elements fail, and these are 1-3 bytes; keep the packet rather
        // than lose it.
        out.clear();
        out.extend_from_slice(header.as_bytes());
    }
    out
}

/// Put a packet into a subscriber's stream: its SSRC, payload type, seq and timestamp.
pub(super) fn set_stream(out: &mut [u8], ssrc: u32, pt: u8, seq: u16, ts: u32) {
    // The packet parsed as RTP already, so the header is there.
    if let Ok(mut h) = RtpHeaderMut::new(out) {
        h.set_ssrc(ssrc);
        h.set_payload_type(pt);
        h.set_sequence_number(seq);
        h.set_timestamp(ts);
    }
}

/// Rewrite a forwarded VP8 packet's picture ID and TL0PICIDX so they continue across
/// layer switches. `false`: the packet belongs before the switch point; do not send it.
pub(super) fn continue_picture_ids(slot: &mut Slot, out: &mut [u8]) -> bool {
    let switched = std::mem::take(&mut slot.vp8_switched);
    rewrite_picture_ids(&mut slot.picture_ids, switched, out)
}

pub(super) fn rewrite_picture_ids(
    map: &mut codec::Vp8Continuity,
    switched: bool,
    out: &mut [u8],
) -> bool {
    let Ok(h) = RtpHeader::parse(out) else {
        return true;
    };
    let at = h.payload_offset();
    let Some(payload) = out.get_mut(at..) else {
        return true;
    };
    // Packets without a descriptor the parser accepts pass unchanged: the decoder
    // judges them, as it would without an SFU.
    let Ok(desc) = codec::vp8::Vp8Descriptor::parse(payload) else {
        return true;
    };
    match map.map(desc.ids(), switched) {
        Some(ids) => {
            let _ = codec::vp8::rewrite(payload, ids);
            true
        }
        None => false,
    }
}

/// An RTP padding-only packet (RFC 3550 5.1: P bit, last byte counts the padding)
/// carrying only the transport-wide seq, so the subscriber's feedback reports it.
pub(super) fn write_padding(
    out: &mut Vec<u8>,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    twcc_id: u8,
    transport_seq: u16,
) {
    out.clear();
    out.push(0x80 | 0x20 | 0x10);
    out.push(pt & 0x7f);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    let seq_bytes = rtp_ext::encode_transport_seq(transport_seq);
    if twcc_id <= 14 {
        // One-byte form: ID/len byte, 2 data bytes, 1 byte of padding.
        out.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, (twcc_id << 4) | 1]);
        out.extend_from_slice(&seq_bytes);
        out.push(0);
    } else {
        out.extend_from_slice(&[0x10, 0x00, 0x00, 0x01, twcc_id, 2]);
        out.extend_from_slice(&seq_bytes);
    }
    let padding = crate::sfu::congestion::PADDING_BYTES;
    out.resize(out.len() + padding - 1, 0);
    out.push(padding as u8);
}

/// The original packet inside a publisher's RTX packet (RFC 4588 4): the RTX header
/// with the media SSRC, payload type and the original sequence number, and the payload
/// after the 2-byte OSN. RTP padding is dropped with the RTX framing.
pub(super) fn unwrap_rtx(out: &mut Vec<u8>, rtx: &RtpHeader<'_>, ssrc: u32, pt: u8, osn: u16) {
    out.clear();
    out.extend_from_slice(&rtx.as_bytes()[..rtx.payload_offset()]);
    out.extend_from_slice(rtx.payload().get(2..).unwrap_or_default());
    out[0] &= !PADDING_BIT;
    let ts = rtx.timestamp();
    set_stream(out, ssrc, pt, osn, ts);
}

/// Turn a retransmission ready for the subscriber's media stream into one on its RTX
/// stream: the original seq becomes the payload's first two bytes (OSN), padding goes,
/// and the packet takes the RTX stream's SSRC, payload type and next seq.
pub(super) fn wrap_rtx(packet: &mut Vec<u8>, pt: u8, ssrc: u32, seq: u16) {
    let Ok(h) = RtpHeader::parse(packet) else {
        return;
    };
    let at = h.payload_offset();
    let end = at + h.payload().len();
    let osn = h.sequence_number();
    let ts = h.timestamp();
    packet.truncate(end);
    packet[0] &= !PADDING_BIT;
    // Shift the payload up by two bytes in place (the pooled buffer has the room).
    packet.extend_from_slice(&[0, 0]);
    packet.copy_within(at..end, at + 2);
    packet[at..at + 2].copy_from_slice(&osn.to_be_bytes());
    set_stream(packet, ssrc, pt, seq, ts);
}

const PADDING_BIT: u8 = 0x20;
