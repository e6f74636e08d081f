//! One session's negotiated extension IDs, as fixed arrays so that a lookup on the hot
//! path is one index and the map can be copied into per-subscriber state.

use crate::sdp::ExtensionKind;

const KINDS: usize = ExtensionKind::ALL.len();

/// Why a list of `(id, kind)` pairs is not a usable map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionIdsError {
    /// ID 0 is padding in both element forms, so it can name nothing.
    #[error("extension ID 0 is reserved for padding (given for {kind:?})")]
    ZeroId { kind: ExtensionKind },
    #[error("extension ID {id} is given to both {first:?} and {second:?}")]
    DuplicateId {
        id: u8,
        first: ExtensionKind,
        second: ExtensionKind,
    },
    /// Two IDs for one kind would make "which MID does this packet carry" ambiguous.
    #[error("{kind:?} is given two extension IDs, {first} and {second}")]
    DuplicateKind {
        kind: ExtensionKind,
        first: u8,
        second: u8,
    },
}

/// The extension IDs one session negotiated, both directions of the mapping.
/// `Default` is the empty map: nothing negotiated, every element is unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExtensionIds {
    // 256 entries so that any wire ID (one- or two-byte form) indexes without a check.
    by_id: [Option<ExtensionKind>; 256],
    // 0 means not negotiated, since 0 is never a valid ID.
    by_kind: [u8; KINDS],
}

impl Default for ExtensionIds {
    fn default() -> Self {
        Self {
            by_id: [None; 256],
            by_kind: [0; KINDS],
        }
    }
}

impl std::fmt::Debug for ExtensionIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl ExtensionIds {
    /// Builds the map from negotiated `(id, kind)` pairs, e.g. the `a=extmap` lines of an
    /// answer that roomgate understood. IDs 1..=255 are accepted; IDs above 14 only fit
    /// the two-byte form, which the writer then picks.
    pub fn new(pairs: &[(u8, ExtensionKind)]) -> Result<Self, ExtensionIdsError> {
        let mut map = Self::default();
        for &(id, kind) in pairs {
            if id == 0 {
                return Err(ExtensionIdsError::ZeroId { kind });
            }
            if let Some(first) = map.by_id[usize::from(id)] {
                if first == kind {
                    // The same pair twice says nothing new.
                    continue;
                }
                return Err(ExtensionIdsError::DuplicateId {
                    id,
                    first,
                    second: kind,
                });
            }
            let first = map.by_kind[kind.index()];
            if first != 0 {
                return Err(ExtensionIdsError::DuplicateKind {
                    kind,
                    first,
                    second: id,
                });
            }
            map.by_id[usize::from(id)] = Some(kind);
            map.by_kind[kind.index()] = id;
        }
        Ok(map)
    }

    /// The kind a wire ID names in this session, `None` if it was not negotiated.
    pub fn kind(&self, id: u8) -> Option<ExtensionKind> {
        self.by_id[usize::from(id)]
    }

    /// The wire ID this session uses for `kind`, `None` if it was not negotiated.
    pub fn id(&self, kind: ExtensionKind) -> Option<u8> {
        match self.by_kind[kind.index()] {
            0 => None,
            id => Some(id),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.iter().all(|&id| id == 0)
    }

    /// The negotiated `(id, kind)` pairs in [`ExtensionKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, ExtensionKind)> + '_ {
        ExtensionKind::ALL
            .into_iter()
            .filter_map(|kind| self.id(kind).map(|id| (id, kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtensionKind::*;

    #[test]
    fn maps_both_ways() {
        let ids = ExtensionIds::new(&[(3, TransportWideCc), (4, Mid), (200, RtpStreamId)])
            .expect("valid map");
        assert_eq!(ids.kind(3), Some(TransportWideCc));
        assert_eq!(ids.kind(200), Some(RtpStreamId));
        assert_eq!(ids.kind(5), None);
        assert_eq!(ids.kind(0), None);
        assert_eq!(ids.id(Mid), Some(4));
        assert_eq!(ids.id(AbsSendTime), None);
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            vec![(4, Mid), (200, RtpStreamId), (3, TransportWideCc)]
        );
        assert!(!ids.is_empty());
    }

    #[test]
    fn default_negotiates_nothing() {
        let ids = ExtensionIds::default();
        assert!(ids.is_empty());
        assert!((0..=255).all(|id| ids.kind(id).is_none()));
        assert!(ExtensionKind::ALL.iter().all(|&k| ids.id(k).is_none()));
    }

    #[test]
    fn rejects_ambiguous_maps() {
        assert_eq!(
            ExtensionIds::new(&[(0, Mid)]),
            Err(ExtensionIdsError::ZeroId { kind: Mid })
        );
        assert_eq!(
            ExtensionIds::new(&[(4, Mid), (4, RtpStreamId)]),
            Err(ExtensionIdsError::DuplicateId {
                id: 4,
                first: Mid,
                second: RtpStreamId
            })
        );
        assert_eq!(
            ExtensionIds::new(&[(4, Mid), (5, Mid)]),
            Err(ExtensionIdsError::DuplicateKind {
                kind: Mid,
                first: 4,
                second: 5
            })
        );
        let repeated = ExtensionIds::new(&[(4, Mid), (4, Mid)]).expect("same pair twice");
        assert_eq!(repeated.id(Mid), Some(4));
    }
}
