//! The record filter in front of an established DTLS association.

/// Whether a datagram may reach an established association. RFC 6347 4.1.2.7 says invalid
/// records are silently discarded, but webrtc-dtls answers some of them (plaintext
/// application data, a malformed ChangeCipherSpec, unknown content types) with a fatal
/// alert and ends the association, which would let one stray datagram kill a session.
/// So after the handshake only records that can be legitimate pass: handshake records
/// (a retransmitted final flight), and alerts, CCS and application data under epoch >= 1.
pub fn acceptable_after_handshake(datagram: &[u8]) -> bool {
    const HEADER: usize = 13;
    let mut rest = datagram;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(header) = rest.get(..HEADER) else {
            return false;
        };
        let content_type = header[0];
        let version_ok = header[1] == 0xfe && (header[2] == 0xfd || header[2] == 0xff);
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let Some(body) = rest.get(HEADER..HEADER + len) else {
            return false;
        };
        let ok = version_ok
            && match content_type {
                22 => true,
                // A plaintext CCS is exactly one byte of value 1; an encrypted one is not sent.
                20 => body == [1],
                21 | 23 => epoch >= 1,
                _ => false,
            };
        if !ok {
            return false;
        }
        rest = &rest[HEADER + len..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_records_reach_an_established_association() {
        let record = |ty: u8, epoch: u16, body: &[u8]| {
            let mut r = vec![ty, 0xfe, 0xfd];
            r.extend_from_slice(&epoch.to_be_bytes());
            r.extend_from_slice(&[0; 6]);
            r.extend_from_slice(&(body.len() as u16).to_be_bytes());
            r.extend_from_slice(body);
            r
        };
        assert!(acceptable_after_handshake(&record(22, 0, &[1, 2, 3])));
        assert!(acceptable_after_handshake(&record(23, 1, &[9; 40])));
        assert!(acceptable_after_handshake(&record(21, 1, &[1, 0])));
        assert!(acceptable_after_handshake(&record(20, 0, &[1])));
        let mut two = record(22, 0, &[1]);
        two.extend(record(23, 1, &[2; 5]));
        assert!(acceptable_after_handshake(&two));

        assert!(
            !acceptable_after_handshake(&record(23, 0, &[9; 40])),
            "plaintext app data"
        );
        assert!(
            !acceptable_after_handshake(&record(21, 0, &[2, 40])),
            "plaintext alert"
        );
        assert!(
            !acceptable_after_handshake(&record(20, 1, &[1, 1])),
            "bad CCS"
        );
        assert!(
            !acceptable_after_handshake(&record(25, 1, &[0; 4])),
            "unknown type"
        );
        assert!(
            !acceptable_after_handshake(&record(63, 0, &[0; 4])),
            "unknown type"
        );
        let mut bad_version = record(23, 1, &[0; 4]);
        bad_version[2] = 0x01;
        assert!(!acceptable_after_handshake(&bad_version));
        let mut truncated = record(23, 1, &[0; 10]);
        truncated.truncate(15);
        assert!(!acceptable_after_handshake(&truncated));
        assert!(!acceptable_after_handshake(&[]));
        assert!(!acceptable_after_handshake(&[22, 0xfe]));
        let mut trailing = record(22, 0, &[1]);
        trailing.extend_from_slice(&[0, 1]);
        assert!(!acceptable_after_handshake(&trailing), "trailing bytes");
    }
}
