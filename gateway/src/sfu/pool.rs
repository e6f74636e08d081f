//! Recycled packet buffers, so that forwarding does not call the allocator once the
//! room is warm: every copy it sends is written into a buffer that an earlier copy used
//! and the caller handed back after sending it.

/// New buffers hold a full-size UDP payload on a 1500-byte MTU plus room for the SRTP
/// tag and SRTCP index, so a caller that protects in place never has to grow one.
const NEW_BUFFER_CAPACITY: usize = 1536;

/// At most this many idle buffers are kept; the excess goes back to the allocator, so a
/// burst cannot pin memory for the life of the room.
pub(crate) const MAX_POOLED_BUFFERS: usize = 1024;

/// Buffers larger than this (grown by an oversized packet, or handed in by a caller) are
/// dropped rather than kept, which bounds an idle pool to `MAX_POOLED_BUFFERS` × 4 KiB.
const MAX_POOLED_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Vec<Vec<u8>>,
}

impl BufferPool {
    /// An empty buffer, reused when one is idle.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_BUFFER_CAPACITY))
    }

    pub(crate) fn give(&mut self, mut buf: Vec<u8>) {
        // A small buffer (from a caller) would only regrow, which is the allocation
        // the pool exists to avoid.
        let useful = (NEW_BUFFER_CAPACITY..=MAX_POOLED_CAPACITY).contains(&buf.capacity());
        if !useful || self.free.len() >= MAX_POOLED_BUFFERS {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_capacity() {
        let mut pool = BufferPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(&[1, 2, 3]);
        let ptr = buf.as_ptr();
        pool.give(buf);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
    }

    #[test]
    fn bounded_in_count_and_size() {
        let mut pool = BufferPool::default();
        for _ in 0..MAX_POOLED_BUFFERS + 10 {
            pool.give(Vec::with_capacity(NEW_BUFFER_CAPACITY));
        }
        assert_eq!(pool.len(), MAX_POOLED_BUFFERS);

        let mut pool = BufferPool::default();
        pool.give(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        pool.give(Vec::with_capacity(16));
        assert_eq!(pool.len(), 0, "oversized and small buffers are not kept");
    }
}
