//! Per-SSRC state in two parallel vectors: the SSRC keys scan fast, and the vectors grow
//! only when a stream starts, up to a fixed bound.

pub(super) struct SsrcTable<T> {
    ssrcs: Vec<u32>,
    states: Vec<T>,
    cap: usize,
}

impl<T> SsrcTable<T> {
    pub fn new(cap: usize) -> Self {
        SsrcTable {
            ssrcs: Vec::new(),
            states: Vec::new(),
            cap,
        }
    }

    pub fn find(&self, ssrc: u32) -> Option<usize> {
        self.ssrcs.iter().position(|&s| s == ssrc)
    }

    pub fn is_full(&self) -> bool {
        self.ssrcs.len() >= self.cap
    }

    pub fn get(&self, slot: usize) -> Option<&T> {
        self.states.get(slot)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.states.get_mut(slot)
    }

    pub fn states(&self) -> &[T] {
        &self.states
    }

    /// Adds `ssrc` unless the table is full.
    pub fn insert(&mut self, ssrc: u32, state: T) -> Option<usize> {
        if self.is_full() {
            return None;
        }
        if self.ssrcs.capacity() == 0 {
            // Most sessions use a handful of SSRCs: reserve once for a typical client.
            self.ssrcs.reserve(4.min(self.cap));
            self.states.reserve(4.min(self.cap));
        }
        self.ssrcs.push(ssrc);
        self.states.push(state);
        Some(self.ssrcs.len() - 1)
    }

    /// Gives `slot` to another SSRC.
    pub fn replace(&mut self, slot: usize, ssrc: u32, state: T) {
        if let (Some(s), Some(st)) = (self.ssrcs.get_mut(slot), self.states.get_mut(slot)) {
            *s = ssrc;
            *st = state;
        }
    }
}
