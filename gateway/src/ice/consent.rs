//! Per-session ICE-lite state and consent freshness (RFC 7675), on an explicit clock.
//!
//! An ICE-lite server sends no checks of its own: the client's Binding Requests are both
//! its connectivity checks and its consent refreshes. So the state machine only reacts to
//! "a check verified" and to time passing.
//!
//! The media path (where media and DTLS go) follows the client without an ICE restart
//! when its address changes (NAT rebinding, Wi-Fi to LTE), but only on verified checks:
//! - a check with USE-CANDIDATE moves it at once (RFC 8445 7.3.2: the controlling agent
//!   nominates, the lite agent follows). Chrome, controlling against a lite peer, sets
//!   USE-CANDIDATE on every check of its selected writable pair, so it renominates a new
//!   path itself;
//! - a check without it moves it only when the path's own last check did not nominate
//!   (the client nominated once, like aioice, and its consent checks cannot tell us about
//!   a rebinding it does not see) and the path has had no verified check for
//!   [`MOVE_AFTER_SILENCE`]: the client's consent checks now come from elsewhere. A client
//!   that renominates is never moved by its unnominated backup checks.
//!
//! The address the path leaves is handed out as evicted, so its pin is released once the
//! new address is pinned; if it was checked less than [`MOVE_AFTER_SILENCE`] ago it is
//! still in use (a client that nominates several pairs, or a path changed on purpose),
//! so it is released with the first check after it has been silent that long, unless it
//! is checked again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ice::Credentials;

/// Consent is lost after this long without a verified check (RFC 7675 §5.1).
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Validated client addresses kept per session. A client checks one pair per local
/// candidate (host v4/v6, srflx, relay): a handful. The bound stops an authenticated but
/// misbehaving client from pinning unbounded flows.
pub const MAX_ADDRESSES: usize = 8;
/// A check without USE-CANDIDATE takes the media path from an address that has had no
/// verified check for this long (and whose last check did not nominate). Consent checks
/// come every 4-6 s (RFC 7675 5.1), so when the check due on the old address arrives from
/// the new one, the old address has been silent for far longer; while both are alive,
/// a nominate-once client checks only the path.
pub const MOVE_AFTER_SILENCE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IceState {
    /// No verified check yet.
    New,
    /// At least one verified check; consent is fresh.
    Connected,
    /// A verified check carried USE-CANDIDATE; consent is fresh.
    Nominated,
    /// Consent expired; all addresses were dropped (the caller unpins what it pinned).
    /// A later verified check starts over from `Connected`/`Nominated`.
    Expired,
}

impl IceState {
    /// Stable lowercase name for APIs and logs.
    pub fn name(self) -> &'static str {
        match self {
            IceState::New => "new",
            IceState::Connected => "connected",
            IceState::Nominated => "nominated",
            IceState::Expired => "expired",
        }
    }
}

/// One session's ICE state. Protocol input is only ever a check that [`crate::ice::answer`]
/// already authenticated; nothing here parses bytes.
#[derive(Debug)]
pub struct IceSession {
    credentials: Credentials,
    state: IceState,
    created: Instant,
    last_valid: Option<Instant>,
    /// Validated addresses, least recently checked first, so eviction takes the front.
    addresses: Vec<SocketAddr>,
    /// Where media goes.
    path: Option<Path>,
    /// The path and state before the last check moved the path: put back if the new
    /// address cannot be pinned.
    displaced: Option<(Path, IceState)>,
    /// Addresses the path left while they were still being checked, with their last
    /// check: released once silent for [`MOVE_AFTER_SILENCE`].
    left: Vec<(SocketAddr, Instant)>,
    /// Addresses dropped to make room or left by the path, waiting for the caller to
    /// unpin them.
    evicted: Vec<SocketAddr>,
    /// ICE restarts (WHIP/WHEP PATCH): see [`IceSession::restart`].
    restart: Restart,
}

/// What ICE restarts add to a session's ICE state.
#[derive(Debug)]
struct Restart {
    /// The server ufrag the session was created with: it names the session for good
    /// (the participant id in URLs is its participant part), also after restarts.
    initial_ufrag: String,
    /// The server ufrag before the latest restart: still a name of the session, so a
    /// client's late check under it is answered (401) rather than dropped as unknown.
    previous_ufrag: Option<String>,
    /// The client's ufrag of the current ICE session, when known (WHIP/WHEP offers and
    /// restarts): a PATCH fragment carrying it again is trickle, not a restart.
    remote_ufrag: Option<String>,
    /// After a restart: the addresses validated under the old credentials and not since,
    /// released once the media path is on an address checked under the new ones.
    stale: Vec<SocketAddr>,
}

/// The media path: the client address media goes to, and its last verified check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Path {
    addr: SocketAddr,
    last_check: Instant,
    /// That check carried USE-CANDIDATE: the client renominates, so only a nomination
    /// moves the path.
    nominating: bool,
}

impl IceSession {
    pub fn new(credentials: Credentials, now: Instant) -> Self {
        IceSession {
            restart: Restart {
                initial_ufrag: credentials.ufrag.clone(),
                previous_ufrag: None,
                remote_ufrag: None,
                stale: Vec::new(),
            },
            credentials,
            state: IceState::New,
            created: now,
            last_valid: None,
            addresses: Vec::new(),
            path: None,
            displaced: None,
            left: Vec::new(),
            evicted: Vec::new(),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// When the session was created. Sessions in `New` never expire here (the client may
    /// still come); the caller can use this to reap ones that never connect.
    pub fn created(&self) -> Instant {
        self.created
    }

    pub fn state(&self) -> IceState {
        self.state
    }

    /// Called after `answer` returned Success for a request from `from`. Returns
    /// `Some(from)` when the address was not validated before: the caller pins it. If that
    /// overflowed [`MAX_ADDRESSES`], the least recently checked address other than the
    /// path was evicted; if the check moved the media path (see the module docs), the
    /// address it left was evicted too: drain [`Self::take_evicted`] after every call and
    /// unpin those once `from` is pinned.
    pub fn on_valid_check(
        &mut self,
        from: SocketAddr,
        use_candidate: bool,
        now: Instant,
    ) -> Option<SocketAddr> {
        self.last_valid = Some(now);
        // Checked under the current credentials: no longer an old session's address.
        self.restart.stale.retain(|a| *a != from);
        self.displaced = None;
        // Checked again: in use, an ordinary address of the session.
        self.left.retain(|(a, _)| *a != from);
        let before = self.state;
        if use_candidate {
            self.state = IceState::Nominated;
        } else if matches!(self.state, IceState::New | IceState::Expired) {
            self.state = IceState::Connected;
        }
        let here = Path {
            addr: from,
            last_check: now,
            nominating: use_candidate,
        };
        match self.path {
            Some(path) if path.addr == from => self.path = Some(here),
            Some(path) => {
                let silent = !path.nominating && now >= path.last_check + MOVE_AFTER_SILENCE;
                if use_candidate || silent {
                    self.displaced = Some((path, before));
                    self.path = Some(here);
                    self.left.push((path.addr, path.last_check));
                }
            }
            None => self.path = Some(here),
        }
        self.release_left(now);

        if let Some(pos) = self.addresses.iter().position(|a| *a == from) {
            let addr = self.addresses.remove(pos);
            self.addresses.push(addr);
            return None;
        }
        if self.addresses.len() >= MAX_ADDRESSES {
            let path = self.path.map(|p| p.addr);
            if let Some(pos) = self.addresses.iter().position(|a| Some(*a) != path) {
                self.evicted.push(self.addresses.remove(pos));
            }
        }
        self.addresses.push(from);
        Some(from)
    }

    /// Media (DTLS, SRTP) arrived from `addr`, which the ICE layer already validated: a
    /// path or a left address that still carries media is not silent, whatever its
    /// checks say, so a check from elsewhere without USE-CANDIDATE does not move media
    /// away from a client that is plainly still there. Consent itself is not refreshed:
    /// that takes checks (RFC 7675).
    pub fn heard(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(path) = self.path.as_mut().filter(|p| p.addr == addr) {
            path.last_check = path.last_check.max(now);
        }
        for (a, last) in &mut self.left {
            if *a == addr {
                *last = (*last).max(now);
            }
        }
    }

    /// Evict the addresses the path left that have been silent for [`MOVE_AFTER_SILENCE`].
    fn release_left(&mut self, now: Instant) {
        let addresses = &mut self.addresses;
        let evicted = &mut self.evicted;
        self.left.retain(|&(addr, last_check)| {
            if now < last_check + MOVE_AFTER_SILENCE {
                return true;
            }
            if let Some(pos) = addresses.iter().position(|a| *a == addr) {
                evicted.push(addresses.remove(pos));
            }
            false
        });
    }

    /// Undo the validation of `addr`, for when the caller could not pin it (pin conflict
    /// or failure): the next verified check from it is reported as new again, so pinning is
    /// retried. If the check had moved the media path there, the path (and the state) go
    /// back to where they were; if no address is left the session is back to `New`
    /// (nothing validated, so nothing to keep fresh).
    pub fn forget(&mut self, addr: SocketAddr) {
        self.addresses.retain(|a| *a != addr);
        if self.displaced.is_some_and(|(p, _)| p.addr == addr) {
            self.displaced = None;
        }
        if self.path.is_some_and(|p| p.addr == addr) {
            match self.displaced.take() {
                Some((path, state)) => {
                    self.path = Some(path);
                    self.state = state;
                    self.left.retain(|(a, _)| *a != path.addr);
                    // Still pinned: the caller restores the eviction, which this covers.
                    if !self.addresses.contains(&path.addr) && self.addresses.len() < MAX_ADDRESSES
                    {
                        self.addresses.insert(0, path.addr);
                    }
                }
                None => {
                    self.path = None;
                    if self.state == IceState::Nominated {
                        self.state = IceState::Connected;
                    }
                }
            }
        }
        if self.addresses.is_empty() && self.state != IceState::New {
            self.state = IceState::New;
            self.last_valid = None;
            self.path = None;
        }
    }

    /// Take back addresses that [`Self::take_evicted`] handed out, for when the check that
    /// evicted them could not be completed (its own address was not pinned): they are
    /// still pinned, so ICE must keep tracking them. They return as the least recently
    /// checked, within [`MAX_ADDRESSES`].
    pub fn restore(&mut self, evicted: impl IntoIterator<Item = SocketAddr>) {
        for addr in evicted {
            if self.addresses.len() < MAX_ADDRESSES && !self.addresses.contains(&addr) {
                self.addresses.insert(0, addr);
            }
        }
    }

    /// Addresses evicted since the last call; the caller unpins each.
    pub fn take_evicted(&mut self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.release_stale();
        self.evicted.drain(..)
    }

    /// All validated client addresses (at most [`MAX_ADDRESSES`]), least recently checked
    /// first.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addresses.iter().copied()
    }

    /// Where media goes: the latest nomination, the first validated address before any,
    /// or where the client's checks moved it (see the module docs).
    pub fn selected(&self) -> Option<SocketAddr> {
        self.path.map(|p| p.addr)
    }

    /// When consent runs out unless another verified check arrives; `None` when not
    /// connected (`New` does not expire, `Expired` already did).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            IceState::Connected | IceState::Nominated => {
                self.last_valid.map(|t| t + CONSENT_TIMEOUT)
            }
            IceState::New | IceState::Expired => None,
        }
    }

    /// Returns true exactly once per loss of consent (no verified check for
    /// [`CONSENT_TIMEOUT`]); the state becomes `Expired` and all addresses are forgotten,
    /// so the caller unpins everything it pinned for this session.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => {
                self.state = IceState::Expired;
                self.addresses.clear();
                self.path = None;
                self.displaced = None;
                self.left.clear();
                // Pending evictions are covered by "unpin everything".
                self.evicted.clear();
                true
            }
            _ => false,
        }
    }
}

/// ICE restarts (RFC 8445 §9), as WHIP/WHEP PATCH asks for them (RFC 9725 §4.3.2).
impl IceSession {
    /// From now on only `credentials` authenticate checks, and the client's ufrag is
    /// `remote_ufrag`. The DTLS association above is untouched. The addresses validated
    /// so far stay pinned and the media path stays where it is (RFC 8445: media continues
    /// on the previous pair until the new session completes) until the path is on an
    /// address checked under the new credentials; then the old ones are evicted. Returns
    /// the server ufrag that stops naming the session, for the caller's index.
    pub fn restart(&mut self, credentials: Credentials, remote_ufrag: String) -> Option<String> {
        let old = std::mem::replace(&mut self.credentials, credentials);
        self.restart.remote_ufrag = Some(remote_ufrag);
        self.restart.stale = self.addresses.clone();
        let dropped = self.restart.previous_ufrag.replace(old.ufrag)?;
        (!self.names().any(|n| n == dropped)).then_some(dropped)
    }

    /// Every server ufrag the session is found by: the current one, the one it was
    /// created with and the one before the latest restart, each once. Only the current
    /// one authenticates checks.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        let current = self.credentials.ufrag.as_str();
        let initial = self.restart.initial_ufrag.as_str();
        let previous = self
            .restart
            .previous_ufrag
            .as_deref()
            .filter(|p| *p != current && *p != initial);
        std::iter::once(current)
            .chain(Some(initial).filter(|i| *i != current))
            .chain(previous)
    }

    pub fn remote_ufrag(&self) -> Option<&str> {
        self.restart.remote_ufrag.as_deref()
    }

    pub fn set_remote_ufrag(&mut self, ufrag: String) {
        self.restart.remote_ufrag = Some(ufrag);
    }

    /// Once the media path is on an address checked since the restart, the old session's
    /// addresses are evicted with the check that put it there: not before, so media
    /// kept flowing on the old path meanwhile.
    fn release_stale(&mut self) {
        let Some(path) = self.path else {
            return;
        };
        if self.restart.stale.is_empty() || self.restart.stale.contains(&path.addr) {
            return;
        }
        for addr in std::mem::take(&mut self.restart.stale) {
            if let Some(pos) = self.addresses.iter().position(|a| *a == addr) {
                self.evicted.push(self.addresses.remove(pos));
            }
        }
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;

    fn credentials(ufrag: &str) -> Credentials {
        Credentials {
            ufrag: ufrag.into(),
            pwd: "abcdefghijklmnopqrstuvwx".into(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn old_addresses_go_once_a_new_path_is_nominated_not_before() {
        let t0 = Instant::now();
        let mut s = IceSession::new(credentials("roomAsrv00001"), t0);
        s.set_remote_ufrag("cli1".into());
        s.on_valid_check(addr(1), true, t0);
        s.on_valid_check(addr(2), false, t0);
        assert_eq!(s.take_evicted().count(), 0);

        assert_eq!(s.restart(credentials("roomAnew00002"), "cli2".into()), None);
        assert_eq!(s.credentials().ufrag, "roomAnew00002");
        assert_eq!(s.remote_ufrag(), Some("cli2"));
        // New checks that do not (yet) take the path change nothing for the old ones.
        assert_eq!(s.on_valid_check(addr(3), false, t0), Some(addr(3)));
        assert_eq!(s.take_evicted().count(), 0);
        assert_eq!(s.selected(), Some(addr(1)), "media stays on the old path");
        // The first nomination under the new credentials releases both old addresses.
        assert_eq!(s.on_valid_check(addr(3), true, t0), None);
        let mut evicted: Vec<SocketAddr> = s.take_evicted().collect();
        evicted.sort();
        assert_eq!(evicted, [addr(1), addr(2)]);
        assert_eq!(s.addresses().collect::<Vec<_>>(), [addr(3)]);
        assert_eq!(s.selected(), Some(addr(3)));
    }

    #[test]
    fn an_old_address_checked_under_the_new_credentials_stays() {
        let t0 = Instant::now();
        let mut s = IceSession::new(credentials("roomAsrv00001"), t0);
        s.on_valid_check(addr(1), true, t0);
        s.on_valid_check(addr(2), false, t0);
        s.restart(credentials("roomAnew00002"), "cli2".into());
        // The client kept its port: its nomination under the new credentials keeps the
        // path where it is and releases the address it did not check again.
        assert_eq!(s.on_valid_check(addr(1), true, t0), None);
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [addr(2)]);
        assert_eq!(s.addresses().collect::<Vec<_>>(), [addr(1)]);
    }

    #[test]
    fn the_session_keeps_its_first_name_and_one_previous_one() {
        let t0 = Instant::now();
        let mut s = IceSession::new(credentials("roomAsrv00001"), t0);
        assert_eq!(s.names().collect::<Vec<_>>(), ["roomAsrv00001"]);
        assert_eq!(s.restart(credentials("roomAnew00002"), "c2".into()), None);
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["roomAnew00002", "roomAsrv00001"]
        );
        assert_eq!(s.restart(credentials("roomAnew00003"), "c3".into()), None);
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["roomAnew00003", "roomAsrv00001", "roomAnew00002"]
        );
        assert_eq!(
            s.restart(credentials("roomAnew00004"), "c4".into()),
            Some("roomAnew00002".into()),
            "the name before the previous restart is dropped"
        );
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["roomAnew00004", "roomAsrv00001", "roomAnew00003"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(t0: Instant) -> IceSession {
        IceSession::new(
            Credentials {
                ufrag: "roomAsrv1".into(),
                pwd: "abcdefghijklmnopqrstuvwx".into(),
            },
            t0,
        )
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn new_session_does_not_expire() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.state(), IceState::New);
        assert_eq!(s.poll_timeout(), None);
        assert!(!s.handle_timeout(t0 + secs(3600)));
        assert_eq!(s.state(), IceState::New);
        assert_eq!(s.selected(), None);
    }

    #[test]
    fn connected_after_valid_check_and_expires_at_30s() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let t1 = t0 + secs(5);
        assert_eq!(s.on_valid_check(addr(1), false, t1), Some(addr(1)));
        assert_eq!(s.state(), IceState::Connected);
        assert_eq!(s.selected(), Some(addr(1)));
        assert_eq!(s.poll_timeout(), Some(t1 + CONSENT_TIMEOUT));
        assert!(!s.handle_timeout(t1 + CONSENT_TIMEOUT - Duration::from_millis(1)));
        assert_eq!(s.state(), IceState::Connected);
        assert!(s.handle_timeout(t1 + CONSENT_TIMEOUT));
        assert_eq!(s.state(), IceState::Expired);
        assert!(!s.handle_timeout(t1 + secs(31)), "reported exactly once");
        assert!(!s.handle_timeout(t1 + secs(300)));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.addresses().count(), 0);
        assert_eq!(s.selected(), None);
    }

    #[test]
    fn check_at_20s_refreshes_consent() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), false, t0);
        assert_eq!(
            s.on_valid_check(addr(1), false, t0 + secs(20)),
            None,
            "known address is not reported again"
        );
        assert!(!s.handle_timeout(t0 + secs(30)));
        assert!(!s.handle_timeout(t0 + secs(49)));
        assert!(s.handle_timeout(t0 + secs(50)));
    }

    #[test]
    fn use_candidate_nominates_and_wins_selection() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), false, t0);
        assert_eq!(s.on_valid_check(addr(2), true, t0 + secs(1)), Some(addr(2)));
        assert_eq!(s.state(), IceState::Nominated);
        assert_eq!(
            s.take_evicted().collect::<Vec<_>>(),
            [addr(1)],
            "the address the path left is released"
        );
        // A later plain check elsewhere neither un-nominates nor changes selection: the
        // path's last check nominated, so the client renominates when it moves.
        s.on_valid_check(addr(3), false, t0 + secs(20));
        assert_eq!(s.state(), IceState::Nominated);
        assert_eq!(s.selected(), Some(addr(2)));
        assert_eq!(s.addresses().collect::<Vec<_>>(), [addr(2), addr(3)]);
        assert_eq!(s.take_evicted().count(), 0);
    }

    #[test]
    fn the_first_validated_address_is_the_path_until_something_moves_it() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), false, t0);
        s.on_valid_check(addr(2), false, t0 + Duration::from_millis(500));
        assert_eq!(s.selected(), Some(addr(1)), "addr(1) checked 0.5 s ago");
        assert_eq!(s.take_evicted().count(), 0);
        s.on_valid_check(addr(1), false, t0 + Duration::from_millis(900));
        s.on_valid_check(addr(2), false, t0 + Duration::from_millis(1800));
        assert_eq!(s.selected(), Some(addr(1)), "silent for 0.9 s only");
    }

    #[test]
    fn a_nominate_once_client_moves_when_its_path_goes_silent() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let (old, new) = (addr(1), addr(2));
        s.on_valid_check(old, true, t0);
        // Consent checks without USE-CANDIDATE, then the client's address changes.
        s.on_valid_check(old, false, t0 + secs(5));
        let t1 = t0 + secs(5) + MOVE_AFTER_SILENCE;
        assert_eq!(
            s.on_valid_check(new, false, t1 - Duration::from_millis(1)),
            Some(new)
        );
        assert_eq!(s.selected(), Some(old), "not silent long enough");
        assert_eq!(s.take_evicted().count(), 0);
        assert_eq!(s.on_valid_check(new, false, t1), None, "known address");
        assert_eq!(s.selected(), Some(new));
        assert_eq!(s.state(), IceState::Nominated, "still nominated");
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [old]);
        assert_eq!(s.addresses().collect::<Vec<_>>(), [new]);
        // The old address coming back later is a new address that does not take over
        // a path checked a moment ago.
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(s.on_valid_check(old, false, t2), Some(old));
        assert_eq!(s.selected(), Some(new));
    }

    #[test]
    fn a_path_that_carries_media_is_not_silent() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let (old, new) = (addr(1), addr(2));
        s.on_valid_check(old, true, t0);
        s.on_valid_check(old, false, t0 + secs(5));
        // No check from the old address since, but its media keeps coming.
        s.heard(old, t0 + secs(6));
        s.on_valid_check(new, false, t0 + secs(6) + Duration::from_millis(500));
        assert_eq!(s.selected(), Some(old), "media arrived 0.5 s ago");
        assert_eq!(s.take_evicted().count(), 0);
        // Once the old address falls silent for good, the next check moves the path.
        s.on_valid_check(new, false, t0 + secs(7) + Duration::from_millis(100));
        assert_eq!(s.selected(), Some(new));
        // Media from an address the session never validated changes nothing.
        s.heard(addr(9), t0 + secs(8));
        assert_eq!(s.selected(), Some(new));
    }

    #[test]
    fn a_renominating_client_is_moved_only_by_nominations() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), true, t0);
        // Chrome pings a backup pair without USE-CANDIDATE, long after the path's last
        // (nominating) check.
        s.on_valid_check(addr(2), false, t0 + secs(25));
        assert_eq!(s.selected(), Some(addr(1)));
        assert_eq!(s.take_evicted().count(), 0);
        s.on_valid_check(addr(2), true, t0 + secs(26));
        assert_eq!(s.selected(), Some(addr(2)));
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [addr(1)]);
    }

    #[test]
    fn a_live_address_the_path_left_is_released_once_silent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = session(t0);
        s.on_valid_check(addr(1), true, t0);
        s.on_valid_check(addr(3), false, t0);
        s.on_valid_check(addr(1), false, t0 + secs(5));
        // The client nominates another pair while the path is in use.
        assert_eq!(
            s.on_valid_check(addr(2), true, t0 + ms(5200)),
            Some(addr(2))
        );
        assert_eq!(s.selected(), Some(addr(2)));
        assert_eq!(s.take_evicted().count(), 0, "addr(1) was checked 0.2 s ago");
        s.on_valid_check(addr(2), true, t0 + ms(5800));
        assert_eq!(s.take_evicted().count(), 0, "silent for 0.8 s");
        s.on_valid_check(addr(2), true, t0 + ms(6200));
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [addr(1)]);
        assert_eq!(s.addresses().collect::<Vec<_>>(), [addr(3), addr(2)]);
        // A left address checked again is in use: it stays, as any other address does.
        s.on_valid_check(addr(3), true, t0 + secs(7));
        s.on_valid_check(addr(3), false, t0 + ms(7100));
        s.on_valid_check(addr(2), false, t0 + ms(7200));
        s.on_valid_check(addr(3), true, t0 + secs(9));
        assert_eq!(s.selected(), Some(addr(3)));
        assert_eq!(s.take_evicted().count(), 0);
        assert_eq!(s.addresses().count(), 2);
    }

    #[test]
    fn a_refused_move_puts_the_path_back() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), false, t0);
        assert_eq!(s.state(), IceState::Connected);
        assert_eq!(s.on_valid_check(addr(2), true, t0 + secs(1)), Some(addr(2)));
        let evicted: Vec<SocketAddr> = s.take_evicted().collect();
        assert_eq!(evicted, [addr(1)]);
        // The shell could not pin addr(2).
        s.forget(addr(2));
        s.restore(evicted);
        assert_eq!(s.selected(), Some(addr(1)));
        assert_eq!(s.state(), IceState::Connected);
        assert_eq!(s.addresses().collect::<Vec<_>>(), [addr(1)]);
        assert_eq!(s.poll_timeout(), Some(t0 + secs(1) + CONSENT_TIMEOUT));
    }

    #[test]
    fn new_address_reported_once() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.on_valid_check(addr(1), false, t0), Some(addr(1)));
        for i in 1..5 {
            assert_eq!(s.on_valid_check(addr(1), i % 2 == 0, t0 + secs(i)), None);
        }
        assert_eq!(s.addresses().count(), 1);
    }

    #[test]
    fn address_set_is_bounded_and_keeps_the_nominated_one() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(100), true, t0);
        for p in 1..MAX_ADDRESSES as u16 {
            assert_eq!(s.on_valid_check(addr(p), false, t0), Some(addr(p)));
        }
        assert_eq!(s.take_evicted().count(), 0, "exactly full, nothing evicted");
        // Overflow twice: the oldest non-nominated go, the nominated (oldest of all) stays.
        assert_eq!(s.on_valid_check(addr(50), false, t0), Some(addr(50)));
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [addr(1)]);
        assert_eq!(s.on_valid_check(addr(51), false, t0), Some(addr(51)));
        assert_eq!(s.take_evicted().collect::<Vec<_>>(), [addr(2)]);
        assert_eq!(s.addresses().count(), MAX_ADDRESSES);
        assert!(s.addresses().any(|a| a == addr(100)));
        assert_eq!(s.selected(), Some(addr(100)));
        assert_eq!(s.take_evicted().count(), 0, "drained");
    }

    #[test]
    fn a_refused_pin_gives_the_evicted_address_back() {
        let t0 = Instant::now();
        let mut s = session(t0);
        // addr(1) is the path (checked first); checked again last, so addr(2) is the
        // least recently checked.
        for i in (1..=MAX_ADDRESSES as u16).chain([1]) {
            s.on_valid_check(addr(i), false, t0);
        }
        let before: Vec<SocketAddr> = s.addresses().collect();
        let new = addr(100);
        assert_eq!(s.on_valid_check(new, false, t0), Some(new));
        let evicted: Vec<SocketAddr> = s.take_evicted().collect();
        assert_eq!(evicted, [addr(2)]);
        // The shell could not pin `new`: forget it and take the eviction back.
        s.forget(new);
        s.restore(evicted);
        assert_eq!(s.addresses().collect::<Vec<_>>(), before);
        assert_eq!(s.selected(), Some(addr(1)));
    }

    #[test]
    fn valid_check_after_expiry_starts_over() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), true, t0);
        assert!(s.handle_timeout(t0 + secs(30)));
        // The caller unpinned everything on expiry, so the same address is new again.
        let t1 = t0 + secs(40);
        assert_eq!(s.on_valid_check(addr(1), false, t1), Some(addr(1)));
        assert_eq!(s.state(), IceState::Connected);
        assert_eq!(s.poll_timeout(), Some(t1 + CONSENT_TIMEOUT));
        assert!(s.handle_timeout(t1 + secs(30)), "and can expire again");
    }

    #[test]
    fn forget_undoes_a_validation() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.on_valid_check(addr(1), false, t0);
        s.on_valid_check(addr(2), true, t0 + secs(1));
        s.forget(addr(2));
        assert_eq!(
            s.state(),
            IceState::Connected,
            "nomination went with the address"
        );
        assert_eq!(s.selected(), Some(addr(1)));
        assert_eq!(
            s.on_valid_check(addr(2), false, t0 + secs(2)),
            Some(addr(2)),
            "reported as new again, so the caller retries the pin"
        );
        s.forget(addr(1));
        s.forget(addr(2));
        s.forget(addr(3)); // unknown: no-op
        assert_eq!(s.state(), IceState::New);
        assert_eq!(s.addresses().count(), 0);
        assert_eq!(s.poll_timeout(), None, "nothing validated, nothing expires");
    }

    #[test]
    fn state_names() {
        let names = [
            IceState::New,
            IceState::Connected,
            IceState::Nominated,
            IceState::Expired,
        ]
        .map(IceState::name);
        assert_eq!(names, ["new", "connected", "nominated", "expired"]);
    }
}
