//! Per-layer retransmission buffer: the plaintext packets of the last `max_age`,
//! answered by sequence number when a subscriber NACKs.
//!
//! Sized by time, not by count: a 4 Mbit/s layer sends ten times the packets of a
//! 400 kbit/s one, and a repair is useful for the same time on both. The ring starts
//! small and doubles whenever it would overwrite a packet younger than `max_age`, up to
//! a hard cap that bounds memory.

use std::time::{Duration, Instant};

/// Ring of recent packets indexed by `seq % capacity`. Each entry records its seq and
/// its arrival index, so a lookup can prove it is not a stale packet from an earlier lap
/// (wrap-around, or a sender that jumped its sequence numbers).
#[derive(Debug)]
pub(crate) struct RtxBuffer {
    capacity: usize,
    /// The ring never grows past this many entries (0: no buffer at all).
    max_capacity: usize,
    max_age: Duration,
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
    stored: Option<Instant>,
    data: Vec<u8>,
}

/// A full packet on a 1500-byte Ethernet MTU, which video packetisers fill.
pub(crate) const VIDEO_ENTRY_RESERVE: usize = 1500;
/// Audio frames are small; a larger one promotes its entry to [`VIDEO_ENTRY_RESERVE`].
pub(crate) const AUDIO_ENTRY_RESERVE: usize = 256;

/// Entries a ring starts with.
const INITIAL_CAPACITY: usize = 64;

/// Why a NACKed packet cannot be resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Never received, or overwritten by the hard cap.
    NotBuffered,
    /// Older than the buffer's time window: a repair would come too late to help.
    TooOld,
}

/// A buffered packet and the arrival index it was stored under.
pub(crate) struct Stored<'a> {
    pub data: &'a [u8],
    pub index: u64,
}

impl RtxBuffer {
    /// Keep packets for `max_age`, in at most `max_capacity` entries; `entry_reserve`:
    /// the size most of the layer's packets fit in (see [`VIDEO_ENTRY_RESERVE`],
    /// [`AUDIO_ENTRY_RESERVE`]).
    pub(crate) fn new(max_age: Duration, max_capacity: usize, entry_reserve: usize) -> Self {
        Self {
            capacity: INITIAL_CAPACITY.min(max_capacity),
            max_capacity,
            max_age,
            entry_reserve,
            entries: Vec::new(),
            stored: 0,
        }
    }

    /// Store a copy; returns its arrival index. Entry buffers are reused, so once the
    /// ring has reached its size for the layer's rate (and each entry has held a
    /// full-size packet), storing allocates nothing.
    pub(crate) fn insert(&mut self, seq: u16, packet: &[u8], now: Instant) -> u64 {
        let index = self.stored;
        self.stored += 1;
        if self.capacity == 0 {
            return index;
        }
        // Allocated on first use so silent layers cost nothing.
        if self.entries.is_empty() {
            self.entries.resize_with(self.capacity, Entry::default);
        }
        let max_age = self.max_age;
        let young = |e: &Entry| {
            e.valid
                && e.seq != seq
                && e.stored
                    .is_some_and(|t| now.saturating_duration_since(t) < max_age)
        };
        while self.capacity < self.max_capacity
            && young(&self.entries[usize::from(seq) % self.capacity])
        {
            self.grow();
        }
        let slot = usize::from(seq) % self.capacity;
        if let Some(e) = self.entries.get_mut(slot) {
            e.seq = seq;
            e.index = index;
            e.valid = true;
            e.stored = Some(now);
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

    /// Double the ring (up to the cap), moving every entry to its slot in the new size;
    /// where two land on one slot the newer stays.
    fn grow(&mut self) {
        let capacity = (self.capacity * 2).min(self.max_capacity);
        let mut entries: Vec<Entry> = Vec::new();
        entries.resize_with(capacity, Entry::default);
        for e in self.entries.drain(..).filter(|e| e.valid) {
            let slot = &mut entries[usize::from(e.seq) % capacity];
            if !slot.valid || slot.index < e.index {
                *slot = e;
            }
        }
        self.capacity = capacity;
        self.entries = entries;
    }

    pub(crate) fn get(&self, seq: u16, now: Instant) -> Result<Stored<'_>, Miss> {
        if self.capacity == 0 {
            return Err(Miss::NotBuffered);
        }
        let e = self
            .entries
            .get(usize::from(seq) % self.capacity)
            .ok_or(Miss::NotBuffered)?;
        let recent = self.stored - e.index <= self.capacity as u64;
        if !(e.valid && e.seq == seq && recent) {
            return Err(Miss::NotBuffered);
        }
        if e.stored
            .is_none_or(|t| now.saturating_duration_since(t) > self.max_age)
        {
            return Err(Miss::TooOld);
        }
        Ok(Stored {
            data: &e.data,
            index: e.index,
        })
    }

    /// Entries the ring holds now (it grows with the layer's packet rate).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn stores_and_evicts_at_the_cap() {
        let t0 = Instant::now();
        let mut b = RtxBuffer::new(SEC, 4, AUDIO_ENTRY_RESERVE);
        for seq in 10..14u16 {
            b.insert(seq, &[seq as u8], t0);
        }
        assert_eq!(b.get(10, t0).map(|s| s.data.to_vec()), Ok(vec![10]));
        assert_eq!(b.get(13, t0).map(|s| s.index), Ok(3));
        b.insert(14, &[14], t0);
        assert_eq!(
            b.get(10, t0).err(),
            Some(Miss::NotBuffered),
            "evicted by 14"
        );
        assert_eq!(b.get(99, t0).err(), Some(Miss::NotBuffered), "never stored");
    }

    #[test]
    fn the_window_is_time_and_the_ring_grows_to_hold_it() {
        let t0 = Instant::now();
        let mut b = RtxBuffer::new(SEC, 4096, VIDEO_ENTRY_RESERVE);
        // 500 packets/s for 2 s: the ring grows to hold one second, no more.
        for i in 0..1000u16 {
            b.insert(i, &[i as u8], t0 + 2 * MS * u32::from(i));
        }
        let now = t0 + 2 * MS * 999;
        assert_eq!(b.capacity(), 512, "just over 500 packets per second");
        assert!(b.get(999, now).is_ok());
        assert!(b.get(510, now).is_ok(), "0.98 s old");
        assert_eq!(b.get(490, now).err(), Some(Miss::TooOld), "1.02 s old");
        assert_eq!(
            b.get(480, now).err(),
            Some(Miss::NotBuffered),
            "overwritten by 992"
        );
        // The same packet asked for too late.
        assert_eq!(b.get(999, now + 2 * SEC).err(), Some(Miss::TooOld));
        // A slow layer keeps the small ring.
        let mut slow = RtxBuffer::new(SEC, 4096, AUDIO_ENTRY_RESERVE);
        for i in 0..200u16 {
            slow.insert(i, &[0], t0 + 20 * MS * u32::from(i));
        }
        assert_eq!(slow.capacity(), INITIAL_CAPACITY);
    }

    #[test]
    fn stale_lap_is_not_returned() {
        let t0 = Instant::now();
        let mut b = RtxBuffer::new(SEC, 4, AUDIO_ENTRY_RESERVE);
        b.insert(1, &[1], t0);
        // A seq jump that skips slot 1 for more than a lap: the old entry is still in
        // the ring but far older than the buffer's window.
        for seq in [1002u16, 1002, 1003, 1004, 1006, 1006] {
            b.insert(seq, &[0], t0);
        }
        assert!(b.get(1, t0).is_err());
    }

    #[test]
    fn entries_grow_once_to_a_full_packet() {
        let t0 = Instant::now();
        let mut b = RtxBuffer::new(SEC, 1, AUDIO_ENTRY_RESERVE);
        b.insert(0, &[0; 100], t0);
        assert_eq!(b.entries[0].data.capacity(), AUDIO_ENTRY_RESERVE);
        b.insert(1, &[0; 300], t0);
        assert_eq!(b.entries[0].data.capacity(), VIDEO_ENTRY_RESERVE);
        b.insert(2, &[0; 1400], t0);
        assert_eq!(b.entries[0].data.capacity(), VIDEO_ENTRY_RESERVE);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let t0 = Instant::now();
        let mut b = RtxBuffer::new(SEC, 0, AUDIO_ENTRY_RESERVE);
        assert_eq!(b.insert(1, &[1], t0), 0);
        assert!(b.get(1, t0).is_err());
    }
}
