//! The RFC 8285 element walk over a packet's extension block, keeping the values of the
//! negotiated kinds and counting the rest.

use super::{ExtensionIds, ABS_SEND_TIME_LEN, ONE_BYTE_PROFILE, TRANSPORT_SEQ_LEN};
use crate::sdp::ExtensionKind;
use crate::sfu::rtp::RtpHeader;

const TWO_BYTE_PROFILE_MASK: u16 = 0xfff0;
// One-byte form: the ID that ends the walk (RFC 8285 §4.2).
const ONE_BYTE_STOP_ID: u8 = 15;

/// Why a packet's extension block cannot be trusted. The packet should be dropped and
/// counted; the session is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// Neither 0xBEDE nor 0x100X: not RFC 8285, so not something roomgate can rewrite.
    #[error(
        "header extension profile {profile:#06x} is neither one-byte (0xbede) nor two-byte (0x100x)"
    )]
    UnknownProfile { profile: u16 },
    /// An element (its length byte included) runs past the end of the block.
    #[error(
        "extension element ID {id} at block offset {offset} needs {needed} bytes, block is {block_len}"
    )]
    Truncated {
        id: u8,
        offset: usize,
        needed: usize,
        block_len: usize,
    },
    /// A negotiated kind whose data has a length its format does not allow.
    #[error("{kind:?} element (ID {id}) is {len} bytes, expected {expected}")]
    WrongLength {
        kind: ExtensionKind,
        id: u8,
        len: usize,
        expected: &'static str,
    },
    /// One kind twice in a packet, e.g. two MIDs: which one counts is a guess.
    #[error("{kind:?} element (ID {id}) appears twice in one packet")]
    Duplicate { kind: ExtensionKind, id: u8 },
}

impl ExtensionError {
    /// A fixed label per variant, for a drop counter's `reason` label: the message
    /// carries values and would make unbounded label sets.
    pub fn reason(&self) -> &'static str {
        match self {
            ExtensionError::UnknownProfile { .. } => "unknown_profile",
            ExtensionError::Truncated { .. } => "truncated",
            ExtensionError::WrongLength { .. } => "wrong_length",
            ExtensionError::Duplicate { .. } => "duplicate",
        }
    }
}

/// The extension values of one packet that roomgate acts on, borrowed from the packet.
/// A field is `None` when the kind is not negotiated or the packet does not carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions<'a> {
    /// `sdes:mid`, as sent (no character check: an unknown MID simply matches nothing).
    pub mid: Option<&'a [u8]>,
    /// `sdes:rtp-stream-id`: the simulcast layer's RID.
    pub rid: Option<&'a [u8]>,
    /// `sdes:repaired-rtp-stream-id`: the RID an RTX packet repairs.
    pub repaired_rid: Option<&'a [u8]>,
    /// Transport-wide sequence number.
    pub transport_seq: Option<u16>,
    /// abs-send-time, the 24-bit 6.18 fixed-point value.
    pub abs_send_time: Option<u32>,
    /// RFC 6464 audio level byte (V flag and level), passed through untouched.
    pub audio_level: Option<&'a [u8]>,
    /// 3GPP CVO byte, passed through untouched.
    pub video_orientation: Option<&'a [u8]>,
    /// Elements whose ID is not in the session's map; they are not forwarded.
    pub unknown: u16,
}

impl<'a> Extensions<'a> {
    /// The element data of `kind` as it was on the wire, for passing it through under a
    /// subscriber's ID; `None` for kinds whose value is not a byte string here
    /// (transport-wide-cc and abs-send-time, which roomgate writes itself).
    pub fn passthrough(&self, kind: ExtensionKind) -> Option<&'a [u8]> {
        match kind {
            ExtensionKind::Mid => self.mid,
            ExtensionKind::RtpStreamId => self.rid,
            ExtensionKind::RepairedRtpStreamId => self.repaired_rid,
            ExtensionKind::AudioLevel => self.audio_level,
            ExtensionKind::VideoOrientation => self.video_orientation,
            ExtensionKind::TransportWideCc | ExtensionKind::AbsSendTime => None,
        }
    }
}

/// Reads the extension block of `header` with one session's negotiated `ids`.
///
/// Both RFC 8285 forms are accepted. Padding (ID 0) may sit between and after elements;
/// in the one-byte form ID 15 ends the walk. A packet without an extension block yields
/// empty [`Extensions`]. Block bounds were already checked by [`RtpHeader::parse`].
pub fn parse_extensions<'a>(
    header: &RtpHeader<'a>,
    ids: &ExtensionIds,
) -> Result<Extensions<'a>, ExtensionError> {
    let mut out = Extensions::default();
    let Some(ext) = header.extension() else {
        return Ok(out);
    };
    let data = ext.data;
    if ext.profile == ONE_BYTE_PROFILE {
        walk_one_byte(data, |id, value| store(&mut out, ids, id, value))?;
    } else if ext.profile & TWO_BYTE_PROFILE_MASK == super::TWO_BYTE_PROFILE {
        walk_two_byte(data, |id, value| store(&mut out, ids, id, value))?;
    } else {
        return Err(ExtensionError::UnknownProfile {
            profile: ext.profile,
        });
    }
    Ok(out)
}

fn walk_one_byte<'a>(
    data: &'a [u8],
    mut element: impl FnMut(u8, &'a [u8]) -> Result<(), ExtensionError>,
) -> Result<(), ExtensionError> {
    let mut pos = 0;
    while let Some(&b) = data.get(pos) {
        let id = b >> 4;
        if id == 0 {
            // A padding byte. Its length nibble should be 0; like libwebrtc, a non-zero
            // one is still skipped as a single byte rather than failing the packet.
            pos += 1;
            continue;
        }
        if id == ONE_BYTE_STOP_ID {
            break;
        }
        let start = pos + 1;
        let end = start + usize::from(b & 0x0f) + 1;
        let value = data.get(start..end).ok_or(ExtensionError::Truncated {
            id,
            offset: pos,
            needed: end,
            block_len: data.len(),
        })?;
        element(id, value)?;
        pos = end;
    }
    Ok(())
}

fn walk_two_byte<'a>(
    data: &'a [u8],
    mut element: impl FnMut(u8, &'a [u8]) -> Result<(), ExtensionError>,
) -> Result<(), ExtensionError> {
    let mut pos = 0;
    while let Some(&id) = data.get(pos) {
        if id == 0 {
            pos += 1;
            continue;
        }
        let truncated = |needed| ExtensionError::Truncated {
            id,
            offset: pos,
            needed,
            block_len: data.len(),
        };
        let len = *data.get(pos + 1).ok_or_else(|| truncated(pos + 2))?;
        let start = pos + 2;
        let end = start + usize::from(len);
        let value = data.get(start..end).ok_or_else(|| truncated(end))?;
        element(id, value)?;
        pos = end;
    }
    Ok(())
}

fn store<'a>(
    out: &mut Extensions<'a>,
    ids: &ExtensionIds,
    id: u8,
    value: &'a [u8],
) -> Result<(), ExtensionError> {
    let Some(kind) = ids.kind(id) else {
        out.unknown = out.unknown.saturating_add(1);
        return Ok(());
    };
    let wrong = |expected| ExtensionError::WrongLength {
        kind,
        id,
        len: value.len(),
        expected,
    };
    let duplicate = ExtensionError::Duplicate { kind, id };
    match kind {
        ExtensionKind::Mid => set_bytes(&mut out.mid, value, duplicate, wrong),
        ExtensionKind::RtpStreamId => set_bytes(&mut out.rid, value, duplicate, wrong),
        ExtensionKind::RepairedRtpStreamId => {
            set_bytes(&mut out.repaired_rid, value, duplicate, wrong)
        }
        ExtensionKind::AudioLevel => set_byte(&mut out.audio_level, value, duplicate, wrong),
        ExtensionKind::VideoOrientation => {
            set_byte(&mut out.video_orientation, value, duplicate, wrong)
        }
        ExtensionKind::TransportWideCc => {
            let [a, b] = *<&[u8; TRANSPORT_SEQ_LEN]>::try_from(value).map_err(|_| wrong("2"))?;
            set_once(
                &mut out.transport_seq,
                u16::from_be_bytes([a, b]),
                duplicate,
            )
        }
        ExtensionKind::AbsSendTime => {
            let [a, b, c] = *<&[u8; ABS_SEND_TIME_LEN]>::try_from(value).map_err(|_| wrong("3"))?;
            set_once(
                &mut out.abs_send_time,
                u32::from_be_bytes([0, a, b, c]),
                duplicate,
            )
        }
    }
}

/// MID and RIDs: any non-empty string (RFC 9143 and RFC 8852 forbid empty ones).
fn set_bytes<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    duplicate: ExtensionError,
    wrong: impl Fn(&'static str) -> ExtensionError,
) -> Result<(), ExtensionError> {
    if value.is_empty() {
        return Err(wrong("at least 1"));
    }
    set_once(slot, value, duplicate)
}

/// Audio level (RFC 6464) and CVO are one byte each.
fn set_byte<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    duplicate: ExtensionError,
    wrong: impl Fn(&'static str) -> ExtensionError,
) -> Result<(), ExtensionError> {
    if value.len() != 1 {
        return Err(wrong("1"));
    }
    set_once(slot, value, duplicate)
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    duplicate: ExtensionError,
) -> Result<(), ExtensionError> {
    if slot.is_some() {
        return Err(duplicate);
    }
    *slot = Some(value);
    Ok(())
}
