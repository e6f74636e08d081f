//! The room's counters: every input the room drops lands in exactly one of them, and
//! the logic thread folds them into its exported metrics.

use crate::sfu::layers::LayerRequest;

/// Counts since the last `take_stats`. Every dropped input lands in exactly one counter.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardStats {
    /// RTP datagrams handed to `handle_rtp`.
    pub rtp_in: u64,
    /// RTP packets emitted to subscribers (one per subscriber per input packet).
    pub rtp_forwarded: u64,
    /// From a publisher, but matching none of its tracks: dropped.
    pub rtp_unknown_ssrc: u64,
    pub rtp_malformed: u64,
    pub rtcp_in: u64,
    pub rtcp_malformed: u64,
    /// NACK packets from subscribers (each may list many sequence numbers).
    pub nacks_received: u64,
    /// Packets re-sent from a retransmission buffer.
    pub retransmissions: u64,
    /// NACKed sequence numbers not resent, in all.
    pub nack_misses: u64,
    /// The same by [`NackMiss`] reason.
    pub nack_miss_reasons: [u64; NackMiss::ALL.len()],
    pub plis_received: u64,
    pub firs_received: u64,
    /// Keyframe requests sent to publishers (PLI, or FIR to a FIR-only publisher).
    pub plis_sent: u64,
    pub plis_rate_limited: u64,
    pub rr_sent: u64,
    /// SRs emitted to subscribers (one per subscriber per publisher SR).
    pub sr_forwarded: u64,
    /// Bind attempts that failed only because no same-kind track had a matching codec.
    pub codec_mismatch: u64,
    /// Added: RTP on a known SSRC but with a payload type other than the track's
    /// negotiated one (RED/FEC/CN we did not negotiate): dropped rather than mislabelled.
    pub rtp_payload_type_mismatch: u64,
    /// Added: per-subscriber drops of a packet that arrived reordered from before the
    /// point where the slot (re)bound; forwarding it would reuse an already-sent seq.
    pub rtp_dropped_before_bind: u64,
    /// Added: RTP/RTCP from a member that is not in the room (or not a publisher, for RTP).
    pub unknown_member: u64,
    /// Added: PLI/FIR/NACK/SR naming an SSRC the room does not know.
    pub rtcp_unknown_ssrc: u64,
    /// RTP whose RID (`sdes:rtp-stream-id`) names no layer the offer announced: dropped.
    pub rtp_unknown_rid: u64,
    /// RTP with an unusable header-extension block (truncated element, wrong length, a
    /// kind twice): dropped.
    pub rtp_bad_extension: u64,
    /// RTP whose extension block is not RFC 8285 (unknown profile): forwarded without
    /// its extensions.
    pub rtp_foreign_extension: u64,
    /// Transport-wide feedback packets sent to publishers.
    pub twcc_feedback_sent: u64,
    /// Transport-wide feedback packets received from subscribers.
    pub twcc_feedback_received: u64,
    /// Simulcast layer switches done (at a keyframe of the new layer).
    pub layer_switches: u64,
    /// Keyframe requests sent because a subscriber's target layer changed.
    pub switch_keyframe_requests: u64,
    /// Padding packets sent to probe a subscriber's link.
    pub probe_packets: u64,
    /// Subscribers' bandwidth estimates, sampled every layer interval.
    pub estimates: EstimateSamples,
    /// NACK packets roomgate sent to publishers for packets it missed.
    pub nacks_sent: u64,
    /// Missed packets roomgate stopped asking for (too old, asked three times).
    pub nack_gave_up: u64,
    /// Missed publisher packets that arrived late on their media stream (reordered on
    /// the way), and how many of them had already been NACKed.
    pub rtp_reordered: u64,
    pub nacks_spurious: u64,
    /// Publishers' RTX packets that repaired a missed packet / repeated one roomgate
    /// already had / carried only padding (the publisher's own probes). The last two
    /// are dropped.
    pub rtx_repairs_received: u64,
    pub rtx_duplicates_received: u64,
    pub rtx_padding_received: u64,
    /// Retransmissions to subscribers sent on their RTX stream (also in
    /// `retransmissions`).
    pub rtx_sent: u64,
    /// Time from roomgate's first NACK to the repaired packet's arrival.
    pub nack_rtt: RttSamples,
}

/// Why a NACKed packet was not resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackMiss {
    /// Never received, or pushed out of the buffer by its packet cap.
    NotBuffered,
    /// Older than the buffer's time window.
    TooOld,
    /// Over the subscriber's retransmission budget.
    RateLimited,
    /// Not a packet this subscriber was sent under the slot's current mapping (before
    /// its binding or a layer switch, before probe padding moved its seqs, or nothing
    /// bound at all).
    NotForwarded,
}

impl NackMiss {
    pub const ALL: [NackMiss; 4] = [
        NackMiss::NotBuffered,
        NackMiss::TooOld,
        NackMiss::RateLimited,
        NackMiss::NotForwarded,
    ];

    /// The `reason` label value.
    pub fn name(self) -> &'static str {
        match self {
            NackMiss::NotBuffered => "not_buffered",
            NackMiss::TooOld => "too_old",
            NackMiss::RateLimited => "rate_limited",
            NackMiss::NotForwarded => "not_forwarded",
        }
    }
}

impl ForwardStats {
    pub(crate) fn miss(&mut self, reason: NackMiss, n: u64) {
        self.nack_misses += n;
        self.nack_miss_reasons[reason as usize] += n;
    }
}

/// Upper bounds (ms) of the NACK round-trip histogram's buckets; the last is +Inf.
pub const NACK_RTT_BUCKETS_MS: [u64; 8] = [10, 25, 50, 100, 200, 400, 800, 1600];

/// A histogram of NACK round trips, as counts to fold into the thread's exported one.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttSamples {
    pub buckets: [u64; NACK_RTT_BUCKETS_MS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl RttSamples {
    pub(crate) fn observe(&mut self, rtt: std::time::Duration) {
        let ms = rtt.as_millis() as u64;
        let i = NACK_RTT_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(NACK_RTT_BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// Upper bounds (bit/s) of the estimate histogram's buckets; the last is +Inf.
pub const ESTIMATE_BUCKETS_BPS: [u64; 8] = [
    100_000, 250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000,
];

/// A histogram of estimates, as counts to fold into the thread's exported one.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstimateSamples {
    pub buckets: [u64; ESTIMATE_BUCKETS_BPS.len() + 1],
    pub sum_bps: u64,
    pub count: u64,
}

impl EstimateSamples {
    pub(super) fn observe(&mut self, bps: u64) {
        let i = ESTIMATE_BUCKETS_BPS
            .iter()
            .position(|b| bps <= *b)
            .unwrap_or(ESTIMATE_BUCKETS_BPS.len());
        self.buckets[i] += 1;
        self.sum_bps += bps;
        self.count += 1;
    }
}

/// What a subscriber's video slot receives, for the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub mid: String,
    /// `low`/`mid`/`high` among the source's active layers; `None` while nothing flows.
    pub layer: Option<&'static str>,
    pub requested: LayerRequest,
    pub estimate_bps: Option<u64>,
    pub simulcast: bool,
}
