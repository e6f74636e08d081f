//! Per-track retransmission buffer: the last N plaintext packets, answered by sequence
//! number when a subscriber NACKs.

/// Ring of recent packets indexed by `seq % capacity`. Each entry records its seq and
/// its arrival index, so a lookup can prove it is not a stale packet from an earlier lap
/// (wrap-around, or a sender that jumped its sequence numbers).
#[derive(Debug)]
pub(crate) struct RtxBuffer {
    capacity: usize,
    /// First reservation of an entry's buffer: a whole packet of the track's usual size,
    /// so that entries are not regrown packet after packet as sizes vary.
    entry_reserve: usize,
    entries: Vec<Entry>,
    /// Packets stored so far; the next packet's arrival index.
    stored: u64,
}

#[derive(Debug, Default)]
struct Entry {
    seq: u16,
    index: u64,
    valid: bool,
    data: Vec<u8>,
}

/// A full packet on a 1500-byte Ethernet MTU, which video packetisers fill.
pub(crate) const VIDEO_ENTRY_RESERVE: usize = 1500;
/// Audio frames are small; a larger one promotes its entry to [`VIDEO_ENTRY_RESERVE`].
pub(crate) const AUDIO_ENTRY_RESERVE: usize = 256;

/// A buffered packet and the arrival index it was stored under.
pub(crate) struct Stored<'a> {
    pub data: &'a [u8],
    pub index: u64,
}

impl RtxBuffer {
    /// `entry_reserve`: the size most of the track's packets fit in (see
    /// [`VIDEO_ENTRY_RESERVE`], [`AUDIO_ENTRY_RESERVE`]).
    pub(crate) fn new(capacity: usize, entry_reserve: usize) -> Self {
        Self {
            capacity,
            entry_reserve,
            entries: Vec::new(),
            stored: 0,
        }
    }

    /// Store a copy; returns its arrival index. Entry buffers are reused, so once the
    /// ring has filled (and each entry has held a full-size packet), storing allocates
    /// nothing.
    pub(crate) fn insert(&mut self, seq: u16, packet: &[u8]) -> u64 {
        let index = self.stored;
        self.stored += 1;
        if self.capacity == 0 {
            return index;
        }
        // Allocated on first use so silent tracks cost nothing.
        if self.entries.is_empty() {
            self.entries.resize_with(self.capacity, Entry::default);
        }
        let slot = usize::from(seq) % self.capacity;
        if let Some(e) = self.entries.get_mut(slot) {
            e.seq = seq;
            e.index = index;
            e.valid = true;
            e.data.clear();
            // At most two allocations per entry for packets up to the MTU: the first
            // reservation, and one promotion to a full packet; never one per packet.
            if e.data.capacity() < packet.len() {
                let full = if e.data.capacity() == 0 {
                    self.entry_reserve
                } else {
                    VIDEO_ENTRY_RESERVE
                };
                e.data.reserve_exact(packet.len().max(full));
            }
            e.data.extend_from_slice(packet);
        }
        index
    }

    pub(crate) fn get(&self, seq: u16) -> Option<Stored<'_>> {
        if self.capacity == 0 {
            return None;
        }
        let e = self.entries.get(usize::from(seq) % self.capacity)?;
        let recent = self.stored - e.index <= self.capacity as u64;
        (e.valid && e.seq == seq && recent).then_some(Stored {
            data: &e.data,
            index: e.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_evicts() {
        let mut b = RtxBuffer::new(4, AUDIO_ENTRY_RESERVE);
        for seq in 10..14u16 {
            b.insert(seq, &[seq as u8]);
        }
        assert_eq!(b.get(10).map(|s| s.data.to_vec()), Some(vec![10]));
        assert_eq!(b.get(13).map(|s| s.index), Some(3));
        b.insert(14, &[14]);
        assert!(b.get(10).is_none(), "evicted by 14");
        assert!(b.get(99).is_none(), "never stored");
    }

    #[test]
    fn stale_lap_is_not_returned() {
        let mut b = RtxBuffer::new(4, AUDIO_ENTRY_RESERVE);
        b.insert(1, &[1]);
        // A seq jump that skips slot 1 for more than a lap: the old entry is still in
        // the ring but far older than the buffer's window.
        for seq in [1002u16, 1002, 1003, 1004, 1006, 1006] {
            b.insert(seq, &[0]);
        }
        assert!(b.get(1).is_none());
    }

    #[test]
    fn entries_grow_once_to_a_full_packet() {
        let mut b = RtxBuffer::new(1, AUDIO_ENTRY_RESERVE);
        b.insert(0, &[0; 100]);
        assert_eq!(b.entries[0].data.capacity(), AUDIO_ENTRY_RESERVE);
        b.insert(1, &[0; 300]);
        assert_eq!(b.entries[0].data.capacity(), VIDEO_ENTRY_RESERVE);
        b.insert(2, &[0; 1400]);
        assert_eq!(b.entries[0].data.capacity(), VIDEO_ENTRY_RESERVE);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut b = RtxBuffer::new(0, AUDIO_ENTRY_RESERVE);
        assert_eq!(b.insert(1, &[1]), 0);
        assert!(b.get(1).is_none());
    }
}
