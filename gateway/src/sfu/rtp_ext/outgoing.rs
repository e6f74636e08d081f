//! The extension values one forwarded packet should carry, by kind, so the forwarding
//! code can decide per subscriber what to send (its own MID, a fresh transport-wide
//! sequence number, the publisher's audio level...) without handling wire IDs. Writing
//! maps kinds to the subscriber's IDs; kinds it did not negotiate are left out.

use super::write::{write_rewritten, WriteError};
use super::ExtensionIds;
use crate::sdp::ExtensionKind;
use crate::sfu::rtp::RtpHeader;

const KINDS: usize = ExtensionKind::ALL.len();

/// Element data by kind, borrowed from the received packet or the caller's stack.
///
/// ```text
/// let seq = encode_transport_seq(next_seq);
/// let mut ext = OutgoingExtensions::default();
/// ext.set(ExtensionKind::Mid, subscriber_mid.as_bytes());
/// ext.set(ExtensionKind::TransportWideCc, &seq);
/// if let Some(level) = received.audio_level {
///     ext.set(ExtensionKind::AudioLevel, level);
/// }
/// ext.write(&mut pooled_buf, &header, &subscriber_ids)?;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutgoingExtensions<'a> {
    values: [Option<&'a [u8]>; KINDS],
}

impl<'a> OutgoingExtensions<'a> {
    /// Replaces any earlier value of `kind`. The data must already be in the kind's wire
    /// format (see [`super::encode_transport_seq`], [`super::encode_abs_send_time`]).
    pub fn set(&mut self, kind: ExtensionKind, data: &'a [u8]) {
        self.values[kind.index()] = Some(data);
    }

    pub fn clear(&mut self, kind: ExtensionKind) {
        self.values[kind.index()] = None;
    }

    pub fn get(&self, kind: ExtensionKind) -> Option<&'a [u8]> {
        self.values[kind.index()]
    }

    /// The `(id, data)` elements under `ids`, in [`ExtensionKind::ALL`] order, on the
    /// stack: kinds without a value or without a negotiated ID are skipped.
    pub fn elements(&self, ids: &ExtensionIds) -> Elements<'a> {
        let mut out = Elements {
            items: [(0, &[]); KINDS],
            len: 0,
        };
        for kind in ExtensionKind::ALL {
            if let (Some(data), Some(id)) = (self.values[kind.index()], ids.id(kind)) {
                out.items[out.len] = (id, data);
                out.len += 1;
            }
        }
        out
    }

    /// [`write_rewritten`] with these values under `ids`: `header`'s packet into `out`
    /// with a new extension block. Allocation-free when `out` has the capacity.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        header: &RtpHeader<'_>,
        ids: &ExtensionIds,
    ) -> Result<(), WriteError> {
        write_rewritten(out, header, self.elements(ids).as_slice())
    }
}

/// Up to one element per kind, held inline so building it does not allocate.
#[derive(Debug, Clone, Copy)]
pub struct Elements<'a> {
    items: [(u8, &'a [u8]); KINDS],
    len: usize,
}

impl<'a> Elements<'a> {
    pub fn as_slice(&self) -> &[(u8, &'a [u8])] {
        &self.items[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtensionKind::*;

    #[test]
    fn maps_kinds_to_negotiated_ids_only() {
        let ids = ExtensionIds::new(&[(7, TransportWideCc), (1, Mid), (9, AudioLevel)])
            .expect("valid map");
        let seq = [0, 9];
        let mut ext = OutgoingExtensions::default();
        ext.set(TransportWideCc, &seq);
        ext.set(Mid, b"old");
        ext.set(Mid, b"a");
        ext.set(RtpStreamId, b"hi"); // not negotiated: dropped
        ext.set(AudioLevel, &[0x80]);
        ext.clear(AudioLevel);
        assert_eq!(ext.get(Mid), Some(&b"a"[..]));
        assert_eq!(
            ext.elements(&ids).as_slice(),
            &[(1, &b"a"[..]), (7, &seq[..])]
        );
        assert!(ext.elements(&ExtensionIds::default()).as_slice().is_empty());
    }
}
