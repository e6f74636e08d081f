//! Per-track retransmission buffer: the last N plaintext packets, answered by sequence
//! number when a subscriber NACKs.

/// Ring of recent packets indexed by `seq % capacity`. Each entry records its seq and
/// its arrival index, so a lookup can prove it is not a stale packet from an earlier lap
/// (wrap-around, or a sender that jumped its sequence numbers).
#[derive(Debug)]
pub(crate) struct RtxBuffer {
    capacity: usize,
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

/// A buffered packet and the arrival index it was stored under.
pub(crate) struct Stored<'a> {
    pub data: &'a [u8],
    pub index: u64,
}

impl RtxBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Vec::new(),
            stored: 0,
        }
    }

    /// Store a copy; returns its arrival index. Entry buffers are reused, so once the
    /// ring has filled, storing allocates nothing.
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
        let mut b = RtxBuffer::new(4);
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
        let mut b = RtxBuffer::new(4);
        b.insert(1, &[1]);
        // A seq jump that skips slot 1 for more than a lap: the old entry is still in
        // the ring but far older than the buffer's window.
        for seq in [1002u16, 1002, 1003, 1004, 1006, 1006] {
            b.insert(seq, &[0]);
        }
        assert!(b.get(1).is_none());
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut b = RtxBuffer::new(0);
        assert_eq!(b.insert(1, &[1]), 0);
        assert!(b.get(1).is_none());
    }
}
