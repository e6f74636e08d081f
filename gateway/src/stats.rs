//! Per-thread counters shared with the control plane.
//!
//! Each logic thread owns one [`ThreadStats`] and is its only writer; the control
//! plane only reads. Relaxed atomics on a cache line of their own keep the media path
//! free of locks and of false sharing, and let `/api/status` read without stalling a
//! thread.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::{ice::StunOutcome, media::UnprotectFailure, net::SendErrno};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load+store is cheaper than a locked RMW and still exact.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Handoff counters are written by other threads too (the sender), so they use a real RMW.
#[derive(Default)]
pub struct SharedCounter(AtomicU64);

impl SharedCounter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[repr(align(64))]
#[derive(Default)]
pub struct ThreadStats {
    pub rx_datagrams: Counter,
    pub rx_bytes: Counter,
    pub tx_datagrams: Counter,
    pub tx_bytes: Counter,
    /// Sends that carried several datagrams with UDP GSO, and the datagrams they carried
    /// (also counted in `tx_datagrams`).
    pub tx_gso_sends: Counter,
    pub tx_gso_datagrams: Counter,
    /// GSO sends the kernel refused (EMSGSIZE past the path MTU, EIO/EINVAL without
    /// offload) whose datagrams were then sent one by one.
    pub tx_gso_fallbacks: Counter,
    /// Datagrams this thread passed to the owning thread (connected mode only).
    pub handoffs: Counter,
    /// Handoffs dropped because the owner's queue was full (never blocks the media path).
    pub handoff_failures: Counter,
    /// Datagrams this thread received from another thread.
    pub handoffs_received: SharedCounter,
    /// Handoffs this thread withheld (dropped before copying) because a handoff budget
    /// was spent, by [`REPLY_LIMIT_REASONS`] index: the claimed server ufrag's, the
    /// thread's.
    pub handoffs_limited: [Counter; REPLY_LIMIT_REASONS.len()],
    /// Datagrams that reached this thread although another thread provably owns them:
    /// a Binding Request for another thread's room in eBPF mode, or a datagram from a
    /// foreign source on a connected socket. Zero when steering works.
    pub misdelivered: Counter,
    /// Non-STUN datagrams from an address with no session on this thread. Dropped.
    pub no_session: Counter,
    /// Zero-length datagrams. Dropped.
    pub empty: Counter,
    /// Datagrams that filled the whole receive slot: possibly cut short by the kernel
    /// (quinn-udp does not report MSG_TRUNC), and larger than any datagram roomgate
    /// serves anyway. Dropped, never delivered truncated.
    pub oversized: Counter,
    /// First byte outside the RFC 7983 ranges. Dropped.
    pub unknown_type: Counter,
    /// Datagrams (DTLS, SRTP, STUN indications) delivered to a session.
    pub session_datagrams: Counter,
    /// Flow pins written (eBPF map inserts or connected sockets opened) and failures.
    pub pins: Counter,
    pub pin_failures: Counter,
    /// Valid checks refused because the address is pinned to another session.
    pub pin_conflicts: Counter,
    pub unpins: Counter,
    /// Flow-map removals the kernel refused: the entry stays and blocks that address.
    pub unpin_failures: Counter,
    /// Sessions whose consent expired (30 s without a valid check).
    pub consent_expired: Counter,
    /// WHIP/WHEP PATCHes applied: trickle (nothing to do for ICE-lite) and ICE restarts.
    pub ice_trickles: Counter,
    pub ice_restarts: Counter,
    /// Datagrams whose handling panicked (a bug): caught, counted, dropped.
    pub datagram_panics: Counter,
    /// Failed sends, by [`SendErrno`] index; the datagram is lost.
    pub send_errors: [Counter; SendErrno::ALL.len()],
    /// Datagrams the kernel dropped before this thread could read them (receive buffer
    /// full), by [`SOCKET_KINDS`] index: the group socket, and the connected sockets
    /// (closed ones included). Read from SO_MEMINFO every sweep.
    pub socket_receive_drops: [Counter; SOCKET_KINDS.len()],
    pub rooms: Counter,
    pub sessions: Counter,
    /// Sessions created, and sessions ended by [`SessionEnd`] index: every session that
    /// was created is live or ended under exactly one reason.
    pub sessions_created: Counter,
    pub sessions_ended: [Counter; SessionEnd::ALL.len()],
    pub connected_sockets: Counter,
    /// Time spent handling events (poll wake-up to going back to sleep), ns.
    pub busy_ns: Counter,
    /// Sessions per ICE state, refreshed by the consent sweep (new, connected, nominated, expired).
    pub sessions_by_state: [Counter; 4],
    /// Per-datagram processing time, bucketed (see [`PROCESSING_BUCKETS_NS`]).
    pub processing: Histogram,
    stun: [Counter; StunOutcome::ALL.len()],
    /// Error responses (400/401) to unauthenticated Binding Requests that were sent, and
    /// those the rate limits withheld, by [`REPLY_LIMIT_REASONS`] index.
    pub stun_error_replies: Counter,
    pub stun_replies_limited: [Counter; REPLY_LIMIT_REASONS.len()],
    pub media: MediaStats,
}

/// Why a session ended (the `reason` label of `roomgate_sessions_ended_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// DELETE of its WHIP/WHEP resource or REST participant.
    Deleted,
    /// A WHIP/WHEP session without a valid check for 30 s (RFC 7675).
    ConsentExpired,
    /// A WHIP/WHEP session that never connected, or whose DTLS handshake stalled.
    ConnectTimeout,
    /// The client closed DTLS (close_notify or alert).
    DtlsClosed,
    /// The DTLS handshake or the SRTP setup after it failed.
    DtlsFailed,
    /// Its room was closed: the cluster found another node owning it.
    RoomClosed,
    /// Created for a request whose caller was gone before the answer.
    Abandoned,
    /// The logic thread stopped.
    Shutdown,
}

impl SessionEnd {
    pub const ALL: [SessionEnd; 8] = [
        SessionEnd::Deleted,
        SessionEnd::ConsentExpired,
        SessionEnd::ConnectTimeout,
        SessionEnd::DtlsClosed,
        SessionEnd::DtlsFailed,
        SessionEnd::RoomClosed,
        SessionEnd::Abandoned,
        SessionEnd::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Deleted => "deleted",
            SessionEnd::ConsentExpired => "consent_expired",
            SessionEnd::ConnectTimeout => "connect_timeout",
            SessionEnd::DtlsClosed => "dtls_closed",
            SessionEnd::DtlsFailed => "dtls_failed",
            SessionEnd::RoomClosed => "room_closed",
            SessionEnd::Abandoned => "abandoned",
            SessionEnd::Shutdown => "shutdown",
        }
    }
}

/// Label values of [`ThreadStats::stun_replies_limited`]: the claimed session's budget,
/// the logic thread's.
pub const REPLY_LIMIT_REASONS: [&str; 2] = ["session", "global"];

/// Label values of [`ThreadStats::socket_receive_drops`].
pub const SOCKET_KINDS: [&str; 2] = ["group", "connected"];

/// DTLS, SRTP and forwarding counters of one thread (same single-writer rule).
#[derive(Default)]
pub struct MediaStats {
    pub dtls_started: Counter,
    pub dtls_completed: Counter,
    pub dtls_failed: Counter,
    /// Associations the client closed (close_notify / alert) after connecting.
    pub dtls_closed: Counter,
    /// DTLS datagrams dropped before webrtc-dtls: over a handshake's record budget or its
    /// queue, or, after the handshake, records no legitimate peer sends (plaintext
    /// application data or alerts, malformed CCS, unknown types).
    pub dtls_records_dropped: Counter,
    /// roomgate's last handshake flight sent again to a client that repeated its own
    /// after the handshake (it lost ours).
    pub dtls_flights_repeated: Counter,
    /// Handshake duration from ClientHello to keys, bucketed (see [`HANDSHAKE_BUCKETS_MS`]).
    pub dtls_handshake: HandshakeHistogram,
    /// SRTP / SRTCP packets refused, by [`UnprotectFailure`] index.
    pub srtp_unprotect_failures: [Counter; UnprotectFailure::ALL.len()],
    pub srtcp_unprotect_failures: [Counter; UnprotectFailure::ALL.len()],
    /// SRTP/SRTCP before the DTLS handshake finished: no keys yet, dropped.
    pub srtp_before_keys: Counter,
    pub srtp_protect_failures: Counter,
    pub rtp_received: Counter,
    pub rtp_forwarded: Counter,
    pub rtp_unknown_ssrc: Counter,
    pub rtp_malformed: Counter,
    /// RTP whose payload type is not the negotiated one of its track. Dropped.
    pub rtp_payload_type_mismatch: Counter,
    /// Reordered RTP from before a subscriber slot's (re)binding; sending it would repeat
    /// a sequence number the subscriber already got. Dropped for that slot.
    pub rtp_dropped_before_bind: Counter,
    /// RTCP feedback naming an SSRC the sender has no track or slot for. Ignored.
    pub rtcp_unknown_ssrc: Counter,
    pub rtcp_received: Counter,
    pub rtcp_malformed: Counter,
    pub nacks_received: Counter,
    pub retransmissions: Counter,
    pub nack_misses: Counter,
    /// The same by [`crate::sfu::NackMiss`] reason.
    pub nack_miss_reasons: [Counter; crate::sfu::NackMiss::ALL.len()],
    pub plis_received: Counter,
    pub firs_received: Counter,
    pub plis_sent: Counter,
    pub plis_rate_limited: Counter,
    pub receiver_reports_sent: Counter,
    pub sender_reports_forwarded: Counter,
    pub codec_mismatch: Counter,
    /// RTP/RTCP from a member the room does not know (or RTP from one that is not a
    /// publisher). Dropped.
    pub unknown_member: Counter,
    /// RTP naming a simulcast RID the offer did not announce. Dropped.
    pub rtp_unknown_rid: Counter,
    /// RTP with an unusable header-extension block (truncated, wrong length, repeated
    /// kind). Dropped.
    pub rtp_bad_extension: Counter,
    /// RTP whose extension block is not RFC 8285; forwarded without extensions.
    pub rtp_foreign_extension: Counter,
    /// Transport-wide congestion-control feedback sent to publishers / received from
    /// subscribers.
    pub twcc_feedback_sent: Counter,
    pub twcc_feedback_received: Counter,
    /// Simulcast layer switches, and the keyframe requests that target changes caused.
    pub layer_switches: Counter,
    pub switch_keyframe_requests: Counter,
    /// Padding packets sent to probe subscribers' links.
    pub probe_packets: Counter,
    /// NACKs roomgate sent publishers for packets it missed, and missed packets it
    /// stopped asking for.
    pub nacks_sent: Counter,
    pub nack_gave_up: Counter,
    /// Missed publisher packets that came late on their media stream (reordered), and
    /// how many of them had been NACKed already.
    pub rtp_reordered: Counter,
    pub nacks_spurious: Counter,
    /// Publishers' RTX packets: repairs taken, duplicates and padding-only probes dropped.
    pub rtx_repairs_received: Counter,
    pub rtx_duplicates_received: Counter,
    pub rtx_padding_received: Counter,
    /// Retransmissions to subscribers on their RTX stream.
    pub rtx_sent: Counter,
    /// First NACK to repaired packet, ms (see [`crate::sfu::NACK_RTT_BUCKETS_MS`]).
    pub nack_rtt: RttHistogram,
    /// Subscribers' bandwidth estimates, sampled each layer interval (see
    /// [`crate::sfu::ESTIMATE_BUCKETS_BPS`]).
    pub estimates: EstimateHistogram,
    /// Sessions released by a timeout: never connected, handshake too slow, or consent lost.
    pub sessions_timed_out: Counter,
    /// WHIP/WHEP sessions currently alive on this thread, by role.
    pub publishers: Counter,
    pub subscribers: Counter,
}

/// Upper bounds (ms) of the DTLS handshake duration buckets; the last is +Inf.
pub const HANDSHAKE_BUCKETS_MS: [u64; 8] = [25, 50, 100, 250, 500, 1_000, 2_500, 10_000];

#[derive(Default)]
pub struct HandshakeHistogram {
    pub buckets: [Counter; HANDSHAKE_BUCKETS_MS.len() + 1],
    pub sum_ms: Counter,
    pub count: Counter,
}

impl HandshakeHistogram {
    pub fn observe(&self, ms: u64) {
        let i = HANDSHAKE_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(HANDSHAKE_BUCKETS_MS.len());
        self.buckets[i].inc();
        self.sum_ms.add(ms);
        self.count.inc();
    }
}

/// Subscribers' estimated bitrates, folded from the rooms' samples.
#[derive(Default)]
pub struct EstimateHistogram {
    pub buckets: [Counter; crate::sfu::ESTIMATE_BUCKETS_BPS.len() + 1],
    pub sum_bps: Counter,
    pub count: Counter,
}

impl EstimateHistogram {
    pub fn add(&self, samples: &crate::sfu::EstimateSamples) {
        for (b, n) in self.buckets.iter().zip(samples.buckets) {
            b.add(n);
        }
        self.sum_bps.add(samples.sum_bps);
        self.count.add(samples.count);
    }
}

/// NACK round trips, folded from the rooms' samples.
#[derive(Default)]
pub struct RttHistogram {
    pub buckets: [Counter; crate::sfu::NACK_RTT_BUCKETS_MS.len() + 1],
    pub sum_ms: Counter,
    pub count: Counter,
}

impl RttHistogram {
    pub fn add(&self, samples: &crate::sfu::RttSamples) {
        for (b, n) in self.buckets.iter().zip(samples.buckets) {
            b.add(n);
        }
        self.sum_ms.add(samples.sum_ms);
        self.count.add(samples.count);
    }
}

/// Upper bounds (ns) of the per-datagram processing-time buckets; the last is +Inf.
pub const PROCESSING_BUCKETS_NS: [u64; 8] =
    [250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

/// A fixed-bucket histogram with a single writer: no allocation, no lock.
#[derive(Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; index 8 is +Inf.
    pub buckets: [Counter; PROCESSING_BUCKETS_NS.len() + 1],
    pub sum_ns: Counter,
    pub count: Counter,
}

impl Histogram {
    /// Record `n` observations of `each_ns` (a batch of datagrams averaged: one clock
    /// read per recvmmsg batch instead of two per datagram).
    #[inline]
    pub fn observe_n(&self, each_ns: u64, n: u64) {
        let i = PROCESSING_BUCKETS_NS
            .iter()
            .position(|b| each_ns <= *b)
            .unwrap_or(PROCESSING_BUCKETS_NS.len());
        self.buckets[i].add(n);
        self.sum_ns.add(each_ns * n);
        self.count.add(n);
    }
}

impl ThreadStats {
    #[inline]
    pub fn stun(&self, outcome: StunOutcome) -> &Counter {
        &self.stun[outcome as usize]
    }
}
