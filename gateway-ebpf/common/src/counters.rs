//! Indices of the eBPF program's per-CPU counters.
//!
//! Every packet the program sees bumps [`Counter::Packets`] and exactly one
//! *decision* counter (all the others), so tests can assert that the decisions add
//! up to the packets and that each branch ran the expected number of times.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Every invocation of the program.
    Packets = 0,
    /// STUN Binding Request steered to the room's thread by `room_hash % threads`.
    SteeredByRoom = 1,
    /// Non-request packet (DTLS, SRTP, SRTCP, other STUN) steered by the flow map.
    SteeredByFlow = 2,
    /// Non-request packet whose source address is not pinned: dropped in the kernel.
    FlowMiss = 3,
    /// STUN-range datagram that could not be walked: a payload too short for a type, or a
    /// Binding Request that is truncated, has an attribute past the
    /// end, too many attributes, no USERNAME, no ':' or a room part of bad length or
    /// characters. Dropped.
    StunMalformed = 4,
    /// First byte outside the RFC 7983 ranges roomgate serves (STUN, DTLS, RTP/RTCP). Dropped.
    UnknownType = 5,
    /// `bpf_sk_select_reuseport` failed (empty socket slot, thread count unset). Dropped,
    /// never handed to the kernel's default hash: a wrong thread is worse than a retransmit.
    SelectError = 6,
    /// UDP datagram with no payload. Dropped.
    Empty = 7,
    /// Well-formed Binding Request whose server ufrag names no live session (the
    /// live-ufrag map, while userspace keeps it): dropped without waking a thread.
    UnknownUfrag = 8,
}

impl Counter {
    /// Number of counters (size of the per-CPU array).
    pub const COUNT: u32 = 9;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::SteeredByRoom,
        Counter::SteeredByFlow,
        Counter::FlowMiss,
        Counter::StunMalformed,
        Counter::UnknownType,
        Counter::SelectError,
        Counter::Empty,
        Counter::UnknownUfrag,
    ];

    /// Stable snake_case name used in `/api/status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::SteeredByRoom => "steered_by_room",
            Counter::SteeredByFlow => "steered_by_flow",
            Counter::FlowMiss => "flow_miss",
            Counter::StunMalformed => "stun_malformed",
            Counter::UnknownType => "unknown_type",
            Counter::SelectError => "select_error",
            Counter::Empty => "empty",
            Counter::UnknownUfrag => "unknown_ufrag",
        }
    }

    /// True for the counters of which exactly one is bumped per packet.
    pub const fn is_decision(self) -> bool {
        !matches!(self, Counter::Packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_ordered() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{}", c.name());
        }
    }
}
