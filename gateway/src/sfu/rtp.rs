//! RTP fixed header (RFC 3550 §5.1) as a zero-copy view, plus in-place rewriting.
//!
//! The SFU never looks inside the payload, so all it needs is a bounds-checked header
//! walk (CSRCs, one extension block, padding) and setters for the four fields it rewrites
//! per subscriber.

/// Length of the fixed part of the header, before CSRCs and extension.
pub const FIXED_HEADER_LEN: usize = 12;

const VERSION: u8 = 2;
const PADDING_BIT: u8 = 0x20;
const EXTENSION_BIT: u8 = 0x10;

/// Why a buffer is not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("{len} bytes is shorter than the {FIXED_HEADER_LEN}-byte RTP header")]
    TooShort { len: usize },
    #[error("RTP version {version}, expected 2")]
    BadVersion { version: u8 },
    #[error("{csrc_count} CSRCs need a {needed}-byte header but the packet is {len} bytes")]
    CsrcOverrun {
        csrc_count: u8,
        needed: usize,
        len: usize,
    },
    #[error("header extension needs {needed} bytes but the packet is {len} bytes")]
    ExtensionOverrun { needed: usize, len: usize },
    #[error("padding count {padding} invalid with {available} bytes after the header")]
    BadPadding { padding: u8, available: usize },
}

/// The header extension block (RFC 3550 §5.3.1): the profile word and its data, which
/// holds RFC 8285 one- or two-byte elements in WebRTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// A validated view of an RTP packet. Every accessor is infallible because `parse`
/// proved the offsets are inside the buffer.
#[derive(Debug, Clone, Copy)]
pub struct RtpHeader<'a> {
    buf: &'a [u8],
    extension_at: Option<usize>,
    payload_offset: usize,
    payload_end: usize,
}

impl<'a> RtpHeader<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        if len < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort { len });
        }
        let first = buf[0];
        let version = first >> 6;
        if version != VERSION {
            return Err(RtpError::BadVersion { version });
        }
        let csrc_count = first & 0x0f;
        let mut offset = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
        if offset > len {
            return Err(RtpError::CsrcOverrun {
                csrc_count,
                needed: offset,
                len,
            });
        }
        let mut extension_at = None;
        if first & EXTENSION_BIT != 0 {
            let words = match buf.get(offset + 2..offset + 4) {
                Some(w) => usize::from(u16::from_be_bytes([w[0], w[1]])),
                None => {
                    return Err(RtpError::ExtensionOverrun {
                        needed: offset + 4,
                        len,
                    })
                }
            };
            let needed = offset + 4 + 4 * words;
            if needed > len {
                return Err(RtpError::ExtensionOverrun { needed, len });
            }
            extension_at = Some(offset);
            offset = needed;
        }
        let mut payload_end = len;
        if first & PADDING_BIT != 0 {
            // The last byte counts itself, so 0 is as invalid as a count reaching into
            // the header.
            let padding = buf[len - 1];
            let available = len - offset;
            if padding == 0 || usize::from(padding) > available {
                return Err(RtpError::BadPadding { padding, available });
            }
            payload_end = len - usize::from(padding);
        }
        Ok(Self {
            buf,
            extension_at,
            payload_offset: offset,
            payload_end,
        })
    }

    /// The whole packet, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn has_padding(&self) -> bool {
        self.buf[0] & PADDING_BIT != 0
    }

    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }

    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let end = FIXED_HEADER_LEN + 4 * usize::from(self.csrc_count());
        self.buf[FIXED_HEADER_LEN..end]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }

    pub fn sequence_number(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }

    pub fn extension(&self) -> Option<RtpExtension<'a>> {
        let at = self.extension_at?;
        let profile = u16::from_be_bytes([self.buf[at], self.buf[at + 1]]);
        Some(RtpExtension {
            profile,
            data: &self.buf[at + 4..self.payload_offset],
        })
    }

    /// Offset of the first payload byte (after CSRCs and extension).
    pub fn payload_offset(&self) -> usize {
        self.payload_offset
    }

    /// Number of padding bytes at the end, including the count byte.
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_offset..self.payload_end]
    }
}

/// In-place setters for the fields the SFU rewrites per subscriber. Only the fixed header
/// is touched, so the length check is all `new` needs.
#[derive(Debug)]
pub struct RtpHeaderMut<'a> {
    buf: &'a mut [u8],
}

impl<'a> RtpHeaderMut<'a> {
    pub fn new(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        if len < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort { len });
        }
        let version = buf[0] >> 6;
        if version != VERSION {
            return Err(RtpError::BadVersion { version });
        }
        Ok(Self { buf })
    }

    /// Keeps the marker bit.
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.buf[1] = (self.buf[1] & 0x80) | (payload_type & 0x7f);
    }

    pub fn set_sequence_number(&mut self, seq: u16) {
        self.buf[2..4].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn set_timestamp(&mut self, timestamp: u32) {
        self.buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    }

    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// `a` is strictly newer than `b` in 16-bit sequence space (RFC 1982 style: the forward
/// distance is less than half the space).
pub fn seq_newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![
            first,
            0x80 | 96,
            0x12,
            0x34,
            0xde,
            0xad,
            0xbe,
            0xef,
            0x01,
            0x02,
            0x03,
            0x04,
        ];
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn parses_fixed_header() {
        let p = packet(0x80, &[1, 2, 3]);
        let h = RtpHeader::parse(&p).expect("valid");
        assert!(h.marker());
        assert_eq!(h.payload_type(), 96);
        assert_eq!(h.sequence_number(), 0x1234);
        assert_eq!(h.timestamp(), 0xdead_beef);
        assert_eq!(h.ssrc(), 0x0102_0304);
        assert_eq!(h.csrc_count(), 0);
        assert_eq!(h.payload_offset(), 12);
        assert_eq!(h.payload(), &[1, 2, 3]);
        assert!(h.extension().is_none());
        assert_eq!(h.padding_len(), 0);
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        // 2 CSRCs, extension with one word, 3 bytes of payload, 4 bytes padding.
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 2];
        body.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00]);
        body.extend_from_slice(&[7, 8, 9]);
        body.extend_from_slice(&[0, 0, 0, 4]);
        let p = packet(0x80 | 0x20 | 0x10 | 2, &body);
        let h = RtpHeader::parse(&p).expect("valid");
        assert_eq!(h.csrcs().collect::<Vec<_>>(), vec![1, 2]);
        let ext = h.extension().expect("extension");
        assert_eq!(ext.profile, 0xbede);
        assert_eq!(ext.data, &[0x10, 0xaa, 0, 0]);
        assert_eq!(h.payload_offset(), 12 + 8 + 8);
        assert_eq!(h.payload(), &[7, 8, 9]);
        assert!(h.has_padding());
        assert_eq!(h.padding_len(), 4);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            RtpHeader::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort { len: 11 }
        );
        assert_eq!(
            RtpHeader::parse(&packet(0x40, &[])).unwrap_err(),
            RtpError::BadVersion { version: 1 }
        );
        assert!(matches!(
            RtpHeader::parse(&packet(0x80 | 3, &[0; 8])).unwrap_err(),
            RtpError::CsrcOverrun { needed: 24, .. }
        ));
        // Extension bit but no room for the extension header.
        assert!(matches!(
            RtpHeader::parse(&packet(0x90, &[0xbe, 0xde])).unwrap_err(),
            RtpError::ExtensionOverrun { needed: 16, .. }
        ));
        // Extension claims 2 words, only 1 present.
        assert!(matches!(
            RtpHeader::parse(&packet(0x90, &[0xbe, 0xde, 0, 2, 1, 2, 3, 4])).unwrap_err(),
            RtpError::ExtensionOverrun { needed: 24, .. }
        ));
        // Padding count 0, and padding reaching into the header.
        assert!(matches!(
            RtpHeader::parse(&packet(0xa0, &[1, 0])).unwrap_err(),
            RtpError::BadPadding { padding: 0, .. }
        ));
        assert!(matches!(
            RtpHeader::parse(&packet(0xa0, &[1, 3])).unwrap_err(),
            RtpError::BadPadding {
                padding: 3,
                available: 2
            }
        ));
        // Padding may consume the whole payload (padding-only probe packets).
        let probe = packet(0xa0, &[0, 2]);
        let h = RtpHeader::parse(&probe).expect("padding only");
        assert!(h.payload().is_empty());
    }

    #[test]
    fn setters_rewrite_in_place() {
        let mut p = packet(0x80, &[1, 2, 3]);
        {
            let mut m = RtpHeaderMut::new(&mut p).expect("valid");
            m.set_payload_type(111);
            m.set_sequence_number(0xfffe);
            m.set_timestamp(42);
            m.set_ssrc(0xcafe_babe);
        }
        let h = RtpHeader::parse(&p).expect("valid");
        assert!(h.marker(), "marker survives a PT rewrite");
        assert_eq!(h.payload_type(), 111);
        assert_eq!(h.sequence_number(), 0xfffe);
        assert_eq!(h.timestamp(), 42);
        assert_eq!(h.ssrc(), 0xcafe_babe);
        assert_eq!(h.payload(), &[1, 2, 3]);
        assert!(RtpHeaderMut::new(&mut [0x80; 4]).is_err());
    }

    #[test]
    fn seq_comparison_wraps() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 0xffff));
        assert!(!seq_newer(0xffff, 0));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn never_panics_on_prefixes() {
        let mut body = vec![0, 0, 0, 1];
        body.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00, 9, 0, 2]);
        let p = packet(0x80 | 0x20 | 0x10 | 1, &body);
        for n in 0..=p.len() {
            let _ = RtpHeader::parse(&p[..n]);
        }
        assert!(RtpHeader::parse(&p).is_ok());
    }
}
