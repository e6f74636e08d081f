//! Builds a forwarded packet with a new extension block: the fixed header and CSRCs,
//! the subscriber's elements under the subscriber's IDs, then payload and padding as
//! received. Elements the subscriber did not negotiate are simply not passed in, which
//! is how unknown extensions are stripped.

use super::{ONE_BYTE_PROFILE, TWO_BYTE_PROFILE};
use crate::sfu::rtp::{RtpHeader, FIXED_HEADER_LEN};

const EXTENSION_BIT: u8 = 0x10;
const ONE_BYTE_MAX_ID: u8 = 14;
const ONE_BYTE_MAX_LEN: usize = 16;
const TWO_BYTE_MAX_LEN: usize = 255;
// The block length is a 16-bit count of 32-bit words.
const MAX_BLOCK_BYTES: usize = 0xffff * 4;

/// Why elements cannot be written as an RFC 8285 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("extension element {index} has ID 0, which is reserved for padding")]
    ZeroId { index: usize },
    #[error("extension element ID {id} has {len} bytes, more than the two-byte form's 255")]
    TooLong { id: u8, len: usize },
    #[error("extension block of {len} bytes exceeds the 65535-word limit")]
    BlockTooLong { len: usize },
}

/// Writes `header`'s packet into `out` (cleared first) with its extension block replaced
/// by `elements`, as `(id, data)` in wire order.
///
/// The one-byte form is used when every ID is 1..=14 and every length 1..=16, else the
/// two-byte form (profile 0x1000). The block is zero-padded to a word boundary. With no
/// elements the block is dropped and the X bit cleared. Payload and RTP padding (and the
/// P bit) are copied unchanged; sequence number, timestamp, SSRC and PT can then be set
/// with [`crate::sfu::rtp::RtpHeaderMut`].
///
/// Does not allocate when `out` already has capacity for the result. `elements` should
/// not repeat an ID; that is not checked.
pub fn write_rewritten(
    out: &mut Vec<u8>,
    header: &RtpHeader<'_>,
    elements: &[(u8, &[u8])],
) -> Result<(), WriteError> {
    let mut one_byte = true;
    let mut data_len = 0usize;
    for (index, &(id, value)) in elements.iter().enumerate() {
        if id == 0 {
            return Err(WriteError::ZeroId { index });
        }
        if value.len() > TWO_BYTE_MAX_LEN {
            return Err(WriteError::TooLong {
                id,
                len: value.len(),
            });
        }
        one_byte &= id <= ONE_BYTE_MAX_ID && (1..=ONE_BYTE_MAX_LEN).contains(&value.len());
        data_len += value.len();
    }
    let element_header = if one_byte { 1 } else { 2 };
    let block_len = (data_len + element_header * elements.len()).next_multiple_of(4);
    if block_len > MAX_BLOCK_BYTES {
        return Err(WriteError::BlockTooLong { len: block_len });
    }

    let packet = header.as_bytes();
    let prefix_len = FIXED_HEADER_LEN + 4 * usize::from(header.csrc_count());
    let rest = &packet[header.payload_offset()..];
    let ext_len = if elements.is_empty() {
        0
    } else {
        4 + block_len
    };
    out.clear();
    out.reserve(prefix_len + ext_len + rest.len());
    out.extend_from_slice(&packet[..prefix_len]);
    if elements.is_empty() {
        out[0] &= !EXTENSION_BIT;
    } else {
        out[0] |= EXTENSION_BIT;
        let profile = if one_byte {
            ONE_BYTE_PROFILE
        } else {
            TWO_BYTE_PROFILE
        };
        // Checked against MAX_BLOCK_BYTES above, so the word count fits.
        let words = (block_len / 4) as u16;
        out.extend_from_slice(&profile.to_be_bytes());
        out.extend_from_slice(&words.to_be_bytes());
        let start = out.len();
        for &(id, value) in elements {
            // Lengths were bounded above: 1..=16 for one-byte, ..=255 for two-byte.
            if one_byte {
                out.push((id << 4) | (value.len() - 1) as u8);
            } else {
                out.extend_from_slice(&[id, value.len() as u8]);
            }
            out.extend_from_slice(value);
        }
        out.resize(start + block_len, 0);
    }
    out.extend_from_slice(rest);
    Ok(())
}
