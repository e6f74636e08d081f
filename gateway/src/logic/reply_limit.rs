//! Rate limits on STUN error responses (400/401).
//!
//! A Binding Request can come from any (spoofed) source, so every error response roomgate
//! sends is a datagram an attacker can aim at someone else: without a limit the port is
//! a reflector for anyone who learned one server ufrag. Successes need no limit: they
//! answer requests that proved knowledge of the session's password.
//!
//! Two budgets, both GCRA token buckets (one deadline per bucket, no refill timer):
//! - per claimed session (the session the request's USERNAME names): a flood naming one
//!   session exhausts that session's budget only, so a real client of another session
//!   that mistypes its password still gets its 401;
//! - per logic thread: bounds a flood spread over many sessions.
//!
//! Sans-IO: the caller passes `now`.
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// Error responses per claimed session: a client that mistypes retries a few times a
/// second at most; a burst of 8 covers a restart's first checks on several candidates.
pub const SESSION_RATE: Rate = Rate {
    per_second: 4,
    burst: 8,
};
/// Error responses per logic thread, over all sessions.
pub const THREAD_RATE: Rate = Rate {
    per_second: 100,
    burst: 100,
};
/// Per-session buckets kept at most; beyond it, those that are full again (which carry no
/// state) are forgotten, and if none is, all are (the thread budget still holds).
pub const MAX_TRACKED_SESSIONS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Which budget refused a response; the discriminant indexes
/// [`crate::stats::REPLY_LIMIT_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitReason {
    Session = 0,
    Thread = 1,
}

/// A GCRA bucket: `tat` is when the bucket is full again; a response conforms while
/// `tat` is less than a burst's worth of intervals ahead of now.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tat: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket { tat: now }
    }

    fn conforms(&self, rate: Rate, now: Instant) -> bool {
        let tolerance = interval(rate) * rate.burst.saturating_sub(1);
        self.tat <= now + tolerance
    }

    fn take(&mut self, rate: Rate, now: Instant) {
        self.tat = self.tat.max(now) + interval(rate);
    }

    fn full(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

fn interval(rate: Rate) -> Duration {
    Duration::from_secs(1) / rate.per_second.max(1)
}

/// The two budgets of one logic thread; `K` names a session.
pub struct ReplyLimiter<K> {
    session_rate: Rate,
    thread_rate: Rate,
    thread: Option<Bucket>,
    sessions: HashMap<K, Bucket>,
    max_tracked: usize,
}

impl<K: Copy + Eq + Hash> Default for ReplyLimiter<K> {
    fn default() -> Self {
        ReplyLimiter::new(SESSION_RATE, THREAD_RATE, MAX_TRACKED_SESSIONS)
    }
}

impl<K: Copy + Eq + Hash> ReplyLimiter<K> {
    pub fn new(session_rate: Rate, thread_rate: Rate, max_tracked: usize) -> Self {
        ReplyLimiter {
            session_rate,
            thread_rate,
            thread: None,
            sessions: HashMap::new(),
            max_tracked: max_tracked.max(1),
        }
    }

    /// May an error response for a request claiming `session` go out at `now`? A
    /// response is charged to both budgets only when both allow it, so a flood naming one
    /// session never spends the thread's budget once its own is gone.
    pub fn allow(&mut self, session: K, now: Instant) -> Result<(), LimitReason> {
        let own = self.sessions.get(&session).copied();
        if own.is_some_and(|b| !b.conforms(self.session_rate, now)) {
            return Err(LimitReason::Session);
        }
        let thread = self.thread.get_or_insert(Bucket::new(now));
        if !thread.conforms(self.thread_rate, now) {
            return Err(LimitReason::Thread);
        }
        thread.take(self.thread_rate, now);
        if own.is_none() && self.sessions.len() >= self.max_tracked {
            self.sessions.retain(|_, b| !b.full(now));
            if self.sessions.len() >= self.max_tracked {
                self.sessions.clear();
            }
        }
        self.sessions
            .entry(session)
            .or_insert(Bucket::new(now))
            .take(self.session_rate, now);
        Ok(())
    }

    /// Sessions with a bucket.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limiter() -> ReplyLimiter<u32> {
        ReplyLimiter::new(
            Rate {
                per_second: 4,
                burst: 8,
            },
            Rate {
                per_second: 100,
                burst: 100,
            },
            16,
        )
    }

    /// Requests for `session` every `every` from `start` for `n` requests: how many were
    /// allowed, and how many limited for each reason.
    fn drive(
        l: &mut ReplyLimiter<u32>,
        session: impl Fn(u32) -> u32,
        start: Instant,
        every: Duration,
        n: u32,
    ) -> (u32, u32, u32) {
        let (mut ok, mut by_session, mut by_thread) = (0, 0, 0);
        for i in 0..n {
            match l.allow(session(i), start + every * i) {
                Ok(()) => ok += 1,
                Err(LimitReason::Session) => by_session += 1,
                Err(LimitReason::Thread) => by_thread += 1,
            }
        }
        (ok, by_session, by_thread)
    }

    #[test]
    fn a_flood_naming_one_session_gets_its_burst_then_its_rate() {
        let mut l = limiter();
        let t0 = Instant::now();
        // 100,000/s for 4 s: every 10 µs.
        let (ok, by_session, by_thread) =
            drive(&mut l, |_| 7, t0, Duration::from_micros(10), 400_000);
        // The burst of 8, then 4 per second over the remaining ~4 s.
        assert!((8 + 15..=8 + 16).contains(&ok), "allowed {ok}");
        assert_eq!(by_session, 400_000 - ok);
        assert_eq!(
            by_thread, 0,
            "the thread budget is not spent by one session"
        );
    }

    #[test]
    fn a_client_that_mistypes_during_a_flood_on_another_session_gets_its_answer() {
        let mut l = limiter();
        let t0 = Instant::now();
        drive(&mut l, |_| 1, t0, Duration::from_micros(10), 100_000);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(l.allow(2, now), Ok(()));
        // And its second and third mistakes too: a client's retries fit its own burst.
        assert_eq!(l.allow(2, now + 100 * MS), Ok(()));
        assert_eq!(l.allow(2, now + 200 * MS), Ok(()));
    }

    #[test]
    fn a_flood_over_many_sessions_is_bounded_by_the_thread_budget() {
        let mut l = limiter();
        let t0 = Instant::now();
        // 10,000/s for 2 s, each request naming another of 1,000 sessions.
        let (ok, by_session, by_thread) =
            drive(&mut l, |i| i % 1000, t0, Duration::from_micros(100), 20_000);
        // The thread's burst of 100, then 100 per second.
        assert!((299..=301).contains(&ok), "allowed {ok}");
        assert_eq!(by_session + by_thread, 20_000 - ok);
        assert!(by_thread > by_session, "{by_thread} vs {by_session}");
        assert!(l.tracked() <= 16, "bounded: {}", l.tracked());
    }

    #[test]
    fn budgets_refill_with_time() {
        let mut l = limiter();
        let t0 = Instant::now();
        for i in 0..8 {
            assert_eq!(l.allow(3, t0 + MS * i), Ok(()), "burst {i}");
        }
        assert_eq!(l.allow(3, t0 + 10 * MS), Err(LimitReason::Session));
        // One interval (250 ms) after the bucket filled up to its limit, one more.
        assert_eq!(l.allow(3, t0 + 251 * MS), Ok(()));
        assert_eq!(l.allow(3, t0 + 260 * MS), Err(LimitReason::Session));
        // Two seconds of silence give the whole burst back.
        let later = t0 + Duration::from_secs(3);
        for i in 0..8 {
            assert_eq!(l.allow(3, later + MS * i), Ok(()), "burst again {i}");
        }
    }

    #[test]
    fn a_refused_response_charges_neither_budget() {
        let mut l = ReplyLimiter::new(
            Rate {
                per_second: 1,
                burst: 1,
            },
            Rate {
                per_second: 1,
                burst: 2,
            },
            16,
        );
        let t0 = Instant::now();
        assert_eq!(l.allow(1, t0), Ok(()));
        // Session 1 is out: refused without touching the thread's second token.
        assert_eq!(l.allow(1, t0), Err(LimitReason::Session));
        assert_eq!(l.allow(2, t0), Ok(()));
        assert_eq!(l.allow(3, t0), Err(LimitReason::Thread));
        // Session 3 was refused by the thread budget, so it has no debt of its own.
        assert_eq!(l.allow(3, t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn reasons_index_their_metric_labels() {
        use crate::stats::REPLY_LIMIT_REASONS;
        assert_eq!(
            REPLY_LIMIT_REASONS[LimitReason::Session as usize],
            "session"
        );
        assert_eq!(REPLY_LIMIT_REASONS[LimitReason::Thread as usize], "global");
    }

    #[test]
    fn full_buckets_are_forgotten_first_when_the_table_is_full() {
        let mut l = limiter();
        let t0 = Instant::now();
        for s in 0..16 {
            assert_eq!(l.allow(s, t0), Ok(()));
        }
        assert_eq!(l.tracked(), 16);
        // A second later all 16 are full again: the 17th replaces them.
        assert_eq!(l.allow(100, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(l.tracked(), 1);
    }
}
