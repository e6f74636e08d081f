//! The DTLS record filter in front of an established association.

use crate::media::acceptable_after_handshake;

/// Runs the filter and checks its verdict against an independent reading of RFC 6347
/// 4.1: accepted means the datagram is a whole number of well-framed DTLS 1.0/1.2
/// records, each of a type that can still be legitimate after the handshake.
pub fn dtls_filter(data: &[u8]) {
    let accepted = acceptable_after_handshake(data);
    assert_eq!(accepted, reference(data), "filter disagrees on {data:02x?}");
}

fn reference(data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    let mut at = 0;
    while at < data.len() {
        if data.len() - at < 13 {
            return false;
        }
        let h = &data[at..at + 13];
        let len = usize::from(h[11]) << 8 | usize::from(h[12]);
        let body_start = at + 13;
        if data.len() - body_start < len {
            return false;
        }
        let body = &data[body_start..body_start + len];
        let epoch = usize::from(h[3]) << 8 | usize::from(h[4]);
        let version = h[1] == 254 && (h[2] == 253 || h[2] == 255);
        let plausible = match h[0] {
            22 => true,
            20 => len == 1 && body[0] == 1,
            21 | 23 => epoch > 0,
            _ => false,
        };
        if !version || !plausible {
            return false;
        }
        at = body_start + len;
    }
    true
}
