//! Room IDs and which thread owns a room.
use std::fmt;

use roomgate_common::ufrag::{self, MAX_ROOM_PART_LEN, PARTICIPANT_PART_LEN};

/// A validated room ID: 1 to 32 characters from `[A-Za-z0-9_-]`.
///
/// The alphabet maps one-to-one onto ICE ufrag characters (see `roomgate_common::ufrag`)
/// so the room ID travels inside the server ufrag where the kernel program can read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("room id must be 1 to {MAX_ROOM_PART_LEN} characters from A-Z a-z 0-9 _ -")]
pub struct InvalidRoomId;

impl RoomId {
    pub fn parse(raw: &str) -> Result<Self, InvalidRoomId> {
        let mut part = [0u8; MAX_ROOM_PART_LEN];
        ufrag::room_part_from_room_id(raw.as_bytes(), &mut part).ok_or(InvalidRoomId)?;
        Ok(RoomId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The room part of every server ufrag of this room.
    pub fn ufrag_part(&self) -> String {
        let mut part = [0u8; MAX_ROOM_PART_LEN];
        // Validated at construction, so this cannot fail; fall back to empty to stay total.
        let n = ufrag::room_part_from_room_id(self.0.as_bytes(), &mut part).unwrap_or(0);
        String::from_utf8_lossy(&part[..n]).into_owned()
    }

    pub fn hash(&self) -> u32 {
        ufrag::room_hash_of(self.ufrag_part().as_bytes()).unwrap_or(0)
    }

    /// The logic thread that owns this room: `room_hash % threads`, exactly what the
    /// eBPF program computes from a Binding Request.
    pub fn owner(&self, threads: usize) -> usize {
        owner_of_hash(self.hash(), threads)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn owner_of_hash(hash: u32, threads: usize) -> usize {
    (hash % threads.max(1) as u32) as usize
}

/// The thread that owns the room named by a server ufrag, computed with the same
/// parsing the eBPF program applies to the USERNAME. `None` for a ufrag that is not
/// one of ours.
pub fn owner_of_server_ufrag(server_ufrag: &str, threads: usize) -> Option<usize> {
    let bytes = server_ufrag.as_bytes();
    if bytes.len() <= PARTICIPANT_PART_LEN {
        return None;
    }
    let room_part = &bytes[..bytes.len() - PARTICIPANT_PART_LEN];
    ufrag::room_hash_of(room_part).map(|h| owner_of_hash(h, threads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomgate_common::ufrag::ROOM_HASH_VECTORS;

    #[test]
    fn room_hash_matches_shared_vectors() {
        for (id, want) in ROOM_HASH_VECTORS {
            assert_eq!(RoomId::parse(id).unwrap().hash(), *want, "{id}");
        }
    }

    #[test]
    fn owner_is_stable_and_agrees_with_ufrag_parsing() {
        for threads in 1..=8 {
            for (id, _) in ROOM_HASH_VECTORS {
                let room = RoomId::parse(id).unwrap();
                let ufrag = format!("{}AbCd1234", room.ufrag_part());
                assert_eq!(
                    owner_of_server_ufrag(&ufrag, threads),
                    Some(room.owner(threads))
                );
                assert_eq!(
                    room.owner(threads),
                    RoomId::parse(id).unwrap().owner(threads)
                );
            }
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in ["", "with space", "a/b", "x".repeat(33).as_str(), "é"] {
            assert_eq!(RoomId::parse(bad), Err(InvalidRoomId), "{bad:?}");
        }
    }
}
