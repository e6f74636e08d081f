//! The room's periodic work: receiver reports, transport-wide feedback to publishers,
//! simulcast layer selection with its keyframe requests and probes, and probe padding.

use std::time::{Duration, Instant};

use super::rewrite::{write_padding, PADDING_PACKET_LEN};
use super::{MemberId, Output, Parts, RoomCore};
use crate::sdp::{ExtensionKind, MediaKind};
use crate::sfu::layers::{
    choose_layer, rank_of, top_layer, LayerInfo, LayerRequest, DOWNGRADE_HOLD, UPGRADE_HEADROOM,
    UPGRADE_HOLD,
};
use crate::sfu::rtcp;
use crate::sfu::track::{Track, MAX_LAYERS};

/// How far above the top layer's upgrade threshold a probe aims.
const PROBE_MARGIN: f64 = 1.2;
/// The room's periodic tick for transport-wide feedback and probe padding, while any
/// member negotiated transport-wide-cc (feedback is due every 50 ms while packets flow).
pub(super) const FAST_TICK: Duration = Duration::from_millis(20);
/// Room for one feedback packet in a pooled buffer.
const FEEDBACK_CAPACITY: usize = 1200;
impl RoomCore {
    /// Arm or disarm the periodic work after membership changed: the layer tick while
    /// simulcast tracks have subscribers or a subscriber runs congestion control, the
    /// fast tick while any member uses transport-wide feedback.
    pub(super) fn refresh_timers(&mut self, now: Instant) {
        let simulcast = self
            .publishers
            .values()
            .any(|p| p.tracks.iter().any(Track::is_simulcast));
        let cc = self.subscribers.values().any(|s| s.cc.is_some());
        let layers = cc || (simulcast && !self.subscribers.is_empty());
        self.next_layers = match (layers, self.next_layers) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now + self.config.layer_interval),
        };
        let fast = cc || self.fast_tick_needed();
        self.next_fast = match (fast, self.next_fast) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now + FAST_TICK),
        };
    }

    /// Send due receiver reports and transport-wide feedback, re-choose simulcast
    /// layers, and send probe padding.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
        }
        if self.next_rr.is_some_and(|due| now >= due) {
            self.next_rr = Some(now + self.config.rr_interval);
            self.send_receiver_reports(now);
        }
        if self.next_fast.is_some_and(|due| now >= due) {
            self.send_transport_feedback(now);
            self.send_probe_padding(now);
            self.send_publisher_nacks(now);
            let needed =
                self.subscribers.values().any(|s| s.cc.is_some()) || self.fast_tick_needed();
            self.next_fast = None;
            if needed {
                self.arm_fast(now);
            }
        }
        if self.next_layers.is_some_and(|due| now >= due) {
            self.next_layers = Some(now + self.config.layer_interval);
            for i in 0..self.subscriber_order.len() {
                let sid = self.subscriber_order[i];
                self.evaluate_subscriber(sid, now, true);
            }
        }
    }

    fn send_receiver_reports(&mut self, now: Instant) {
        for &pid in &self.publisher_order {
            let Some(publisher) = self.publishers.get_mut(&pid) else {
                continue;
            };
            if !publisher.ready {
                continue;
            }
            self.rr_blocks.clear();
            self.rr_blocks.extend(
                publisher
                    .tracks
                    .iter_mut()
                    .flat_map(|t| t.layers.iter_mut())
                    .filter(|l| l.recv.has_new())
                    .filter_map(|l| {
                        let ssrc = l.ssrc?;
                        Some(l.recv.report(ssrc, l.last_sr, now))
                    }),
            );
            if self.rr_blocks.is_empty() {
                continue;
            }
            let mut packet = self.pool.take();
            rtcp::write_rr_into(&mut packet, self.config.sender_ssrc, &self.rr_blocks);
            self.out.push_back(Output::Rtcp { to: pid, packet });
            self.stats.rr_sent += 1;
        }
    }

    /// Publishers get transport-wide feedback, or roomgate still waits for packets it
    /// asked a publisher to repeat.
    fn fast_tick_needed(&self) -> bool {
        self.publishers.values().any(|p| {
            p.twcc.is_some()
                || p.tracks
                    .iter()
                    .any(|t| t.layers.iter().any(|l| l.nacks.has_missing()))
        })
    }

    /// Make sure the fast tick comes within [`FAST_TICK`], and no later than the first
    /// NACK that is waiting out its reorder window.
    pub(super) fn arm_fast(&mut self, now: Instant) {
        let first_nack = self
            .publishers
            .values()
            .flat_map(|p| p.tracks.iter().flat_map(|t| t.layers.iter()))
            .filter_map(|l| l.nacks.next_first_request())
            .min();
        let next = first_nack.map_or(now + FAST_TICK, |t| t.min(now + FAST_TICK));
        self.next_fast = Some(self.next_fast.map_or(next, |t| t.min(next)));
    }

    /// NACKs to publishers for what roomgate missed of their layers: one RTCP packet per
    /// layer with due requests, sent at a gap and repeated on the fast tick.
    pub(super) fn send_publisher_nacks(&mut self, now: Instant) {
        for &pid in &self.publisher_order {
            let Some(publisher) = self.publishers.get_mut(&pid) else {
                continue;
            };
            if !publisher.ready {
                continue;
            }
            for layer in publisher
                .tracks
                .iter_mut()
                .flat_map(|t| t.layers.iter_mut())
            {
                layer.nacks.poll_nack(now, &mut self.nack_scratch);
                self.stats.nack_gave_up += layer.nacks.take_gave_up();
                let Some(ssrc) = layer.ssrc else { continue };
                let mut packet = self.pool.take();
                if rtcp::write_nack_into(
                    &mut packet,
                    self.config.sender_ssrc,
                    ssrc,
                    &self.nack_scratch,
                ) {
                    self.out.push_back(Output::Rtcp { to: pid, packet });
                    self.stats.nacks_sent += 1;
                } else {
                    self.pool.give(packet);
                }
            }
        }
    }

    fn send_transport_feedback(&mut self, now: Instant) {
        for &pid in &self.publisher_order {
            let Some(twcc) = self.publishers.get_mut(&pid).and_then(|p| p.twcc.as_mut()) else {
                continue;
            };
            // Bounded: a recorder splits a backlog into several packets, each due now.
            for _ in 0..8 {
                let mut packet = self.pool.take();
                packet.reserve(FEEDBACK_CAPACITY);
                if !twcc.poll_feedback(now, self.config.sender_ssrc, &mut packet) {
                    self.pool.give(packet);
                    break;
                }
                self.out.push_back(Output::Rtcp { to: pid, packet });
                self.stats.twcc_feedback_sent += 1;
            }
        }
    }

    /// Padding-only packets on each probing subscriber's first flowing video slot,
    /// between frames, in the slot's own sequence space.
    fn send_probe_padding(&mut self, now: Instant) {
        for &sid in &self.subscriber_order {
            let Some(sub) = self.subscribers.get_mut(&sid) else {
                continue;
            };
            let Some(cc) = sub.cc.as_mut() else { continue };
            let due = cc.padding_due(now);
            if due == 0 || !sub.ready {
                continue;
            }
            // With RTX the padding rides the RTX stream, in its own sequence space, as
            // browsers expect; without, it takes seqs of the media stream between frames.
            let Some(slot) = sub.slots.iter_mut().find(|s| {
                s.kind == MediaKind::Video
                    && s.last_out.is_some()
                    && (s.rtx.is_some() || s.frame_done)
            }) else {
                continue;
            };
            let Some(twcc_id) = sub.extensions.id(ExtensionKind::TransportWideCc) else {
                continue;
            };
            for _ in 0..due {
                let Some(last) = slot.last_out else { break };
                let transport_seq = cc.stamp_probe(PADDING_PACKET_LEN, now);
                let mut packet = self.pool.take();
                let (pt, ssrc, seq) = match slot.rtx {
                    Some((pt, ssrc)) => {
                        let seq = slot.rtx_seq;
                        slot.rtx_seq = seq.wrapping_add(1);
                        (pt, ssrc, seq)
                    }
                    None => {
                        let seq = last.seq.wrapping_add(1);
                        slot.padded(seq, now);
                        (slot.codec.payload_type, slot.out_ssrc, seq)
                    }
                };
                write_padding(&mut packet, pt, seq, last.ts, ssrc, twcc_id, transport_seq);
                self.out.push_back(Output::Rtp { to: sid, packet });
                self.stats.probe_packets += 1;
            }
        }
    }

    /// Re-choose the layer of each of a subscriber's simulcast slots, ask the new
    /// target for a keyframe, and start a probe when a higher layer might fit.
    pub(super) fn evaluate_subscriber(&mut self, sid: MemberId, now: Instant, sample: bool) {
        let Parts {
            mut sink,
            publishers,
            subscribers,
            ..
        } = self.parts();
        let Some(sub) = subscribers.get_mut(&sid) else {
            return;
        };
        let estimate = sub.cc.as_ref().map(|c| c.estimate_bps());
        if let (true, Some(e)) = (sample, estimate) {
            sink.stats.estimates.observe(e);
        }
        for slot in &mut sub.slots {
            let Some(b) = slot.binding else { continue };
            let Some(p) = publishers.get_mut(&b.track.publisher) else {
                continue;
            };
            let ready = p.ready;
            let Some(track) = p.tracks.get_mut(b.track.index) else {
                continue;
            };
            if !track.is_simulcast() {
                continue;
            }
            let mut infos = [LayerInfo {
                active: false,
                bitrate_bps: 0,
            }; MAX_LAYERS];
            let n = track.layer_infos(now, &mut infos);
            let infos = &infos[..n];
            let current = b.layer;
            let eager = choose_layer(sub.request, infos, estimate, current, true);
            // Moves the estimate asks for wait out their hold time; pinned requests, a
            // viewer without an estimate and a current layer that stopped do not.
            let still_active = current.is_some_and(|c| infos.get(c).is_some_and(|l| l.active));
            let (up, down) = match (eager, current) {
                (Some(e), Some(c))
                    if sub.request == LayerRequest::Auto && still_active && estimate.is_some() =>
                {
                    let (e, c) = (rank_of(infos, e), rank_of(infos, c));
                    (e > c, e < c)
                }
                _ => (false, false),
            };
            let waited = |since: &mut Option<Instant>, wanted: bool, hold: Duration| {
                if !wanted {
                    *since = None;
                    return true;
                }
                now.saturating_duration_since(*since.get_or_insert(now)) >= hold
            };
            let up_ok = waited(&mut slot.upgrade_since, up, UPGRADE_HOLD);
            let down_ok = waited(&mut slot.downgrade_since, down, DOWNGRADE_HOLD);
            let target = if up_ok && down_ok { eager } else { current };
            slot.target = target;
            let Some(target) = target else { continue };
            if Some(target) != current
                && sink.request_keyframe(b.track.publisher, ready, track, target, now)
            {
                sink.stats.switch_keyframe_requests += 1;
            }
            // Probe towards the next layer up when the estimate does not reach it.
            let (Some(cc), Some(cur), LayerRequest::Auto) = (sub.cc.as_mut(), current, sub.request)
            else {
                continue;
            };
            if target != cur {
                continue;
            }
            // Towards the top layer: each probe aims at most twice the estimate, so a link
            // with room climbs there in doubling steps, and a weak one is asked for one
            // step more than it has shown it carries.
            if let Some(top) = top_layer(infos).filter(|&t| t != cur) {
                // Above the upgrade threshold: a probe delivers a little less than its
                // target, and what it proves must still clear the headroom.
                let want = (infos[top].bitrate_bps as f64 * UPGRADE_HEADROOM * PROBE_MARGIN) as u64;
                cc.maybe_start_probe(want, infos[cur].bitrate_bps, now);
            }
        }
    }
}
