//! What the roomgate eBPF steering program and the userspace gateway must agree on.
//!
//! Everything here is compiled twice: once into the `sk_reuseport` program for
//! `bpfel-unknown-none`, once into the daemon. Keeping one implementation of the
//! ufrag parsing and of [`room_hash`] is what makes invariant 1 of DESIGN.md hold
//! ("a room's thread is `room_hash(room_part) % threads`, the same function in the
//! eBPF program and in userspace").
//!
//! The functions operate on fixed-size arrays with loops bounded by constants so
//! that the BPF verifier can prove termination and bounds without help.
#![no_std]

pub mod counters;
pub mod ufrag;

pub use counters::Counter;
pub use ufrag::{room_hash, room_part_len, USERNAME_SCAN_LEN};

use ufrag::MAX_SERVER_UFRAG_LEN;

/// Name of the `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`: index = logic thread, value = its socket.
pub const MAP_SOCKETS: &str = "SOCKETS";
/// Name of the flow map: [`FlowKey`] (client address) -> logic thread index (`u32`).
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the per-CPU counter array, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the config array, indexed by the `CONFIG_*` constants.
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the live-ufrag map: [`UfragKey`] of every name of a live session -> 1. Kept by
/// the logic threads (session creation, ICE restart, release).
pub const MAP_UFRAGS: &str = "UFRAGS";
/// Name of the `sk_reuseport` program in the object file.
pub const PROGRAM_NAME: &str = "roomgate_steer";

/// Index in [`MAP_CONFIG`] holding the number of logic threads.
pub const CONFIG_THREADS: u32 = 0;
/// Index in [`MAP_CONFIG`]: 1 while [`MAP_UFRAGS`] holds every live server ufrag, so the
/// program drops a Binding Request naming none ([`Counter::UnknownUfrag`]); 0 (before the
/// gateway runs, or after the map refused an entry) hands it to the room's thread.
pub const CONFIG_UFRAG_FILTER: u32 = 1;
/// Number of entries in [`MAP_CONFIG`].
pub const CONFIG_LEN: u32 = 2;

/// Upper bound on logic threads (size of the socket array).
pub const MAX_THREADS: u32 = 256;
/// Capacity of the flow map. One entry per pinned client transport address.
pub const FLOWS_CAPACITY: u32 = 262_144;

/// Capacity of the live-ufrag map (a session has up to three names after ICE restarts).
pub const UFRAGS_CAPACITY: u32 = 65_536;

/// Key of the live-ufrag map: a server ufrag, zero-padded to the longest one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UfragKey {
    pub bytes: [u8; MAX_SERVER_UFRAG_LEN],
}

impl UfragKey {
    /// `None` for a ufrag longer than any roomgate issues.
    pub fn new(ufrag: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; MAX_SERVER_UFRAG_LEN];
        bytes.get_mut(..ufrag.len())?.copy_from_slice(ufrag);
        Some(Self { bytes })
    }
}

/// Address family tags used in [`FlowKey::family`].
pub const FAMILY_V4: u16 = 4;
pub const FAMILY_V6: u16 = 6;

/// Key of the flow map: a client's transport address as the kernel sees it.
///
/// `#[repr(C)]` and padding-free (2 + 2 + 16 bytes, alignment 2) so that the bytes
/// userspace writes are exactly the bytes the program builds from the packet.
/// IPv4 addresses occupy the first 4 bytes of `addr`, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
    /// UDP source port in network byte order, as it appears in the UDP header.
    pub port_be: [u8; 2],
    /// Source address bytes in network order.
    pub addr: [u8; 16],
}

impl FlowKey {
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            family: FAMILY_V4,
            port_be: port.to_be_bytes(),
            addr: a,
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            family: FAMILY_V6,
            port_be: port.to_be_bytes(),
            addr,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: FlowKey is #[repr(C)], Copy, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: UfragKey is #[repr(C)], Copy, a plain byte array.
    unsafe impl aya::Pod for super::UfragKey {}
}

/// RFC 7983 demultiplexing of the first byte of a UDP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    Rtp,
    Unknown,
}

#[inline(always)]
pub const fn classify(first_byte: u8) -> PacketClass {
    match first_byte {
        0..=3 => PacketClass::Stun,
        20..=63 => PacketClass::Dtls,
        128..=191 => PacketClass::Rtp,
        _ => PacketClass::Unknown,
    }
}

/// STUN constants the program needs to walk a Binding Request.
pub mod stun {
    pub const HEADER_LEN: usize = 20;
    pub const MAGIC_COOKIE: u32 = 0x2112_A442;
    pub const BINDING_REQUEST: u16 = 0x0001;
    pub const ATTR_USERNAME: u16 = 0x0006;
    /// The program looks at no more than this many attributes before giving up.
    /// Browsers put USERNAME first or second; 16 leaves ample room while keeping
    /// the verifier's instruction count small.
    pub const MAX_ATTRS_WALKED: u32 = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_has_no_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 20);
        assert_eq!(core::mem::align_of::<FlowKey>(), 2);
    }

    #[test]
    fn rfc7983_classes() {
        assert_eq!(classify(0), PacketClass::Stun);
        assert_eq!(classify(3), PacketClass::Stun);
        assert_eq!(classify(4), PacketClass::Unknown);
        assert_eq!(classify(22), PacketClass::Dtls);
        assert_eq!(classify(0x80), PacketClass::Rtp);
        assert_eq!(classify(0xbf), PacketClass::Rtp);
        assert_eq!(classify(0xc0), PacketClass::Unknown);
    }

    #[test]
    fn v4_key_layout() {
        let k = FlowKey::v4([127, 0, 0, 2], 0x1234);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(k.port_be, [0x12, 0x34]);
        assert_eq!(&k.addr[..4], &[127, 0, 0, 2]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
    }
}
