//! The shared classifier and ufrag/room-part parser (roomgate-common), compiled for the
//! host and run the way the kernel program runs them, checked against the userspace
//! reading of the same datagram: both must send a Binding Request to the same thread.

use roomgate_common::ufrag::{
    is_ice_char, room_hash, room_hash_of, room_part_from_room_id, room_part_len, MAX_ROOM_PART_LEN,
    USERNAME_SCAN_LEN,
};
use roomgate_common::{classify, stun as kstun, PacketClass};

use crate::room::{owner_of_server_ufrag, RoomId};

pub fn classifier(data: &[u8]) {
    let Some(&first) = data.first() else {
        return;
    };
    let class = classify(first);
    if class == PacketClass::Stun {
        let kernel = kernel_room_hash(data);
        if let Some(hash) = kernel {
            agree_with_userspace(data, hash);
        }
    }
    room_ids(data);
}

/// The program's walk (gateway-ebpf/program `stun_header`, `find_username`,
/// `copy_username`, `by_room`) over a UDP payload: the room hash it steers by, if any.
fn kernel_room_hash(payload: &[u8]) -> Option<u32> {
    let len = payload.len();
    let t = payload.get(..2)?;
    if u16::from_be_bytes([t[0], t[1]]) != kstun::BINDING_REQUEST || len < kstun::HEADER_LEN {
        return None;
    }
    let msg_len = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
    let cookie = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    if cookie != kstun::MAGIC_COOKIE || !msg_len.is_multiple_of(4) {
        return None;
    }
    let end = kstun::HEADER_LEN + msg_len;
    if end > len {
        return None;
    }
    let mut off = kstun::HEADER_LEN;
    let mut username = None;
    for _ in 0..kstun::MAX_ATTRS_WALKED {
        if off + 4 > end {
            return None;
        }
        let ty = u16::from_be_bytes([payload[off], payload[off + 1]]);
        let attr_len = usize::from(u16::from_be_bytes([payload[off + 2], payload[off + 3]]));
        let value = off + 4;
        if value + attr_len > end {
            return None;
        }
        if ty == kstun::ATTR_USERNAME {
            username = Some((value, attr_len));
            break;
        }
        off = value + attr_len.next_multiple_of(4);
    }
    let (value, value_len) = username?;
    // Bytes past the packet read as zero, like a failed bpf_skb_load_bytes.
    let mut prefix = [0u8; USERNAME_SCAN_LEN];
    for (i, b) in prefix.iter_mut().enumerate() {
        *b = payload.get(value + i).copied().unwrap_or(0);
    }
    let room_len = room_part_len(&prefix, value_len)?;
    assert!((1..=MAX_ROOM_PART_LEN).contains(&room_len));
    let hash = room_hash(&prefix, room_len)?;
    assert!(prefix[..room_len].iter().all(|&b| is_ice_char(b)));
    assert_eq!(room_hash_of(&prefix[..room_len]), Some(hash));
    Some(hash)
}

/// Where userspace authenticates the same request, the room it derives from the server
/// ufrag must be the one the kernel steered by, or the session is on another thread.
fn agree_with_userspace(payload: &[u8], hash: u32) {
    let Ok(view) = crate::ice::parse(payload) else {
        return;
    };
    let Some(server) = view.server_ufrag() else {
        return;
    };
    for threads in [1, 2, 3, 7, 64, 256] {
        if let Some(owner) = owner_of_server_ufrag(server, threads) {
            assert_eq!(
                owner,
                (hash % threads as u32) as usize,
                "kernel and userspace disagree on {server:?} with {threads} threads"
            );
        }
    }
}

/// Room IDs: the mapping to a room part is a bijection onto ice-chars, and a room's
/// ufrag routes to its owner.
fn room_ids(data: &[u8]) {
    let mut part = [0u8; MAX_ROOM_PART_LEN];
    let Some(n) = room_part_from_room_id(data, &mut part) else {
        if let Ok(text) = std::str::from_utf8(data) {
            assert!(RoomId::parse(text).is_err());
        }
        return;
    };
    assert_eq!(n, data.len());
    assert!(part[..n].iter().all(|&b| is_ice_char(b)));
    let text = std::str::from_utf8(data).expect("room id alphabet is ASCII");
    let room = RoomId::parse(text).expect("accepted by room_part_from_room_id");
    assert_eq!(room.ufrag_part().as_bytes(), &part[..n]);
    let hash = room_hash_of(&part[..n]).expect("ice-chars hash");
    assert_eq!(room.hash(), hash);
    let ufrag = format!("{}AbCd1234", room.ufrag_part());
    for threads in [1, 3, 256] {
        assert_eq!(
            owner_of_server_ufrag(&ufrag, threads),
            Some(room.owner(threads))
        );
    }
}
