//! Folding the cores' counters into the thread's exported [`ThreadStats`].
use crate::{
    ice::IceState,
    sfu::ForwardStats,
    stats::{MediaStats, ThreadStats},
};

/// Label values of `ThreadStats::sessions_by_state`.
pub const STATE_NAMES: [&str; 4] = ["new", "connected", "nominated", "expired"];

/// Index into `ThreadStats::sessions_by_state`, in the order of [`STATE_NAMES`].
pub fn state_index(state: IceState) -> usize {
    match state {
        IceState::New => 0,
        IceState::Connected => 1,
        IceState::Nominated => 2,
        IceState::Expired => 3,
    }
}

/// Add a room's counters to the thread's. The pattern names every field and has no
/// `..`, so a counter added to [`ForwardStats`] does not compile until it is exported.
pub fn add_forward_stats(stats: &ThreadStats, d: &ForwardStats) {
    let ForwardStats {
        rtp_in,
        rtp_forwarded,
        rtp_unknown_ssrc,
        rtp_malformed,
        rtcp_in,
        rtcp_malformed,
        nacks_received,
        retransmissions,
        nack_misses,
        nack_miss_reasons,
        plis_received,
        firs_received,
        plis_sent,
        plis_rate_limited,
        rr_sent,
        sr_forwarded,
        codec_mismatch,
        rtp_payload_type_mismatch,
        rtp_dropped_before_bind,
        unknown_member,
        rtcp_unknown_ssrc,
        rtp_unknown_rid,
        rtp_bad_extension,
        rtp_foreign_extension,
        twcc_feedback_sent,
        twcc_feedback_received,
        layer_switches,
        switch_keyframe_requests,
        probe_packets,
        estimates,
        nacks_sent,
        nack_gave_up,
        rtp_reordered,
        nacks_spurious,
        rtx_repairs_received,
        rtx_duplicates_received,
        rtx_padding_received,
        rtx_sent,
        nack_rtt,
    } = *d;
    let MediaStats {
        rtp_received: m_rtp_received,
        rtp_forwarded: m_rtp_forwarded,
        rtp_unknown_ssrc: m_rtp_unknown_ssrc,
        rtp_malformed: m_rtp_malformed,
        rtp_payload_type_mismatch: m_rtp_payload_type_mismatch,
        rtp_dropped_before_bind: m_rtp_dropped_before_bind,
        rtcp_unknown_ssrc: m_rtcp_unknown_ssrc,
        rtcp_received: m_rtcp_received,
        rtcp_malformed: m_rtcp_malformed,
        nacks_received: m_nacks_received,
        retransmissions: m_retransmissions,
        nack_misses: m_nack_misses,
        nack_miss_reasons: m_nack_miss_reasons,
        plis_received: m_plis_received,
        firs_received: m_firs_received,
        plis_sent: m_plis_sent,
        plis_rate_limited: m_plis_rate_limited,
        receiver_reports_sent: m_receiver_reports_sent,
        sender_reports_forwarded: m_sender_reports_forwarded,
        codec_mismatch: m_codec_mismatch,
        unknown_member: m_unknown_member,
        rtp_unknown_rid: m_rtp_unknown_rid,
        rtp_bad_extension: m_rtp_bad_extension,
        rtp_foreign_extension: m_rtp_foreign_extension,
        twcc_feedback_sent: m_twcc_feedback_sent,
        twcc_feedback_received: m_twcc_feedback_received,
        layer_switches: m_layer_switches,
        switch_keyframe_requests: m_switch_keyframe_requests,
        probe_packets: m_probe_packets,
        estimates: m_estimates,
        nacks_sent: m_nacks_sent,
        nack_gave_up: m_nack_gave_up,
        rtp_reordered: m_rtp_reordered,
        nacks_spurious: m_nacks_spurious,
        rtx_repairs_received: m_rtx_repairs_received,
        rtx_duplicates_received: m_rtx_duplicates_received,
        rtx_padding_received: m_rtx_padding_received,
        rtx_sent: m_rtx_sent,
        nack_rtt: m_nack_rtt,
        ..
    } = &stats.media;
    m_rtp_received.add(rtp_in);
    m_rtp_forwarded.add(rtp_forwarded);
    m_rtp_unknown_ssrc.add(rtp_unknown_ssrc);
    m_rtp_malformed.add(rtp_malformed);
    m_rtp_payload_type_mismatch.add(rtp_payload_type_mismatch);
    m_rtp_dropped_before_bind.add(rtp_dropped_before_bind);
    m_rtcp_unknown_ssrc.add(rtcp_unknown_ssrc);
    m_rtcp_received.add(rtcp_in);
    m_rtcp_malformed.add(rtcp_malformed);
    m_nacks_received.add(nacks_received);
    m_retransmissions.add(retransmissions);
    m_nack_misses.add(nack_misses);
    for (counter, n) in m_nack_miss_reasons.iter().zip(nack_miss_reasons) {
        counter.add(n);
    }
    m_plis_received.add(plis_received);
    m_firs_received.add(firs_received);
    m_plis_sent.add(plis_sent);
    m_plis_rate_limited.add(plis_rate_limited);
    m_receiver_reports_sent.add(rr_sent);
    m_sender_reports_forwarded.add(sr_forwarded);
    m_codec_mismatch.add(codec_mismatch);
    m_unknown_member.add(unknown_member);
    m_rtp_unknown_rid.add(rtp_unknown_rid);
    m_rtp_bad_extension.add(rtp_bad_extension);
    m_rtp_foreign_extension.add(rtp_foreign_extension);
    m_twcc_feedback_sent.add(twcc_feedback_sent);
    m_twcc_feedback_received.add(twcc_feedback_received);
    m_layer_switches.add(layer_switches);
    m_switch_keyframe_requests.add(switch_keyframe_requests);
    m_probe_packets.add(probe_packets);
    m_estimates.add(&estimates);
    m_nacks_sent.add(nacks_sent);
    m_nack_gave_up.add(nack_gave_up);
    m_rtp_reordered.add(rtp_reordered);
    m_nacks_spurious.add(nacks_spurious);
    m_rtx_repairs_received.add(rtx_repairs_received);
    m_rtx_duplicates_received.add(rtx_duplicates_received);
    m_rtx_padding_received.add(rtx_padding_received);
    m_rtx_sent.add(rtx_sent);
    m_nack_rtt.add(&nack_rtt);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forward_counter_reaches_the_thread_stats() {
        let stats = ThreadStats::default();
        let d = ForwardStats {
            rtp_in: 1,
            rtp_forwarded: 2,
            rtp_unknown_ssrc: 3,
            rtp_malformed: 4,
            rtcp_in: 5,
            rtcp_malformed: 6,
            nacks_received: 7,
            retransmissions: 8,
            nack_misses: 9,
            nack_miss_reasons: [1, 2, 3, 3],
            plis_received: 10,
            firs_received: 11,
            plis_sent: 12,
            plis_rate_limited: 13,
            rr_sent: 14,
            sr_forwarded: 15,
            codec_mismatch: 16,
            rtp_payload_type_mismatch: 17,
            rtp_dropped_before_bind: 18,
            unknown_member: 19,
            rtcp_unknown_ssrc: 20,
            rtp_unknown_rid: 21,
            rtp_bad_extension: 22,
            rtp_foreign_extension: 23,
            twcc_feedback_sent: 24,
            twcc_feedback_received: 25,
            layer_switches: 26,
            switch_keyframe_requests: 27,
            probe_packets: 28,
            estimates: crate::sfu::EstimateSamples {
                buckets: [0, 0, 0, 0, 1, 0, 0, 0, 0],
                sum_bps: 1_500_000,
                count: 1,
            },
            nacks_sent: 29,
            nack_gave_up: 30,
            rtx_repairs_received: 31,
            rtx_duplicates_received: 32,
            rtx_padding_received: 33,
            rtx_sent: 34,
            rtp_reordered: 35,
            nacks_spurious: 36,
            nack_rtt: crate::sfu::RttSamples {
                buckets: [0, 0, 1, 0, 0, 0, 0, 0, 0],
                sum_ms: 40,
                count: 1,
            },
        };
        add_forward_stats(&stats, &d);
        let m = &stats.media;
        let got = [
            m.rtp_received.get(),
            m.rtp_forwarded.get(),
            m.rtp_unknown_ssrc.get(),
            m.rtp_malformed.get(),
            m.rtcp_received.get(),
            m.rtcp_malformed.get(),
            m.nacks_received.get(),
            m.retransmissions.get(),
            m.nack_misses.get(),
            m.plis_received.get(),
            m.firs_received.get(),
            m.plis_sent.get(),
            m.plis_rate_limited.get(),
            m.receiver_reports_sent.get(),
            m.sender_reports_forwarded.get(),
            m.codec_mismatch.get(),
            m.rtp_payload_type_mismatch.get(),
            m.rtp_dropped_before_bind.get(),
            m.unknown_member.get(),
            m.rtcp_unknown_ssrc.get(),
            m.rtp_unknown_rid.get(),
            m.rtp_bad_extension.get(),
            m.rtp_foreign_extension.get(),
            m.twcc_feedback_sent.get(),
            m.twcc_feedback_received.get(),
            m.layer_switches.get(),
            m.switch_keyframe_requests.get(),
            m.probe_packets.get(),
            m.nacks_sent.get(),
            m.nack_gave_up.get(),
            m.rtx_repairs_received.get(),
            m.rtx_duplicates_received.get(),
            m.rtx_padding_received.get(),
            m.rtx_sent.get(),
            m.rtp_reordered.get(),
            m.nacks_spurious.get(),
        ];
        assert_eq!(got, std::array::from_fn(|i| i as u64 + 1));
        assert_eq!(m.estimates.buckets[4].get(), 1);
        assert_eq!(m.estimates.sum_bps.get(), 1_500_000);
        assert_eq!(m.estimates.count.get(), 1);
        assert_eq!(m.nack_rtt.buckets[2].get(), 1);
        let reasons: Vec<u64> = m.nack_miss_reasons.iter().map(|c| c.get()).collect();
        assert_eq!(reasons, [1, 2, 3, 3]);
        assert_eq!((m.nack_rtt.sum_ms.get(), m.nack_rtt.count.get()), (40, 1));
    }
}
