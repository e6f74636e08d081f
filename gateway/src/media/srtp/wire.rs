//! The few RTP/RTCP header fields SRTP needs, read straight from the packet.

/// RTP fixed header (RFC 3550 5.1).
pub(super) const RTP_FIXED: usize = 12;
/// RTCP header + sender SSRC: the part SRTCP leaves in the clear.
pub(super) const RTCP_CLEAR: usize = 8;

/// Length of the RTP header as sent: fixed part, CSRCs and the header extension. SRTP
/// encrypts everything after it (RFC 3711 3.1).
pub(super) fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let mut len = RTP_FIXED + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= packet.len()).then_some(len)
}

/// Sequence number and SSRC; `packet` holds at least the fixed header.
pub(super) fn rtp_seq_ssrc(packet: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    )
}

/// Sender SSRC of the first RTCP packet; `packet` holds at least [`RTCP_CLEAR`] bytes.
pub(super) fn rtcp_ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

/// The SRTCP E flag and index word (RFC 3711 3.4).
pub(super) const SRTCP_E: u32 = 1 << 31;
pub(super) const SRTCP_INDEX_LEN: usize = 4;

pub(super) fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
