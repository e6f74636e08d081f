//! Budgets on what an unauthenticated Binding Request may cost roomgate.
//!
//! A Binding Request can come from any (spoofed) source and is authenticated only by the
//! thread that owns its room, so until then it can cost roomgate two things an attacker
//! controls the rate of:
//! - an error response (400/401) sent wherever its source says: without a limit the
//!   port is a reflector for anyone who learned one server ufrag. Successes need no
//!   limit: they answer requests that proved knowledge of the session's password;
//! - in connected mode, a handoff to the owning thread when the kernel's reuseport hash
//!   put it on another one: an allocation, a channel send and a wake-up each, into the
//!   owner's bounded queue, where a flood would crowd out other sessions' first checks.
//!
//! Each is limited by two budgets, both GCRA token buckets (one deadline per bucket, no
//! refill timer):
//! - per claimed session (the session, or for a handoff the server ufrag, that the
//!   request's USERNAME names): a flood naming one session exhausts that session's
//!   budget only, so a real client of another session still gets its answer;
//! - per logic thread: bounds a flood spread over many claimed sessions.
//!
//! Sans-IO: the caller passes `now`.
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
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
/// Handoffs per claimed server ufrag. Only a client's checks from sources not pinned yet
/// are handed off (a pinned source has its own connected socket on the owner), and only
/// those the reuseport hash put on another thread. A conforming ICE agent starts a new
/// check at most every Ta = 50 ms over all its pairs (RFC 8445 §14.2), 20 per second,
/// and retransmits each one at 250 ms and later: a burst of 32 holds the first round of
/// a client with ten candidate pairs and two retransmissions of each, and 20 per second
/// is Ta's pace for the candidates it trickles later. An ICE restart brings a new server
/// ufrag, so a budget of its own. A flood naming one ufrag gets the same share, so the
/// flooded session's own new sources may be withheld until the flood stops: its pinned
/// paths, and every other session, are unaffected.
pub const HANDOFF_UFRAG_RATE: Rate = Rate {
    per_second: 20,
    burst: 32,
};
/// Handoffs per logic thread, over all ufrags. A join storm of 2,000 sessions in 10 s
/// (issue 11) hands off at most ~2,000 first checks a second (200 sessions a second,
/// each a few candidates on the wrong thread, with retransmissions): 5,000 per second
/// leaves room, and the burst is the owner's queue depth, so a flood that varies the
/// ufrag costs at most that many allocations and sends a second.
pub const HANDOFF_THREAD_RATE: Rate = Rate {
    per_second: 5_000,
    burst: 4_096,
};
/// Claimed sessions with a bucket, kept at most per budget; beyond it, those that are
/// full again (which carry no state) are forgotten, and if none is, all are (the thread
/// budget still holds).
pub const MAX_TRACKED_SESSIONS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Which budget refused; the discriminant indexes [`crate::stats::REPLY_LIMIT_REASONS`].
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

/// The two budgets of one kind of cost: per claimed session (`K` names one) and per
/// logic thread.
pub struct Budgets<K> {
    session_rate: Rate,
    thread_rate: Rate,
    thread: Option<Bucket>,
    sessions: HashMap<K, Bucket>,
    max_tracked: usize,
}

impl<K: Copy + Eq + Hash> Budgets<K> {
    pub fn new(session_rate: Rate, thread_rate: Rate, max_tracked: usize) -> Self {
        Budgets {
            session_rate,
            thread_rate,
            thread: None,
            sessions: HashMap::new(),
            max_tracked: max_tracked.max(1),
        }
    }

    /// May a request claiming `session` cost this at `now`? It is charged to both budgets
    /// only when both allow it, so a flood naming one session never spends the thread's
    /// budget once its own is gone.
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

/// One logic thread's budgets: error responses by claimed session, handoffs by claimed
/// server ufrag.
pub struct ReplyLimiter<K> {
    replies: Budgets<K>,
    /// Keyed by a hash of the ufrag, so tracking one costs no allocation; the keyed
    /// hasher's secret keeps an attacker from choosing ufrags that collide with a
    /// victim's (naming the victim's own ufrag is what the per-ufrag budget is for).
    handoffs: Budgets<u64>,
    ufrag_hasher: RandomState,
}

impl<K: Copy + Eq + Hash> Default for ReplyLimiter<K> {
    fn default() -> Self {
        ReplyLimiter {
            replies: Budgets::new(SESSION_RATE, THREAD_RATE, MAX_TRACKED_SESSIONS),
            handoffs: Budgets::new(
                HANDOFF_UFRAG_RATE,
                HANDOFF_THREAD_RATE,
                MAX_TRACKED_SESSIONS,
            ),
            ufrag_hasher: RandomState::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> ReplyLimiter<K> {
    /// May an error response for a request claiming `session` go out at `now`?
    pub fn allow(&mut self, session: K, now: Instant) -> Result<(), LimitReason> {
        self.replies.allow(session, now)
    }

    /// May a request naming `server_ufrag` be handed to the thread that owns its room?
    pub fn allow_handoff(&mut self, server_ufrag: &str, now: Instant) -> Result<(), LimitReason> {
        let key = self.ufrag_hasher.hash_one(server_ufrag);
        self.handoffs.allow(key, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limiter() -> Budgets<u32> {
        Budgets::new(
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
        l: &mut Budgets<u32>,
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
        let mut l = Budgets::new(
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

    /// With the shipped budgets: a flood naming one server ufrag, half of 100,000/s on
    /// the non-owner for 4 s, is handed off its burst and then Ta's pace, while a client
    /// of another session that starts mid-flood, ten candidate pairs paced at Ta with
    /// two retransmissions each (RFC 8445 §14.2, RTO 250 ms), has every check handed off.
    #[test]
    fn a_flood_naming_one_ufrag_gets_a_bounded_share_of_handoffs_and_other_ufrags_all_theirs() {
        let mut l = ReplyLimiter::<u32>::default();
        let t0 = Instant::now();
        let every = Duration::from_micros(20);
        let (mut flood_ok, mut flood_by_session, mut client_ok) = (0u32, 0u32, 0u32);
        let client_start = t0 + Duration::from_secs(2);
        let mut client: Vec<Instant> = (0..10u32)
            .flat_map(|pair| {
                let first = client_start + 50 * MS * pair;
                [first, first + 250 * MS, first + 750 * MS]
            })
            .collect();
        client.sort();
        let mut client = client.into_iter().peekable();
        for i in 0..200_000u32 {
            let now = t0 + every * i;
            while let Some(at) = client.next_if(|at| *at <= now) {
                if l.allow_handoff("roomAAAAclient01", at).is_ok() {
                    client_ok += 1;
                }
            }
            match l.allow_handoff("roomAAAAvictim01", now) {
                Ok(()) => flood_ok += 1,
                Err(LimitReason::Session) => flood_by_session += 1,
                Err(LimitReason::Thread) => panic!("one ufrag spent the thread's budget"),
            }
        }
        let burst = HANDOFF_UFRAG_RATE.burst;
        let paced = HANDOFF_UFRAG_RATE.per_second * 4;
        assert!(
            (burst + paced - 1..=burst + paced).contains(&flood_ok),
            "flood handed off {flood_ok}"
        );
        assert_eq!(flood_by_session, 200_000 - flood_ok);
        assert_eq!(client_ok, 30, "every check of the other client");
    }

    #[test]
    fn handoffs_over_many_ufrags_are_bounded_by_the_thread_budget() {
        let mut l = ReplyLimiter::<u32>::default();
        let t0 = Instant::now();
        // 100,000/s for 2 s, every request naming a ufrag of its own.
        let (mut ok, mut by_thread) = (0u64, 0u64);
        for i in 0..200_000u32 {
            match l.allow_handoff(&format!("room{i:012}"), t0 + Duration::from_micros(10) * i) {
                Ok(()) => ok += 1,
                Err(LimitReason::Thread) => by_thread += 1,
                Err(LimitReason::Session) => panic!("a fresh ufrag has its burst"),
            }
        }
        let want = u64::from(HANDOFF_THREAD_RATE.burst + 2 * HANDOFF_THREAD_RATE.per_second);
        assert!((want - 1..=want).contains(&ok), "handed off {ok}");
        assert_eq!(by_thread, 200_000 - ok);
        assert!(l.handoffs.tracked() <= MAX_TRACKED_SESSIONS);
    }

    #[test]
    fn handoff_and_reply_budgets_are_separate() {
        let mut l = ReplyLimiter::<u32>::default();
        let now = Instant::now();
        for _ in 0..HANDOFF_UFRAG_RATE.burst {
            assert_eq!(l.allow_handoff("roomAAAAvictim01", now), Ok(()));
        }
        assert_eq!(
            l.allow_handoff("roomAAAAvictim01", now),
            Err(LimitReason::Session)
        );
        // The owner's budget for error responses to the same session is untouched.
        for _ in 0..SESSION_RATE.burst {
            assert_eq!(l.allow(7, now), Ok(()));
        }
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
