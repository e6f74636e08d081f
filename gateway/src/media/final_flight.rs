//! roomgate's last handshake flight, kept so it can be sent again after the handshake.
//!
//! As the DTLS server, roomgate's last flight (ChangeCipherSpec + Finished) completes the
//! handshake on its side. If that flight is lost, the client repeats its own last flight
//! until it hears ours (RFC 6347 4.2.4), but webrtc-dtls does not answer once its
//! handshake is done: the client would wait until its handshake timer gives up, with
//! media flowing from roomgate to a client that cannot decrypt it. So the transport
//! remembers the datagrams of the latest server flight and repeats them when a
//! handshake record arrives after the handshake, until the client's first SRTP shows
//! it finished.

use std::time::{Duration, Instant};

/// Repeats are at least this far apart: the client's own retransmission timer starts
/// at one second, so one repeat per client retry suffices.
const REPEAT_INTERVAL: Duration = Duration::from_millis(100);
/// At most this many repeats per session: a client address passed ICE, but a
/// handshake record costs it nothing to send, so the repeats stay bounded.
const MAX_REPEATS: u8 = 8;

#[derive(Debug, Default)]
pub(super) struct FinalFlight {
    datagrams: Vec<Vec<u8>>,
    /// The next datagram roomgate sends starts a new flight.
    new_flight: bool,
    repeats: u8,
    last_repeat: Option<Instant>,
}

impl FinalFlight {
    /// A client record was fed to the handshake: what roomgate sends next answers it.
    pub fn client_flight(&mut self) {
        self.new_flight = true;
    }

    /// roomgate sent `datagram` during (or at the end of) the handshake.
    pub fn sent(&mut self, datagram: &[u8]) {
        if std::mem::take(&mut self.new_flight) {
            self.datagrams.clear();
        }
        // webrtc-dtls's own timer resends a flight unchanged: keep one copy.
        if !self.datagrams.iter().any(|d| d == datagram) {
            self.datagrams.push(datagram.to_vec());
        }
    }

    /// The client repeated a handshake flight after ours completed: the datagrams to
    /// send again, if a repeat is allowed now.
    pub fn repeat(&mut self, now: Instant) -> Option<&[Vec<u8>]> {
        let too_soon = self
            .last_repeat
            .is_some_and(|t| now.saturating_duration_since(t) < REPEAT_INTERVAL);
        if self.datagrams.is_empty() || too_soon || self.repeats >= MAX_REPEATS {
            return None;
        }
        self.repeats += 1;
        self.last_repeat = Some(now);
        Some(&self.datagrams)
    }

    /// The latest flight's datagrams.
    pub fn last(&self) -> &[Vec<u8>] {
        &self.datagrams
    }

    /// The client's SRTP arrived, so it has our flight: nothing left to repeat.
    pub fn forget(&mut self) {
        if !self.datagrams.is_empty() {
            self.datagrams = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_flight_and_repeats_it_bounded() {
        let t0 = Instant::now();
        let mut f = FinalFlight::default();
        f.client_flight();
        f.sent(b"server hello");
        f.sent(b"certificate");
        f.client_flight();
        f.sent(b"ccs+finished");
        f.sent(b"ccs+finished");
        assert_eq!(f.repeat(t0), Some(&[b"ccs+finished".to_vec()][..]));
        assert_eq!(f.repeat(t0 + Duration::from_millis(50)), None, "too soon");
        for i in 1..MAX_REPEATS {
            let at = t0 + REPEAT_INTERVAL * u32::from(i);
            assert!(f.repeat(at).is_some(), "repeat {i}");
        }
        assert_eq!(f.repeat(t0 + Duration::from_secs(5)), None, "bounded");
        let mut g = FinalFlight::default();
        g.client_flight();
        g.sent(b"ccs+finished");
        g.forget();
        assert_eq!(g.repeat(t0), None, "the client finished");
    }
}
