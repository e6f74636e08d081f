//! The receive side's per-SSRC packet index state: the highest authenticated index and a
//! 1024-packet replay window behind it (RFC 3711 3.3.2).

/// Packets behind the highest one that are still remembered (RFC 3711 asks for 64+).
pub(super) const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

pub(super) struct ReplayWindow {
    /// Highest accepted index; for RTP it is also the ROC/s_l pair of RFC 3711 3.3.1.
    top: u64,
    /// Bit `k` set: index `top - k` was accepted.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// State after the first authenticated packet, `index`.
    pub fn new(index: u64) -> Self {
        let mut seen = [0; WORDS];
        seen[0] = 1;
        ReplayWindow { top: index, seen }
    }

    pub fn top(&self) -> u64 {
        self.top
    }

    /// Whether `index` may still be accepted: ahead of the window, or inside it and unseen.
    pub fn is_fresh(&self, index: u64) -> bool {
        let Some(behind) = self.top.checked_sub(index) else {
            return true;
        };
        behind < WINDOW && self.seen[(behind / 64) as usize] & (1 << (behind % 64)) == 0
    }

    /// Record an authenticated `index` (which [`Self::is_fresh`] allowed).
    pub fn accept(&mut self, index: u64) {
        match self.top.checked_sub(index) {
            Some(behind) if behind < WINDOW => {
                self.seen[(behind / 64) as usize] |= 1 << (behind % 64);
            }
            Some(_) => {}
            None => {
                self.advance(index - self.top);
                self.top = index;
                self.seen[0] |= 1;
            }
        }
    }

    /// Age every remembered index by `n`.
    fn advance(&mut self, n: u64) {
        if n >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        for i in (0..WORDS).rev() {
            let lo = i.checked_sub(words).map_or(0, |j| self.seen[j] << bits);
            let carry = match i.checked_sub(words + 1) {
                Some(j) if bits > 0 => self.seen[j] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = lo | carry;
        }
    }
}
