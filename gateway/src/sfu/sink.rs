//! Where the room's outputs go, and the one output that several paths produce: a
//! keyframe request to a publisher's layer. Split from the room so callers can hold
//! borrows of the subscriber map at the same time.

use std::collections::VecDeque;
use std::time::Instant;

use crate::sdp::MediaKind;

use super::forward::{ForwardConfig, ForwardStats, Output};
use super::pool::BufferPool;
use super::rtcp::{self, FirEntry};
use super::track::Track;
use super::MemberId;

pub(super) struct Sink<'a> {
    pub config: &'a ForwardConfig,
    pub out: &'a mut VecDeque<Output>,
    pub stats: &'a mut ForwardStats,
    pub pool: &'a mut BufferPool,
}

impl Sink<'_> {
    /// Ask one layer of a publisher's track for a keyframe, at most once per
    /// `pli_min_interval`. Audio has no keyframes; an unready publisher or unlearned SSRC
    /// has nothing to address (and its first packets will start with a keyframe anyway).
    /// Returns whether a request went out.
    pub fn request_keyframe(
        &mut self,
        publisher: MemberId,
        ready: bool,
        track: &mut Track,
        layer: usize,
        now: Instant,
    ) -> bool {
        if !ready || track.kind != MediaKind::Video {
            return false;
        }
        let fir_only = track.fir_only;
        let Some(layer) = track.layers.get_mut(layer) else {
            return false;
        };
        let Some(ssrc) = layer.ssrc else { return false };
        if let Some(last) = layer.last_keyframe_request {
            if now.saturating_duration_since(last) < self.config.pli_min_interval {
                self.stats.plis_rate_limited += 1;
                return false;
            }
        }
        layer.last_keyframe_request = Some(now);
        let mut packet = self.pool.take();
        if fir_only {
            layer.fir_seq = layer.fir_seq.wrapping_add(1);
            rtcp::write_fir_into(
                &mut packet,
                self.config.sender_ssrc,
                &[FirEntry {
                    ssrc,
                    seq_nr: layer.fir_seq,
                }],
            );
        } else {
            rtcp::write_pli_into(&mut packet, self.config.sender_ssrc, ssrc);
        }
        self.out.push_back(Output::Rtcp {
            to: publisher,
            packet,
        });
        self.stats.plis_sent += 1;
        true
    }
}
