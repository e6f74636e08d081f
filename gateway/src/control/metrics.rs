//! `/metrics` in the Prometheus text format.
//!
//! Built at scrape time from the logic threads' own counters (relaxed atomic loads) and
//! the eBPF map, so a scrape never takes a lock a logic thread could be waiting on.
//! Labels are bounded: thread index, mode, branch, outcome, state, kind, reason — never
//! room, participant, SSRC or address.
use std::fmt::Write as _;

use prometheus::{
    core::Collector, CounterVec, Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::ApiState;
use crate::{
    ice::StunOutcome,
    logic::STATE_NAMES,
    media::UnprotectFailure,
    sfu::{ESTIMATE_BUCKETS_BPS, NACK_RTT_BUCKETS_MS},
    stats::{Counter, MediaStats, HANDSHAKE_BUCKETS_MS, PROCESSING_BUCKETS_NS},
};

/// A per-thread series: name, help, and how to read it from a thread's counters.
type ThreadSeries = (
    &'static str,
    &'static str,
    fn(&crate::stats::ThreadStats) -> u64,
);

/// The same for the media plane's counters ([`MediaStats`]).
type MediaSeries = (&'static str, &'static str, fn(&MediaStats) -> u64);

/// Media-plane counters exposed one series per thread (`{thread}` only).
const MEDIA_COUNTERS: [MediaSeries; 41] = [
    (
        "roomgate_dtls_closed_total",
        "DTLS associations the client closed (close_notify or alert) after connecting.",
        |m| m.dtls_closed.get(),
    ),
    (
        "roomgate_dtls_records_dropped_total",
        "DTLS datagrams dropped before the DTLS layer: over the handshake budget or queue, or implausible after the handshake.",
        |m| m.dtls_records_dropped.get(),
    ),
    (
        "roomgate_srtp_before_keys_total",
        "SRTP/SRTCP packets dropped because the DTLS handshake had not produced keys yet.",
        |m| m.srtp_before_keys.get(),
    ),
    (
        "roomgate_srtp_protect_failures_total",
        "Outgoing RTP/RTCP packets that could not be protected (not sent).",
        |m| m.srtp_protect_failures.get(),
    ),
    (
        "roomgate_rtp_packets_received_total",
        "RTP packets received from publishers (after SRTP).",
        |m| m.rtp_received.get(),
    ),
    (
        "roomgate_rtp_packets_forwarded_total",
        "RTP packets forwarded to subscribers (one per copy sent).",
        |m| m.rtp_forwarded.get(),
    ),
    (
        "roomgate_rtp_unknown_ssrc_total",
        "RTP packets with an SSRC no publisher announced. Dropped.",
        |m| m.rtp_unknown_ssrc.get(),
    ),
    (
        "roomgate_rtp_malformed_total",
        "Decrypted RTP packets that did not parse. Dropped.",
        |m| m.rtp_malformed.get(),
    ),
    (
        "roomgate_rtp_payload_type_mismatch_total",
        "RTP packets whose payload type is not their track's negotiated one; dropped.",
        |m| m.rtp_payload_type_mismatch.get(),
    ),
    (
        "roomgate_rtp_dropped_before_bind_total",
        "Reordered RTP from before a subscriber slot's binding; dropped for that slot.",
        |m| m.rtp_dropped_before_bind.get(),
    ),
    (
        "roomgate_rtcp_unknown_ssrc_total",
        "RTCP feedback naming an SSRC without a track or slot; ignored.",
        |m| m.rtcp_unknown_ssrc.get(),
    ),
    (
        "roomgate_unknown_member_packets_total",
        "RTP/RTCP from a session its room does not know as a member, or RTP from a non-publisher; dropped.",
        |m| m.unknown_member.get(),
    ),
    (
        "roomgate_rtp_unknown_rid_total",
        "RTP naming a simulcast RID the offer did not announce; dropped.",
        |m| m.rtp_unknown_rid.get(),
    ),
    (
        "roomgate_rtp_bad_extension_total",
        "RTP with an unusable header-extension block (truncated, wrong length, repeated kind); dropped.",
        |m| m.rtp_bad_extension.get(),
    ),
    (
        "roomgate_rtp_foreign_extension_total",
        "RTP whose extension block is not RFC 8285; forwarded without its extensions.",
        |m| m.rtp_foreign_extension.get(),
    ),
    (
        "roomgate_twcc_feedback_sent_total",
        "Transport-wide congestion-control feedback packets sent to publishers.",
        |m| m.twcc_feedback_sent.get(),
    ),
    (
        "roomgate_twcc_feedback_received_total",
        "Transport-wide congestion-control feedback packets received from subscribers.",
        |m| m.twcc_feedback_received.get(),
    ),
    (
        "roomgate_layer_switches_total",
        "Simulcast layer switches done for subscribers (at a keyframe of the new layer).",
        |m| m.layer_switches.get(),
    ),
    (
        "roomgate_layer_switch_keyframe_requests_total",
        "Keyframe requests sent to publishers because a subscriber's target layer changed.",
        |m| m.switch_keyframe_requests.get(),
    ),
    (
        "roomgate_probe_packets_total",
        "Padding packets sent to probe subscribers' links for a higher layer.",
        |m| m.probe_packets.get(),
    ),
    (
        "roomgate_dtls_flights_repeated_total",
        "roomgate's last DTLS handshake flight sent again to a client that lost it.",
        |m| m.dtls_flights_repeated.get(),
    ),
    (
        "roomgate_nacks_sent_total",
        "NACKs roomgate sent publishers for packets it missed.",
        |m| m.nacks_sent.get(),
    ),
    (
        "roomgate_nack_gave_up_total",
        "Missed publisher packets roomgate stopped asking for (older than 1 s, or asked three times).",
        |m| m.nack_gave_up.get(),
    ),
    (
        "roomgate_rtp_reordered_total",
        "Missed publisher packets that arrived late on their media stream (reordered on the way); first NACKs then wait as long as the longest of them took, until none came for 10 s.",
        |m| m.rtp_reordered.get(),
    ),
    (
        "roomgate_nacks_spurious_total",
        "Publisher packets roomgate NACKed that then arrived on their media stream by themselves (reordered, not lost).",
        |m| m.nacks_spurious.get(),
    ),
    (
        "roomgate_rtx_repairs_received_total",
        "Publishers' RTX packets that repaired a packet roomgate missed.",
        |m| m.rtx_repairs_received.get(),
    ),
    (
        "roomgate_rtx_duplicates_received_total",
        "Publishers' RTX packets repeating a packet roomgate already had; dropped.",
        |m| m.rtx_duplicates_received.get(),
    ),
    (
        "roomgate_rtx_padding_received_total",
        "Publishers' padding-only RTX packets (their bandwidth probes); dropped.",
        |m| m.rtx_padding_received.get(),
    ),
    (
        "roomgate_rtx_sent_total",
        "Retransmissions to subscribers sent on their RTX stream (RFC 4588).",
        |m| m.rtx_sent.get(),
    ),
    (
        "roomgate_rtcp_packets_received_total",
        "RTCP packets received (after SRTCP).",
        |m| m.rtcp_received.get(),
    ),
    (
        "roomgate_rtcp_malformed_total",
        "Decrypted RTCP packets that did not parse. Dropped.",
        |m| m.rtcp_malformed.get(),
    ),
    (
        "roomgate_nacks_received_total",
        "NACK feedback packets received from subscribers (each may list many sequence numbers).",
        |m| m.nacks_received.get(),
    ),
    (
        "roomgate_retransmissions_total",
        "Packets resent to subscribers in answer to NACKs.",
        |m| m.retransmissions.get(),
    ),
    (
        "roomgate_plis_received_total",
        "Picture Loss Indications received from subscribers.",
        |m| m.plis_received.get(),
    ),
    (
        "roomgate_firs_received_total",
        "Full Intra Requests received from subscribers.",
        |m| m.firs_received.get(),
    ),
    (
        "roomgate_plis_sent_total",
        "Keyframe requests sent to publishers (PLI, or FIR to a FIR-only publisher).",
        |m| m.plis_sent.get(),
    ),
    (
        "roomgate_plis_rate_limited_total",
        "Keyframe requests not sent to a publisher because of the PLI rate limit.",
        |m| m.plis_rate_limited.get(),
    ),
    (
        "roomgate_receiver_reports_sent_total",
        "RTCP receiver reports sent to publishers.",
        |m| m.receiver_reports_sent.get(),
    ),
    (
        "roomgate_sender_reports_forwarded_total",
        "RTCP sender reports forwarded to subscribers.",
        |m| m.sender_reports_forwarded.get(),
    ),
    (
        "roomgate_codec_mismatch_total",
        "Subscriber tracks left unbound because no publisher track of that kind had a matching codec.",
        |m| m.codec_mismatch.get(),
    ),
    (
        "roomgate_media_sessions_timed_out_total",
        "Media sessions released by a timeout: never connected, handshake too slow, or consent lost.",
        |m| m.sessions_timed_out.get(),
    ),
];

/// Media-plane gauges, one series per thread.
const MEDIA_GAUGES: [MediaSeries; 2] = [
    (
        "roomgate_publishers",
        "WHIP (publishing) sessions alive on the logic thread.",
        |m| m.publishers.get(),
    ),
    (
        "roomgate_subscribers",
        "WHEP (subscribing) sessions alive on the logic thread.",
        |m| m.subscribers.get(),
    ),
];

fn counter(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

pub fn render(state: &ApiState) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let mut collectors: Vec<Box<dyn Collector>> = Vec::new();

    let build = gauge(
        "roomgate_build_info",
        "Build information; always 1.",
        &["version", "ebpf_embedded"],
    )?;
    build
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            if crate::steering::ebpf::embedded() {
                "true"
            } else {
                "false"
            },
        ])
        .set(1);
    collectors.push(Box::new(build));

    let mode = gauge(
        "roomgate_steering_mode",
        "Active packet steering mode (1 for the active one).",
        &["mode"],
    )?;
    for m in ["ebpf", "connected"] {
        mode.with_label_values(&[m])
            .set(i64::from(state.steering.mode.as_str() == m));
    }
    collectors.push(Box::new(mode));
    let fallback = gauge(
        "roomgate_steering_fallback",
        "1 when auto mode fell back to connected steering because eBPF was unavailable.",
        &[],
    )?;
    fallback
        .with_label_values(&[] as &[&str])
        .set(i64::from(state.steering.fallback_reason.is_some()));
    collectors.push(Box::new(fallback));

    let per_thread: [ThreadSeries; 17] = [
        (
            "roomgate_tx_gso_fallbacks_total",
            "GSO sends the kernel refused (path MTU, no offload); their datagrams went one by one.",
            |s| s.tx_gso_fallbacks.get(),
        ),
        (
            "roomgate_tx_gso_sends_total",
            "Sends that carried several datagrams to one client with UDP GSO.",
            |s| s.tx_gso_sends.get(),
        ),
        (
            "roomgate_tx_gso_datagrams_total",
            "Datagrams sent inside UDP GSO sends (also in roomgate_tx_datagrams_total).",
            |s| s.tx_gso_datagrams.get(),
        ),
        (
            "roomgate_datagram_panics_total",
            "Datagrams whose handling panicked (a bug): caught, counted and dropped.",
            |s| s.datagram_panics.get(),
        ),
        (
            "roomgate_rx_datagrams_total",
            "Datagrams received by the logic thread.",
            |s| s.rx_datagrams.get(),
        ),
        (
            "roomgate_rx_bytes_total",
            "Bytes received by the logic thread.",
            |s| s.rx_bytes.get(),
        ),
        (
            "roomgate_tx_datagrams_total",
            "Datagrams sent by the logic thread.",
            |s| s.tx_datagrams.get(),
        ),
        (
            "roomgate_tx_bytes_total",
            "Bytes sent by the logic thread.",
            |s| s.tx_bytes.get(),
        ),
        (
            "roomgate_handoffs_total",
            "Datagrams passed to the owning thread (connected mode).",
            |s| s.handoffs.get(),
        ),
        (
            "roomgate_misdelivered_total",
            "Datagrams that reached a thread another thread owns.",
            |s| s.misdelivered.get(),
        ),
        (
            "roomgate_no_session_total",
            "Non-STUN datagrams from an address without a session.",
            |s| s.no_session.get(),
        ),
        (
            "roomgate_oversized_datagrams_total",
            "Datagrams that filled the 2 KiB receive slot (possibly truncated by the kernel); dropped.",
            |s| s.oversized.get(),
        ),
        (
            "roomgate_pins_total",
            "Client addresses pinned to a thread after a valid check.",
            |s| s.pins.get(),
        ),
        (
            "roomgate_pin_conflicts_total",
            "Valid checks refused: address pinned to another session.",
            |s| s.pin_conflicts.get(),
        ),
        (
            "roomgate_consent_expired_total",
            "Sessions whose ICE consent expired.",
            |s| s.consent_expired.get(),
        ),
        (
            "roomgate_ice_trickles_total",
            "WHIP/WHEP PATCHes with trickled candidates (answered 204; ICE-lite needs none).",
            |s| s.ice_trickles.get(),
        ),
        (
            "roomgate_ice_restarts_total",
            "ICE restarts through WHIP/WHEP PATCH (new server credentials, same DTLS and SRTP).",
            |s| s.ice_restarts.get(),
        ),
    ];
    for (name, help, get) in per_thread {
        let c = counter(name, help, &["thread"])?;
        for (i, h) in state.threads.iter().enumerate() {
            c.with_label_values(&[&i.to_string()]).inc_by(get(&h.stats));
        }
        collectors.push(Box::new(c));
    }
    let gauges: [ThreadSeries; 3] = [
        ("roomgate_rooms", "Rooms owned by the logic thread.", |s| {
            s.rooms.get()
        }),
        ("roomgate_sessions", "Sessions on the logic thread.", |s| {
            s.sessions.get()
        }),
        (
            "roomgate_connected_sockets",
            "Per-client connected sockets (connected mode).",
            |s| s.connected_sockets.get(),
        ),
    ];
    for (name, help, get) in gauges {
        let g = gauge(name, help, &["thread"])?;
        for (i, h) in state.threads.iter().enumerate() {
            g.with_label_values(&[&i.to_string()])
                .set(get(&h.stats) as i64);
        }
        collectors.push(Box::new(g));
    }
    let busy = CounterVec::new(
        Opts::new(
            "roomgate_thread_busy_seconds_total",
            "Time the logic thread spent handling events (not waiting in poll).",
        ),
        &["thread"],
    )?;
    let by_state = gauge(
        "roomgate_sessions_by_state",
        "Sessions per ICE state (refreshed every 500 ms).",
        &["thread", "state"],
    )?;
    let mut pinned = 0u64;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        busy.with_label_values(&[&t])
            .inc_by(h.stats.busy_ns.get() as f64 / 1e9);
        for (name, c) in STATE_NAMES.iter().zip(&h.stats.sessions_by_state) {
            by_state
                .with_label_values(&[t.as_str(), name])
                .set(c.get() as i64);
        }
        pinned += h.stats.pins.get().saturating_sub(h.stats.unpins.get());
    }
    collectors.push(Box::new(busy));
    collectors.push(Box::new(by_state));
    let drops = counter(
        "roomgate_socket_receive_drops_total",
        "Datagrams the kernel dropped before the logic thread read them (receive buffer full), by socket kind (group, connected); from SO_MEMINFO, refreshed every 500 ms.",
        &["thread", "socket"],
    )?;
    let send_errors = counter(
        "roomgate_send_errors_total",
        "Datagrams the kernel refused to send, by errno; each is lost.",
        &["thread", "errno"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        for (kind, c) in crate::stats::SOCKET_KINDS
            .iter()
            .zip(&h.stats.socket_receive_drops)
        {
            drops.with_label_values(&[t.as_str(), kind]).inc_by(c.get());
        }
        for e in crate::net::SendErrno::ALL {
            send_errors
                .with_label_values(&[t.as_str(), e.name()])
                .inc_by(h.stats.send_errors[e as usize].get());
        }
    }
    collectors.push(Box::new(drops));
    collectors.push(Box::new(send_errors));
    let flows = gauge(
        "roomgate_flows_pinned",
        "Client addresses currently pinned (eBPF flow-map entries or connected sockets).",
        &[],
    )?;
    flows.with_label_values(&[] as &[&str]).set(pinned as i64);
    collectors.push(Box::new(flows));
    if let Some(capacity) = state.steering.flows_capacity() {
        let cap = gauge(
            "roomgate_flows_capacity",
            "Capacity of the eBPF flow map.",
            &[],
        )?;
        cap.with_label_values(&[] as &[&str])
            .set(i64::from(capacity));
        collectors.push(Box::new(cap));
    }
    if let Some(insns) = state.steering.verified_insns() {
        let g = gauge(
            "roomgate_ebpf_verified_insns",
            "Instructions the kernel's verifier processed to accept the steering program (its budget is 1M).",
            &[],
        )?;
        g.with_label_values(&[] as &[&str]).set(i64::from(insns));
        collectors.push(Box::new(g));
    }
    if state.steering.flows_capacity().is_some() {
        let refused = counter(
            "roomgate_ufrag_filter_failures_total",
            "Server ufrags the kernel's live-ufrag map refused; after the first, the kernel stops dropping Binding Requests for unknown sessions (they reach the threads again).",
            &[],
        )?;
        refused
            .with_label_values(&[] as &[&str])
            .inc_by(crate::steering::live::failures());
        collectors.push(Box::new(refused));
    }

    let stun = counter(
        "roomgate_stun_requests_total",
        "STUN messages handled, by outcome.",
        &["thread", "outcome"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        for o in StunOutcome::ALL {
            stun.with_label_values(&[&i.to_string(), o.name()])
                .inc_by(h.stats.stun(o).get());
        }
    }
    collectors.push(Box::new(stun));
    let error_replies = counter(
        "roomgate_stun_error_replies_total",
        "Error responses (400/401) sent to unauthenticated Binding Requests (within the rate limits).",
        &["thread"],
    )?;
    let limited = counter(
        "roomgate_stun_replies_limited_total",
        "Error responses (400/401) to unauthenticated Binding Requests withheld by a rate limit: the claimed session's budget (reason=session) or the logic thread's (reason=global).",
        &["thread", "reason"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        error_replies
            .with_label_values(&[t.as_str()])
            .inc_by(h.stats.stun_error_replies.get());
        for (reason, c) in crate::stats::REPLY_LIMIT_REASONS
            .iter()
            .zip(&h.stats.stun_replies_limited)
        {
            limited
                .with_label_values(&[t.as_str(), reason])
                .inc_by(c.get());
        }
    }
    collectors.push(Box::new(error_replies));
    collectors.push(Box::new(limited));
    let created = counter(
        "roomgate_sessions_created_total",
        "Sessions created (REST participants and WHIP/WHEP sessions). Each is live (roomgate_sessions) or counted once in roomgate_sessions_ended_total.",
        &["thread"],
    )?;
    let ended = counter(
        "roomgate_sessions_ended_total",
        "Sessions ended, by reason: deleted (DELETE), consent_expired (WHIP/WHEP, 30 s without a valid check), connect_timeout (never connected, or the DTLS handshake stalled), dtls_closed (the client closed DTLS), dtls_failed (handshake or SRTP setup failed), room_closed (the cluster found another owner), abandoned (the caller was gone before the answer), shutdown.",
        &["thread", "reason"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        created
            .with_label_values(&[t.as_str()])
            .inc_by(h.stats.sessions_created.get());
        for (why, c) in crate::stats::SessionEnd::ALL
            .iter()
            .zip(&h.stats.sessions_ended)
        {
            ended
                .with_label_values(&[t.as_str(), why.label()])
                .inc_by(c.get());
        }
    }
    collectors.push(Box::new(created));
    collectors.push(Box::new(ended));
    let handoffs_limited = counter(
        "roomgate_handoffs_limited_total",
        "Binding Requests for another thread's room not handed to it (connected mode), withheld by a handoff budget: the claimed server ufrag's (reason=session) or the logic thread's (reason=global).",
        &["thread", "reason"],
    )?;
    let handoff_failures = counter(
        "roomgate_handoff_failures_total",
        "Handoffs shed because the owning thread's queue was full or it had stopped (connected mode).",
        &["thread"],
    )?;
    for (i, h) in state.threads.iter().enumerate() {
        let t = i.to_string();
        for (reason, c) in crate::stats::REPLY_LIMIT_REASONS
            .iter()
            .zip(&h.stats.handoffs_limited)
        {
            handoffs_limited
                .with_label_values(&[t.as_str(), reason])
                .inc_by(c.get());
        }
        handoff_failures
            .with_label_values(&[t.as_str()])
            .inc_by(h.stats.handoff_failures.get());
    }
    collectors.push(Box::new(handoffs_limited));
    collectors.push(Box::new(handoff_failures));

    let media: Vec<&MediaStats> = state.threads.iter().map(|h| &h.stats.media).collect();
    media_collectors(&media, &mut collectors)?;

    if let Some(counters) = state.steering.ebpf_counters() {
        let ebpf = counter(
            "roomgate_ebpf_decisions_total",
            "Decisions of the sk_reuseport program, summed over CPUs (branch=packets counts every run).",
            &["branch"],
        )?;
        for (branch, v) in counters {
            ebpf.with_label_values(&[branch]).inc_by(v);
        }
        collectors.push(Box::new(ebpf));
    }

    if let Some(cluster) = &state.cluster {
        collectors.extend(cluster.metrics.collectors());
    }

    for c in collectors {
        registry.register(c)?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    processing_histogram(state, &mut text);
    handshake_histogram(&media, &mut text);
    estimate_histogram(&media, &mut text);
    nack_rtt_histogram(&media, &mut text);
    Ok(text)
}

/// The media plane's labelled counters and gauges, one series per thread (the index in
/// `threads` is the `thread` label).
fn media_collectors(
    threads: &[&MediaStats],
    collectors: &mut Vec<Box<dyn Collector>>,
) -> Result<(), prometheus::Error> {
    let handshakes = counter(
        "roomgate_dtls_handshakes_total",
        "DTLS handshakes by outcome: started (ClientHello), completed (SRTP keys), failed.",
        &["thread", "outcome"],
    )?;
    let unprotect = counter(
        "roomgate_srtp_unprotect_failures_total",
        "Packets from clients refused by SRTP (kind=srtp) or SRTCP (kind=srtcp), by reason.",
        &["thread", "kind", "reason"],
    )?;
    for (i, m) in threads.iter().enumerate() {
        let t = i.to_string();
        for (outcome, c) in [
            ("started", &m.dtls_started),
            ("completed", &m.dtls_completed),
            ("failed", &m.dtls_failed),
        ] {
            handshakes
                .with_label_values(&[t.as_str(), outcome])
                .inc_by(c.get());
        }
        for (kind, by_reason) in [
            ("srtp", &m.srtp_unprotect_failures),
            ("srtcp", &m.srtcp_unprotect_failures),
        ] {
            for f in UnprotectFailure::ALL {
                unprotect
                    .with_label_values(&[t.as_str(), kind, f.name()])
                    .inc_by(by_reason[f as usize].get());
            }
        }
    }
    let misses = counter(
        "roomgate_nack_misses_total",
        "NACKed sequence numbers not resent, by reason: not_buffered (never received or pushed out), too_old (past the buffer's time window), rate_limited (over the subscriber's budget), not_forwarded (not sent to this subscriber under its current mapping).",
        &["thread", "reason"],
    )?;
    for (i, m) in threads.iter().enumerate() {
        let t = i.to_string();
        for r in crate::sfu::NackMiss::ALL {
            misses
                .with_label_values(&[t.as_str(), r.name()])
                .inc_by(m.nack_miss_reasons[r as usize].get());
        }
    }
    collectors.push(Box::new(handshakes));
    collectors.push(Box::new(unprotect));
    collectors.push(Box::new(misses));
    for (name, help, get) in MEDIA_COUNTERS {
        let c = counter(name, help, &["thread"])?;
        for (i, m) in threads.iter().enumerate() {
            c.with_label_values(&[&i.to_string()]).inc_by(get(m));
        }
        collectors.push(Box::new(c));
    }
    for (name, help, get) in MEDIA_GAUGES {
        let g = gauge(name, help, &["thread"])?;
        for (i, m) in threads.iter().enumerate() {
            g.with_label_values(&[&i.to_string()]).set(get(m) as i64);
        }
        collectors.push(Box::new(g));
    }
    Ok(())
}

/// The per-datagram processing-time histogram.
fn processing_histogram(state: &ApiState, out: &mut String) {
    let bounds = PROCESSING_BUCKETS_NS.map(|ns| ns as f64 / 1e9);
    fixed_histogram(
        out,
        "roomgate_datagram_processing_seconds",
        "Time a logic thread spends on one datagram (averaged per recvmmsg batch).",
        &bounds,
        state.threads.iter().map(|h| {
            let hist = &h.stats.processing;
            (&hist.buckets[..], hist.sum_ns.get() as f64 / 1e9)
        }),
    );
}

/// The DTLS handshake duration histogram (ClientHello to SRTP keys).
fn handshake_histogram(threads: &[&MediaStats], out: &mut String) {
    let bounds = HANDSHAKE_BUCKETS_MS.map(|ms| ms as f64 / 1e3);
    fixed_histogram(
        out,
        "roomgate_dtls_handshake_duration_seconds",
        "Time from the client's first ClientHello to derived SRTP keys.",
        &bounds,
        threads.iter().map(|m| {
            let hist = &m.dtls_handshake;
            (&hist.buckets[..], hist.sum_ms.get() as f64 / 1e3)
        }),
    );
}

/// Subscribers' estimated bandwidth, sampled every layer interval.
fn estimate_histogram(threads: &[&MediaStats], out: &mut String) {
    let bounds = ESTIMATE_BUCKETS_BPS.map(|b| b as f64);
    fixed_histogram(
        out,
        "roomgate_estimated_bitrate_bps",
        "Subscribers' congestion-control bandwidth estimates, sampled every layer interval.",
        &bounds,
        threads.iter().map(|m| {
            let hist = &m.estimates;
            (&hist.buckets[..], hist.sum_bps.get() as f64)
        }),
    );
}

/// Time from roomgate's first NACK to a publisher until the repaired packet arrived.
fn nack_rtt_histogram(threads: &[&MediaStats], out: &mut String) {
    let bounds = NACK_RTT_BUCKETS_MS.map(|ms| ms as f64 / 1e3);
    fixed_histogram(
        out,
        "roomgate_nack_round_trip_seconds",
        "Time from roomgate's first NACK to a publisher until the repaired packet arrived.",
        &bounds,
        threads.iter().map(|m| {
            let hist = &m.nack_rtt;
            (&hist.buckets[..], hist.sum_ms.get() as f64 / 1e3)
        }),
    );
}

/// A histogram written directly in the text format: the threads keep fixed,
/// non-cumulative buckets (the last one +Inf), which the prometheus crate's Histogram
/// cannot be set from. `bounds` are the finite upper bounds in the metric's unit; each
/// item of `threads` is one thread's buckets (`bounds.len() + 1` of them) and sum.
fn fixed_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    threads: impl Iterator<Item = (&'a [Counter], f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (i, (buckets, sum)) in threads.enumerate() {
        debug_assert_eq!(buckets.len(), bounds.len() + 1);
        let mut cumulative = 0;
        for (le, bucket) in bounds.iter().zip(buckets) {
            cumulative += bucket.get();
            let _ = writeln!(
                out,
                "{name}_bucket{{thread=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        // Buckets are read one by one while the thread may be writing: derive +Inf and
        // _count from the same reads so the exposition stays self-consistent.
        let total = cumulative + buckets.get(bounds.len()).map_or(0, Counter::get);
        let _ = writeln!(out, "{name}_bucket{{thread=\"{i}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{thread=\"{i}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{thread=\"{i}\"}} {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ThreadStats;

    /// The media part of the exposition for `threads`, as `/metrics` writes it.
    fn media_text(threads: &[ThreadStats]) -> String {
        let media: Vec<&MediaStats> = threads.iter().map(|s| &s.media).collect();
        let mut collectors = Vec::new();
        media_collectors(&media, &mut collectors).expect("collectors");
        let registry = Registry::new();
        for c in collectors {
            registry.register(c).expect("unique names");
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        let mut text = String::from_utf8(out).expect("utf-8");
        handshake_histogram(&media, &mut text);
        text
    }

    /// The value of the sample of `name` with exactly the labels `labels` (any order).
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        want.sort();
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{')?;
            let mut got: Vec<String> = rest
                .strip_suffix('}')?
                .split(',')
                .map(str::to_owned)
                .collect();
            got.sort();
            (n == name && got == want).then(|| v.parse().ok())?
        })
    }

    #[test]
    fn media_counters_are_exposed_per_thread_with_bounded_labels() {
        let threads = [ThreadStats::default(), ThreadStats::default()];
        let m = &threads[1].media;
        m.dtls_started.add(5);
        m.dtls_completed.add(4);
        m.dtls_failed.inc();
        m.srtp_unprotect_failures[UnprotectFailure::Auth as usize].add(7);
        m.srtcp_unprotect_failures[UnprotectFailure::Replay as usize].add(3);
        m.rtp_forwarded.add(1000);
        m.nack_misses.add(2);
        m.nack_miss_reasons[crate::sfu::NackMiss::TooOld as usize].add(2);
        m.subscribers.set(6);
        let text = media_text(&threads);

        let hs = "roomgate_dtls_handshakes_total";
        assert_eq!(
            value(&text, hs, &[("thread", "1"), ("outcome", "started")]),
            Some(5.0)
        );
        assert_eq!(
            value(&text, hs, &[("thread", "1"), ("outcome", "completed")]),
            Some(4.0)
        );
        assert_eq!(
            value(&text, hs, &[("thread", "1"), ("outcome", "failed")]),
            Some(1.0)
        );
        assert_eq!(
            value(&text, hs, &[("thread", "0"), ("outcome", "failed")]),
            Some(0.0)
        );
        let uf = "roomgate_srtp_unprotect_failures_total";
        let l = |kind, reason| [("thread", "1"), ("kind", kind), ("reason", reason)];
        assert_eq!(value(&text, uf, &l("srtp", "auth")), Some(7.0));
        assert_eq!(value(&text, uf, &l("srtcp", "replay")), Some(3.0));
        assert_eq!(value(&text, uf, &l("srtcp", "auth")), Some(0.0));
        let series = |name| value(&text, name, &[("thread", "1")]);
        assert_eq!(series("roomgate_rtp_packets_forwarded_total"), Some(1000.0));
        let misses = "roomgate_nack_misses_total";
        let reason = |r| [("thread", "1"), ("reason", r)];
        assert_eq!(value(&text, misses, &reason("too_old")), Some(2.0));
        assert_eq!(value(&text, misses, &reason("not_buffered")), Some(0.0));
        assert_eq!(series("roomgate_subscribers"), Some(6.0));
        assert!(text.contains("# TYPE roomgate_subscribers gauge"));

        // Every table entry is a distinct counter with a thread series per thread; the
        // only label names are thread, outcome, kind, reason and le.
        for (name, _, _) in MEDIA_COUNTERS.iter().chain(&MEDIA_GAUGES) {
            assert!(name.starts_with("roomgate_"));
            for t in ["0", "1"] {
                assert!(value(&text, name, &[("thread", t)]).is_some(), "{name} {t}");
            }
        }
        for (name, _, _) in MEDIA_COUNTERS {
            assert!(name.ends_with("_total"), "{name}");
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let labels = line.split_once('{').and_then(|(_, r)| r.split_once('}'));
            for pair in labels.map(|(l, _)| l).unwrap_or_default().split(',') {
                let key = pair.split('=').next().unwrap_or_default();
                assert!(
                    ["thread", "outcome", "kind", "reason", "le"].contains(&key),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn handshake_histogram_is_cumulative_in_seconds() {
        let threads = [ThreadStats::default(), ThreadStats::default()];
        let h = &threads[0].media.dtls_handshake;
        h.observe(25); // le="0.025" is inclusive
        h.observe(30);
        h.observe(20_000); // beyond the last bound: +Inf only
        let text = media_text(&threads);
        let name = "roomgate_dtls_handshake_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram")));
        let bucket = |t, le| {
            value(
                &text,
                &format!("{name}_bucket"),
                &[("thread", t), ("le", le)],
            )
        };
        assert_eq!(bucket("0", "0.025"), Some(1.0));
        assert_eq!(bucket("0", "0.05"), Some(2.0));
        assert_eq!(bucket("0", "10"), Some(2.0));
        assert_eq!(bucket("0", "+Inf"), Some(3.0));
        assert_eq!(bucket("1", "+Inf"), Some(0.0));
        let count = value(&text, &format!("{name}_count"), &[("thread", "0")]);
        assert_eq!(count, Some(3.0));
        let sum = value(&text, &format!("{name}_sum"), &[("thread", "0")]).expect("sum");
        assert!((sum - 20.055).abs() < 1e-9, "{sum}");
        let les = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{thread=\"1\"")))
            .count();
        assert_eq!(les, HANDSHAKE_BUCKETS_MS.len() + 1);
    }
}
