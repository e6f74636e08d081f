//! The room's forwarding state: publishers' tracks, subscribers' slots, the bindings
//! between them, and the RTP/RTCP rewriting that makes a switched source look like one
//! continuous stream to each subscriber.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::sdp::{Codec, ExtensionKind, MediaKind};

mod rewrite;
mod stats;
mod timers;

pub use stats::{
    EstimateSamples, ForwardStats, NackMiss, RttSamples, SlotView, ESTIMATE_BUCKETS_BPS,
    NACK_RTT_BUCKETS_MS,
};

use super::codec::{self, CodecKind};
use super::congestion::SubscriberCc;
use super::layers::{choose_layer, rank_layers, rank_name, LayerInfo, LayerRequest};
use super::nack_gen::{Arrival, Via};
use super::pool::BufferPool;
use super::rtcp::{self, Nack, ReportBlock, RtcpError, RtcpPacket, SenderReport};
use super::rtp::{seq_newer, RtpError, RtpHeader};
use super::rtp_ext::{self, ExtensionError, ExtensionIds, Extensions};
use super::rtx::Miss;
use super::sink::Sink;
use super::slot::{Binding, Slot};
use super::track::{locate, locate_rtx, SlotRef, Track, TrackKey, MAX_LAYERS};
use super::twcc::TwccRecorder;
use rewrite::{
    continue_picture_ids, forwarded, rewrite_picture_ids, set_stream, stamp, unwrap_rtx, wrap_rtx,
};

/// Identifies a session inside a room; assigned by the logic thread.
pub type MemberId = u32;

/// One outgoing stream of a publisher, as negotiated in its SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    pub kind: MediaKind,
    /// From the SDP (`a=ssrc`). `None`: learned from the first packet whose payload type
    /// equals `codec.payload_type`.
    pub ssrc: Option<u32>,
    /// The publisher's payload type and format.
    pub codec: Codec,
    /// The m-line's mid (placed by the `sdes:mid` extension when SSRCs are unsignaled).
    pub mid: String,
    /// Simulcast layers by RID (at most three); empty for a single stream.
    pub rids: Vec<String>,
    /// The publisher's `rtx` payload type (RFC 4588), when negotiated.
    pub rtx_payload_type: Option<u8>,
    /// Its RTX SSRC for a single stream (`a=ssrc-group:FID`); simulcast layers' RTX
    /// streams are bound by `repaired-rtp-stream-id`, or learned.
    pub rtx_ssrc: Option<u32>,
}

/// One receiving m-line of a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedSlot {
    pub kind: MediaKind,
    /// The SSRC this subscriber sees, whatever publisher currently feeds the slot.
    pub out_ssrc: u32,
    /// The subscriber's negotiated payload type and format.
    pub codec: Codec,
    pub mid: String,
    /// `(payload type, SSRC)` of the RTX stream NACKs are answered on; `None`: on the
    /// original SSRC.
    pub rtx: Option<(u8, u32)>,
}

/// A plaintext packet to protect and send to a member. The `packet` buffer comes from
/// the room's pool: hand it back with [`RoomCore::recycle`] once sent, and forwarding
/// stops allocating once the room is warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Rtp { to: MemberId, packet: Vec<u8> },
    Rtcp { to: MemberId, packet: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// How long a layer's packets are kept for NACK answers: the buffer grows with the
    /// layer's packet rate to hold this much.
    pub rtx_history: Duration,
    /// The most packets a layer's buffer holds, whatever the rate (memory bound); 0
    /// disables retransmission.
    pub rtx_max_packets: usize,
    /// Minimum spacing of keyframe requests sent to one publisher track.
    pub pli_min_interval: Duration,
    /// Receiver report period towards publishers (values below 10 ms are raised to
    /// 10 ms so a zero cannot make the timer spin).
    pub rr_interval: Duration,
    /// SSRC roomgate uses as the sender of its own RTCP.
    pub sender_ssrc: u32,
    /// A subscriber's bandwidth estimate before any feedback arrived.
    pub initial_estimate_bps: u64,
    /// How often simulcast subscribers' layers are re-chosen.
    pub layer_interval: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            rtx_history: Duration::from_secs(1),
            rtx_max_packets: 2048,
            pli_min_interval: Duration::from_millis(500),
            rr_interval: Duration::from_secs(1),
            // "rmgt": any fixed value works as long as no slot uses it as out_ssrc.
            sender_ssrc: 0x726d_6774,
            // What libwebrtc starts a send-side estimate at: a new viewer starts on the
            // layer nearly any link carries (the low layer of a 720p ladder) and probes
            // up from there, instead of starting above a weak link and losing its first
            // second to the queue.
            initial_estimate_bps: 300_000,
            layer_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("malformed RTP from member {member}: {source}")]
    MalformedRtp {
        member: MemberId,
        #[source]
        source: RtpError,
    },
    #[error("malformed RTCP from member {member}: {source}")]
    MalformedRtcp {
        member: MemberId,
        #[source]
        source: RtcpError,
    },
    #[error("RTP from member {member} with an unusable header extension: {source}")]
    BadExtension {
        member: MemberId,
        #[source]
        source: ExtensionError,
    },
    #[error("RTP from member {member}, which is not a publisher in this room")]
    NotAPublisher { member: MemberId },
    #[error("RTCP from member {member}, which is not in this room")]
    UnknownMember { member: MemberId },
}

/// Member IDs are small integers chosen by the server, so a multiplicative hash is enough
/// and much cheaper than SipHash on the per-packet lookups.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<MemberId, V, BuildHasherDefault<IdHasher>>;

struct Publisher {
    tracks: Vec<Track>,
    /// Receives RTCP from us. Set by `set_ready`, or implied by its first packet: it
    /// cannot send SRTP before the keys exist.
    ready: bool,
    /// Negotiated header-extension IDs of this member's packets.
    extensions: ExtensionIds,
    /// Arrivals to report in transport-wide feedback, when negotiated.
    twcc: Option<TwccRecorder>,
}

struct Subscriber {
    slots: Vec<Slot>,
    /// `Some`: only this publisher may feed the slots.
    publisher: Option<MemberId>,
    ready: bool,
    /// Retransmission budget: a 2 KB NACK can name thousands of packets, and the
    /// subscriber's address is only as trustworthy as ICE-lite makes it, so answers are
    /// capped per window instead of amplifying one small packet into megabytes.
    rtx_window: Option<Instant>,
    rtx_in_window: u32,
    /// Header-extension IDs the subscriber negotiated; only these are written.
    extensions: ExtensionIds,
    /// Congestion control, when the subscriber negotiated transport-wide feedback.
    cc: Option<Box<SubscriberCc>>,
    request: LayerRequest,
}

/// Retransmissions one subscriber may get per [`RTX_WINDOW`] (≈1,280 packets/s, far above
/// what repairing a single video stream needs).
const RTX_PER_WINDOW: u32 = 128;
const RTX_WINDOW: Duration = Duration::from_millis(100);

/// One room's SFU: sans-IO, driven by `handle_*` and drained with `poll_output`.
pub struct RoomCore {
    config: ForwardConfig,
    publishers: IdMap<Publisher>,
    /// Join order, for "earliest-joined publisher" binding and stable output order.
    publisher_order: Vec<MemberId>,
    subscribers: IdMap<Subscriber>,
    subscriber_order: Vec<MemberId>,
    out: VecDeque<Output>,
    stats: ForwardStats,
    next_rr: Option<Instant>,
    /// Buffers of sent outputs, handed back through `recycle`.
    pool: BufferPool,
    /// Scratch for one RR's blocks, kept so report generation reuses its capacity.
    rr_blocks: Vec<ReportBlock>,
    /// Feedback and probe tick, while any member negotiated transport-wide-cc.
    next_fast: Option<Instant>,
    /// Layer re-selection tick, while the room has publishers and subscribers.
    next_layers: Option<Instant>,
    /// Origin of the abs-send-time roomgate writes.
    epoch: Option<Instant>,
    /// Scratch for the seqs of one NACK to a publisher.
    nack_scratch: Vec<u16>,
}

/// The room split into the sink keyframe requests write to and the member maps, so a
/// caller can hold all of them at once.
struct Parts<'a> {
    sink: Sink<'a>,
    publishers: &'a mut IdMap<Publisher>,
    subscribers: &'a mut IdMap<Subscriber>,
    publisher_order: &'a [MemberId],
}

impl Sink<'_> {
    /// A keyframe request to `layer` of a bound track, if its publisher is still here.
    fn request_from(
        &mut self,
        publishers: &mut IdMap<Publisher>,
        key: TrackKey,
        layer: usize,
        now: Instant,
    ) -> bool {
        let Some(p) = publishers.get_mut(&key.publisher) else {
            return false;
        };
        let ready = p.ready;
        p.tracks
            .get_mut(key.index)
            .is_some_and(|track| self.request_keyframe(key.publisher, ready, track, layer, now))
    }
}

impl RoomCore {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            sink: Sink {
                config: &self.config,
                out: &mut self.out,
                stats: &mut self.stats,
                pool: &mut self.pool,
            },
            publishers: &mut self.publishers,
            subscribers: &mut self.subscribers,
            publisher_order: &self.publisher_order,
        }
    }

    pub fn new(mut config: ForwardConfig) -> Self {
        config.rr_interval = config.rr_interval.max(Duration::from_millis(10));
        Self {
            config,
            publishers: IdMap::default(),
            publisher_order: Vec::new(),
            subscribers: IdMap::default(),
            subscriber_order: Vec::new(),
            out: VecDeque::new(),
            stats: ForwardStats::default(),
            next_rr: None,
            pool: BufferPool::default(),
            rr_blocks: Vec::new(),
            next_fast: None,
            next_layers: None,
            epoch: None,
            nack_scratch: Vec::new(),
        }
    }

    /// Give back the buffer of an [`Output`] once it has been protected and sent, so
    /// the next output reuses its allocation. Any `Vec` is accepted; the pool keeps a
    /// bounded number of reasonably sized ones and frees the rest.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.pool.give(buf);
    }

    /// Idle buffers held for reuse (bounded; for diagnostics and tests).
    pub fn pooled_buffers(&self) -> usize {
        self.pool.len()
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// A re-added ID replaces the previous publisher state of that member.
    pub fn add_publisher(&mut self, id: MemberId, tracks: Vec<PublishedTrack>, now: Instant) {
        if self.publishers.contains_key(&id) {
            self.remove_publisher(id, now);
        }
        let buffer = (self.config.rtx_history, self.config.rtx_max_packets);
        let tracks = tracks
            .into_iter()
            .map(|t| {
                let mut track = Track::new(t.kind, t.codec, &t.mid, t.ssrc, &t.rids, buffer);
                track.set_rtx(t.rtx_payload_type, t.rtx_ssrc);
                track
            })
            .collect();
        self.publishers.insert(
            id,
            Publisher {
                tracks,
                ready: false,
                extensions: ExtensionIds::default(),
                twcc: None,
            },
        );
        self.publisher_order.push(id);
        if self.next_rr.is_none() {
            self.next_rr = Some(now + self.config.rr_interval);
        }
        self.refresh_timers(now);
        for i in 0..self.subscriber_order.len() {
            let sub = self.subscriber_order[i];
            let wants = self
                .subscribers
                .get(&sub)
                .is_some_and(|s| s.publisher.is_none_or(|p| p == id));
            if wants {
                self.bind_unbound(sub, now);
            }
        }
    }

    /// A re-added ID replaces the previous subscriber state of that member.
    pub fn add_subscriber(
        &mut self,
        id: MemberId,
        slots: Vec<SubscribedSlot>,
        publisher: Option<MemberId>,
        now: Instant,
    ) {
        if self.subscribers.contains_key(&id) {
            self.remove_subscriber(id);
        }
        let slots = slots
            .into_iter()
            .map(|s| {
                let mut slot = Slot::new(s.kind, s.out_ssrc, s.codec, &s.mid);
                slot.rtx = s.rtx;
                slot
            })
            .collect();
        self.subscribers.insert(
            id,
            Subscriber {
                slots,
                publisher,
                ready: false,
                rtx_window: None,
                rtx_in_window: 0,
                extensions: ExtensionIds::default(),
                cc: None,
                request: LayerRequest::Auto,
            },
        );
        self.subscriber_order.push(id);
        self.refresh_timers(now);
        self.bind_unbound(id, now);
    }

    /// The member's negotiated header extensions. With transport-wide-cc a publisher
    /// gets feedback and a subscriber gets congestion control.
    pub fn set_extensions(&mut self, id: MemberId, ids: ExtensionIds, now: Instant) {
        let twcc = ids.id(ExtensionKind::TransportWideCc).is_some();
        if let Some(p) = self.publishers.get_mut(&id) {
            p.extensions = ids;
            p.twcc = twcc.then(TwccRecorder::new);
        }
        if let Some(s) = self.subscribers.get_mut(&id) {
            s.extensions = ids;
            s.cc = twcc.then(|| Box::new(SubscriberCc::new(self.config.initial_estimate_bps, now)));
        }
        self.retarget_unstarted(id, now);
        self.refresh_timers(now);
    }

    /// Choose again the first layer of `id`'s simulcast slots that have none yet. A slot
    /// binds as its subscriber joins, before the subscriber's header extensions say
    /// whether it will have an estimate; chosen without one, the first layer is the top
    /// one, and a viewer whose DTLS came up before the next layer tick started on it,
    /// with a top-layer keyframe that a weak link could only drop.
    fn retarget_unstarted(&mut self, id: MemberId, now: Instant) {
        let Parts {
            publishers,
            subscribers,
            ..
        } = self.parts();
        let Some(sub) = subscribers.get_mut(&id) else {
            return;
        };
        let estimate = sub.cc.as_ref().map(|c| c.estimate_bps());
        for slot in &mut sub.slots {
            let Some(b) = slot.binding.filter(|b| b.layer.is_none()) else {
                continue;
            };
            let Some(track) = publishers
                .get(&b.track.publisher)
                .and_then(|p| p.tracks.get(b.track.index))
                .filter(|t| t.is_simulcast())
            else {
                continue;
            };
            slot.target = target_layer(track, sub.request, estimate, None, true, now);
        }
    }

    /// What a subscriber asks for; re-chosen at once. `false`: no such subscriber.
    pub fn set_layer_request(&mut self, id: MemberId, request: LayerRequest, now: Instant) -> bool {
        let Some(sub) = self.subscribers.get_mut(&id) else {
            return false;
        };
        sub.request = request;
        for slot in &mut sub.slots {
            slot.upgrade_since = None;
            slot.downgrade_since = None;
        }
        self.evaluate_subscriber(id, now, false);
        true
    }

    /// Bind every unbound slot of `sub` to the earliest-joined eligible publisher's
    /// compatible track. A subscriber's slots take distinct tracks, so two video slots
    /// show two publishers rather than one twice.
    fn bind_unbound(&mut self, sub_id: MemberId, now: Instant) {
        let Parts {
            mut sink,
            publishers,
            subscribers,
            publisher_order: order,
        } = self.parts();
        let Some(sub) = subscribers.get_mut(&sub_id) else {
            return;
        };
        let estimate = sub.cc.as_ref().map(|c| c.estimate_bps());
        for slot_index in 0..sub.slots.len() {
            let slot = &sub.slots[slot_index];
            if slot.binding.is_some() {
                continue;
            }
            let taken = |key: TrackKey| {
                sub.slots
                    .iter()
                    .any(|s| s.binding.is_some_and(|b| b.track == key))
            };
            let mut mismatch = false;
            let mut chosen = None;
            'search: for &pid in order.iter() {
                if sub.publisher.is_some_and(|p| p != pid) {
                    continue;
                }
                let Some(publisher) = publishers.get(&pid) else {
                    continue;
                };
                for (index, track) in publisher.tracks.iter().enumerate() {
                    let key = TrackKey {
                        publisher: pid,
                        index,
                    };
                    if track.kind != slot.kind || taken(key) {
                        continue;
                    }
                    // Same format means packets pass through with only the PT renumbered.
                    if !slot.codec.same_format(&track.codec) {
                        mismatch = true;
                        continue;
                    }
                    chosen = Some(key);
                    break 'search;
                }
            }
            let Some(key) = chosen else {
                if mismatch {
                    sink.stats.codec_mismatch += 1;
                }
                continue;
            };
            let Some(publisher) = publishers.get_mut(&key.publisher) else {
                continue;
            };
            let ready = publisher.ready;
            let Some(track) = publisher.tracks.get_mut(key.index) else {
                continue;
            };
            track.bound.push(SlotRef {
                subscriber: sub_id,
                slot: slot_index,
            });
            // A plain track is forwarded from its first packet, as it always was; a
            // simulcast slot waits for a keyframe of the layer chosen for it.
            let (layer, target) = if track.is_simulcast() {
                (
                    None,
                    target_layer(track, sub.request, estimate, None, true, now),
                )
            } else {
                (Some(0), Some(0))
            };
            let slot = &mut sub.slots[slot_index];
            slot.binding = Some(Binding {
                track: key,
                layer,
                offsets: None,
            });
            slot.target = target;
            slot.upgrade_since = None;
            slot.vp8_switched = true;
            if sub.ready {
                if let Some(t) = target {
                    sink.request_keyframe(key.publisher, ready, track, t, now);
                }
            }
        }
    }

    /// The member's SRTP is ready: from now on it receives. A subscriber's bound tracks
    /// get a keyframe request so its decoder can start.
    pub fn set_ready(&mut self, id: MemberId, now: Instant) {
        if let Some(p) = self.publishers.get_mut(&id) {
            p.ready = true;
        }
        let Parts {
            mut sink,
            publishers,
            subscribers,
            ..
        } = self.parts();
        let Some(sub) = subscribers.get_mut(&id) else {
            return;
        };
        if sub.ready {
            return;
        }
        sub.ready = true;
        for slot in &sub.slots {
            let Some(b) = slot.binding else { continue };
            if let Some(layer) = slot.target.or(b.layer) {
                sink.request_from(publishers, b.track, layer, now);
            }
        }
    }

    pub fn remove_member(&mut self, id: MemberId, now: Instant) {
        self.remove_subscriber(id);
        self.remove_publisher(id, now);
        self.refresh_timers(now);
    }

    fn remove_subscriber(&mut self, id: MemberId) {
        let Some(sub) = self.subscribers.remove(&id) else {
            return;
        };
        self.subscriber_order.retain(|&s| s != id);
        for slot in &sub.slots {
            let Some(b) = slot.binding else { continue };
            if let Some(track) = self
                .publishers
                .get_mut(&b.track.publisher)
                .and_then(|p| p.tracks.get_mut(b.track.index))
            {
                track.bound.retain(|r| r.subscriber != id);
            }
        }
    }

    /// Drops the publisher's tracks and buffers, unbinds the slots they fed, then lets
    /// those subscribers rebind to whoever else can feed them.
    fn remove_publisher(&mut self, id: MemberId, now: Instant) {
        let Some(publisher) = self.publishers.remove(&id) else {
            return;
        };
        self.publisher_order.retain(|&p| p != id);
        let mut affected: Vec<MemberId> = Vec::new();
        for track in &publisher.tracks {
            for r in &track.bound {
                if let Some(slot) = self
                    .subscribers
                    .get_mut(&r.subscriber)
                    .and_then(|s| s.slots.get_mut(r.slot))
                {
                    slot.binding = None;
                    slot.target = None;
                }
                if !affected.contains(&r.subscriber) {
                    affected.push(r.subscriber);
                }
            }
        }
        if self.publishers.is_empty() {
            self.next_rr = None;
        }
        // Rebind in subscriber join order, for a deterministic output sequence.
        for i in 0..self.subscriber_order.len() {
            let sub = self.subscriber_order[i];
            if affected.contains(&sub) {
                self.bind_unbound(sub, now);
            }
        }
    }

    /// Forward one plaintext RTP packet from a publisher. Packets dropped by policy
    /// (unknown SSRC or RID, unexpected PT) return `Ok` and are counted.
    pub fn handle_rtp(
        &mut self,
        from: MemberId,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), ForwardError> {
        self.stats.rtp_in += 1;
        let header = match RtpHeader::parse(packet) {
            Ok(h) => h,
            Err(source) => {
                self.stats.rtp_malformed += 1;
                return Err(ForwardError::MalformedRtp {
                    member: from,
                    source,
                });
            }
        };
        let Some(publisher) = self.publishers.get_mut(&from) else {
            self.stats.unknown_member += 1;
            return Err(ForwardError::NotAPublisher { member: from });
        };
        publisher.ready = true;
        let ext = match rtp_ext::parse_extensions(&header, &publisher.extensions) {
            Ok(ext) => ext,
            Err(ExtensionError::UnknownProfile { .. }) => {
                self.stats.rtp_foreign_extension += 1;
                Extensions::default()
            }
            Err(source) => {
                self.stats.rtp_bad_extension += 1;
                return Err(ForwardError::BadExtension {
                    member: from,
                    source,
                });
            }
        };
        let ssrc = header.ssrc();
        let pt = header.payload_type();
        // Transport-wide: every packet that arrived counts, whatever it carries.
        if let (Some(seq), Some(twcc)) = (ext.transport_seq, publisher.twcc.as_mut()) {
            twcc.on_packet(ssrc, seq, now);
        }
        if let Some((index, layer)) = locate_rtx(&mut publisher.tracks, ssrc, pt, &ext) {
            return self.handle_publisher_rtx(from, (index, layer), &header, &ext, now);
        }
        let Some((index, layer)) = locate(&mut publisher.tracks, ssrc, pt, &ext, &mut self.stats)
        else {
            return Ok(());
        };
        if pt != publisher.tracks[index].codec.payload_type {
            self.stats.rtp_payload_type_mismatch += 1;
            return Ok(());
        }
        self.forward_media(from, (index, layer), &header, &ext, false, now);
        Ok(())
    }

    /// A publisher's retransmission (RFC 4588): its payload starts with the original
    /// sequence number. Unwrapped, it is the packet roomgate missed, and takes the
    /// media path from there (a copy roomgate already has is dropped and counted).
    fn handle_publisher_rtx(
        &mut self,
        from: MemberId,
        (index, layer): (usize, usize),
        header: &RtpHeader<'_>,
        ext: &Extensions<'_>,
        now: Instant,
    ) -> Result<(), ForwardError> {
        let payload = header.payload();
        let Some(osn) = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            // Padding-only RTX packets are the publisher's own bandwidth probes.
            self.stats.rtx_padding_received += 1;
            return Ok(());
        };
        let track = self.publishers.get(&from).and_then(|p| p.tracks.get(index));
        let Some((media_ssrc, media_pt, have)) = track.and_then(|t| {
            let l = t.layers.get(layer)?;
            Some((l.ssrc?, t.codec.payload_type, l.rtx.get(osn, now).is_ok()))
        }) else {
            self.stats.rtp_unknown_ssrc += 1;
            return Ok(());
        };
        if have {
            self.stats.rtx_duplicates_received += 1;
            return Ok(());
        }
        let mut original = self.pool.take();
        unwrap_rtx(&mut original, header, media_ssrc, media_pt, osn);
        if let Ok(repaired) = RtpHeader::parse(&original) {
            self.stats.rtx_repairs_received += 1;
            self.forward_media(from, (index, layer), &repaired, ext, true, now);
        }
        self.pool.give(original);
        Ok(())
    }

    /// Store a publisher's media packet and send it to every slot it feeds.
    /// `repair`: the packet was unwrapped from the publisher's RTX stream.
    fn forward_media(
        &mut self,
        from: MemberId,
        (index, layer): (usize, usize),
        header: &RtpHeader<'_>,
        ext: &Extensions<'_>,
        repair: bool,
        now: Instant,
    ) {
        let packet = header.as_bytes();
        let Some(track) = self
            .publishers
            .get_mut(&from)
            .and_then(|p| p.tracks.get_mut(index))
        else {
            return;
        };
        let seq = header.sequence_number();
        let ts = header.timestamp();
        let clock_rate = track.codec.clock_rate;
        let codec_kind = track.codec_kind;
        let Some(source) = track.layers.get_mut(layer) else {
            return;
        };
        source.recv.update(seq, ts, clock_rate, now);
        if track.nack {
            // RTX negotiated is what matters, not its SSRC being known yet: simulcast
            // layers learn theirs from the first repair.
            let via = match (repair, track.rtx_pt) {
                (true, _) => Via::Rtx,
                (false, Some(_)) => Via::Original,
                (false, None) => Via::Media,
            };
            match source.nacks.on_packet(seq, via, now) {
                Arrival::Repaired(rtt) => self.stats.nack_rtt.observe(rtt),
                Arrival::Reordered { asked } => {
                    self.stats.rtp_reordered += 1;
                    self.stats.nacks_spurious += u64::from(asked);
                }
                Arrival::Normal => {}
            }
        }
        let gap = source.nacks.has_missing();
        let stored_at = source.rtx.insert(seq, packet, now);
        source.on_packet(packet.len(), now);
        let payload = header.payload();
        let mut keyframe = None;
        let epoch = *self.epoch.get_or_insert(now);
        let abs_send_time = Some(rtp_ext::encode_abs_send_time(now - epoch));

        for r in &track.bound {
            let Some(sub) = self.subscribers.get_mut(&r.subscriber) else {
                continue;
            };
            if !sub.ready {
                continue;
            }
            let Some(slot) = sub.slots.get_mut(r.slot) else {
                continue;
            };
            let Some(binding) = slot.binding else {
                continue;
            };
            if binding.layer != Some(layer) {
                // Another layer: only the target's keyframe may take over the slot.
                if slot.target != Some(layer) {
                    continue;
                }
                if !*keyframe.get_or_insert_with(|| codec::keyframe(codec_kind, payload)) {
                    continue;
                }
                let first = binding.layer.is_none();
                if !first {
                    self.stats.layer_switches += 1;
                }
                slot.switch_to(layer);
                if let Some(cc) = sub.cc.as_mut() {
                    cc.layer_changed(first, now);
                }
            }
            let Some(off) = slot.offsets_for(seq, ts, stored_at, now) else {
                self.stats.rtp_dropped_before_bind += 1;
                continue;
            };
            let out_seq = seq.wrapping_add(off.seq);
            let out_ts = ts.wrapping_add(off.ts);
            let transport_seq = stamp(&mut sub.cc, &sub.extensions, packet.len(), now);
            let mut out = forwarded(
                &mut self.pool,
                header,
                ext,
                &sub.extensions,
                transport_seq,
                abs_send_time,
            );
            if codec_kind == CodecKind::Vp8 && !continue_picture_ids(slot, &mut out) {
                self.pool.give(out);
                self.stats.rtp_dropped_before_bind += 1;
                continue;
            }
            set_stream(
                &mut out,
                slot.out_ssrc,
                slot.codec.payload_type,
                out_seq,
                out_ts,
            );
            slot.note_sent(out_seq, out_ts, now);
            slot.frame_done = header.marker();
            self.out.push_back(Output::Rtp {
                to: r.subscriber,
                packet: out,
            });
            self.stats.rtp_forwarded += 1;
        }
        // Ask for what is missing once its reorder wait is over (at once on a path that
        // does not reorder); the fast tick repeats the request.
        if gap {
            self.send_publisher_nacks(now);
            self.arm_fast(now);
        }
    }

    /// Handle a plaintext RTCP compound packet. The whole compound is validated first,
    /// so a malformed tail drops it as a unit instead of half-applying it.
    pub fn handle_rtcp(
        &mut self,
        from: MemberId,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), ForwardError> {
        self.stats.rtcp_in += 1;
        if let Err(source) = rtcp::validate_compound(packet) {
            self.stats.rtcp_malformed += 1;
            return Err(ForwardError::MalformedRtcp {
                member: from,
                source,
            });
        }
        let is_publisher = self.publishers.contains_key(&from);
        let is_subscriber = self.subscribers.contains_key(&from);
        if !is_publisher && !is_subscriber {
            self.stats.unknown_member += 1;
            return Err(ForwardError::UnknownMember { member: from });
        }
        if let Some(p) = self.publishers.get_mut(&from) {
            p.ready = true;
        }
        for p in rtcp::parse_compound(packet).flatten() {
            match p {
                RtcpPacket::SenderReport(sr) if is_publisher => {
                    self.on_sender_report(from, &sr, now)
                }
                RtcpPacket::Pli(pli) if is_subscriber => {
                    self.stats.plis_received += 1;
                    self.on_keyframe_request(from, pli.media_ssrc, now);
                }
                RtcpPacket::Fir(fir) if is_subscriber => {
                    self.stats.firs_received += 1;
                    for e in fir.entries() {
                        self.on_keyframe_request(from, e.ssrc, now);
                    }
                }
                RtcpPacket::Nack(nack) if is_subscriber => {
                    self.stats.nacks_received += 1;
                    self.on_nack(from, &nack, now);
                }
                RtcpPacket::TransportFeedback(feedback) if is_subscriber => {
                    self.stats.twcc_feedback_received += 1;
                    if let Some(cc) = self.subscribers.get_mut(&from).and_then(|s| s.cc.as_mut()) {
                        cc.handle_feedback(&feedback, now);
                    }
                }
                // RR, SDES, BYE, REMB, APP, and feedback from the wrong role: consumed.
                // Subscribers' reports describe our streams, not the publishers', so
                // relaying them would mislead the publishers' estimators.
                _ => {}
            }
        }
        Ok(())
    }

    fn on_keyframe_request(&mut self, from: MemberId, media_ssrc: u32, now: Instant) {
        let Parts {
            mut sink,
            publishers,
            subscribers,
            ..
        } = self.parts();
        let Some(sub) = subscribers.get(&from) else {
            return;
        };
        let Some(slot) = sub.slots.iter().find(|s| s.out_ssrc == media_ssrc) else {
            sink.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        // An unbound slot has no source to ask; nothing to count as a drop beyond the
        // request itself, which `plis_received`/`firs_received` already saw.
        let Some(b) = slot.binding else { return };
        if let Some(layer) = b.layer.or(slot.target) {
            sink.request_from(publishers, b.track, layer, now);
        }
    }

    /// Answer a subscriber's NACK from the bound layer's buffer, in the subscriber's
    /// sequence space.
    fn on_nack(&mut self, from: MemberId, nack: &Nack<'_>, now: Instant) {
        let Some(sub) = self.subscribers.get_mut(&from) else {
            return;
        };
        if sub
            .rtx_window
            .is_none_or(|start| now.saturating_duration_since(start) >= RTX_WINDOW)
        {
            sub.rtx_window = Some(now);
            sub.rtx_in_window = 0;
        }
        let sub = &mut *sub;
        let Some(slot) = sub
            .slots
            .iter_mut()
            .find(|s| s.out_ssrc == nack.media_ssrc())
        else {
            self.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        let source = slot.binding.and_then(|b| {
            let off = b.offsets?;
            let publisher = self.publishers.get(&b.track.publisher)?;
            let layer = publisher.tracks.get(b.track.index)?.layers.get(b.layer?)?;
            Some((off, layer, &publisher.extensions))
        });
        let Some((off, layer, publisher_ids)) = source.filter(|_| sub.ready) else {
            let n = nack.lost_seqs().count() as u64;
            self.stats.miss(NackMiss::NotForwarded, n);
            return;
        };
        let abs_send_time = self.epoch.map(|e| rtp_ext::encode_abs_send_time(now - e));
        for out_seq in nack.lost_seqs() {
            if off
                .seq_valid_from
                .is_some_and(|from| seq_newer(from, out_seq))
            {
                self.stats.miss(NackMiss::NotForwarded, 1);
                continue;
            }
            let seq = out_seq.wrapping_sub(off.seq);
            // Only packets this binding forwarded: earlier ones belong to a different
            // stream position (or were never sent to this subscriber).
            let stored = match layer.rtx.get(seq, now) {
                Ok(s) if s.index >= off.first_index && !off.predates(seq, s.index) => s,
                Ok(_) => {
                    self.stats.miss(NackMiss::NotForwarded, 1);
                    continue;
                }
                Err(Miss::NotBuffered) => {
                    self.stats.miss(NackMiss::NotBuffered, 1);
                    continue;
                }
                Err(Miss::TooOld) => {
                    self.stats.miss(NackMiss::TooOld, 1);
                    continue;
                }
            };
            if sub.rtx_in_window >= RTX_PER_WINDOW {
                self.stats.miss(NackMiss::RateLimited, 1);
                continue;
            }
            let Ok(h) = RtpHeader::parse(stored.data) else {
                self.stats.miss(NackMiss::NotBuffered, 1);
                continue;
            };
            let ext = rtp_ext::parse_extensions(&h, publisher_ids).unwrap_or_default();
            sub.rtx_in_window += 1;
            let transport_seq = stamp(&mut sub.cc, &sub.extensions, stored.data.len(), now);
            let mut packet = forwarded(
                &mut self.pool,
                &h,
                &ext,
                &sub.extensions,
                transport_seq,
                abs_send_time,
            );
            // The picture IDs of a retransmission must match the original's; the
            // continuity map is idempotent for packets it already mapped.
            if slot.codec_kind == CodecKind::Vp8 {
                let mut ids = slot.picture_ids;
                let _ = rewrite_picture_ids(&mut ids, false, &mut packet);
            }
            set_stream(
                &mut packet,
                slot.out_ssrc,
                slot.codec.payload_type,
                out_seq,
                h.timestamp().wrapping_add(off.ts),
            );
            // With RTX the repair travels on its own stream, so the subscriber can tell
            // it from the original and count it (RFC 4588).
            if let Some((rtx_pt, rtx_ssrc)) = slot.rtx {
                wrap_rtx(&mut packet, rtx_pt, rtx_ssrc, slot.rtx_seq);
                slot.rtx_seq = slot.rtx_seq.wrapping_add(1);
                self.stats.rtx_sent += 1;
            }
            self.out.push_back(Output::Rtp { to: from, packet });
            self.stats.retransmissions += 1;
        }
    }

    fn on_sender_report(&mut self, from: MemberId, sr: &SenderReport<'_>, now: Instant) {
        let Some(publisher) = self.publishers.get_mut(&from) else {
            return;
        };
        let ssrc = sr.sender_ssrc();
        let found = publisher
            .tracks
            .iter_mut()
            .find_map(|t| t.layer_by_ssrc(ssrc).map(|l| (t, l)));
        let Some((track, layer)) = found else {
            self.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        track.layers[layer].last_sr = Some((sr.sender_info().ntp_middle(), now));
        for r in &track.bound {
            let Some(sub) = self.subscribers.get(&r.subscriber) else {
                continue;
            };
            let Some(slot) = sub.slots.get(r.slot).filter(|_| sub.ready) else {
                continue;
            };
            // Before the first forwarded packet the timestamp offset is unknown, and an
            // SR with the wrong mapping would desync audio and video. Only the layer the
            // slot forwards has the slot's offsets.
            let Some(off) = slot
                .binding
                .filter(|b| b.layer == Some(layer))
                .and_then(|b| b.offsets)
            else {
                continue;
            };
            let mut packet = self.pool.take();
            sr.rewrite_into(&mut packet, slot.out_ssrc, off.ts);
            self.out.push_back(Output::Rtcp {
                to: r.subscriber,
                packet,
            });
            self.stats.sr_forwarded += 1;
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next time [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_rr, self.next_fast, self.next_layers]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn take_stats(&mut self) -> ForwardStats {
        std::mem::take(&mut self.stats)
    }

    /// Codecs of the current publishers' tracks, in join order, exact duplicates removed.
    pub fn published_codecs(&self) -> Vec<Codec> {
        let mut codecs: Vec<Codec> = Vec::new();
        for pid in &self.publisher_order {
            let Some(p) = self.publishers.get(pid) else {
                continue;
            };
            for t in &p.tracks {
                if !codecs.contains(&t.codec) {
                    codecs.push(t.codec.clone());
                }
            }
        }
        codecs
    }

    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty() && self.subscribers.is_empty()
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.len()
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// The publisher track feeding a subscriber's slot, as (publisher, SSRC of the layer
    /// being forwarded, if known): for diagnostics and the control plane.
    pub fn slot_source(
        &self,
        subscriber: MemberId,
        out_ssrc: u32,
    ) -> Option<(MemberId, Option<u32>)> {
        let slot = self
            .subscribers
            .get(&subscriber)?
            .slots
            .iter()
            .find(|s| s.out_ssrc == out_ssrc)?;
        let b = slot.binding?;
        let track = self
            .publishers
            .get(&b.track.publisher)?
            .tracks
            .get(b.track.index)?;
        let layer = b.layer.or(slot.target).unwrap_or(0);
        Some((
            b.track.publisher,
            track.layers.get(layer).and_then(|l| l.ssrc),
        ))
    }

    /// What each video slot of a subscriber receives.
    pub fn slot_views(&self, subscriber: MemberId, now: Instant) -> Vec<SlotView> {
        let Some(sub) = self.subscribers.get(&subscriber) else {
            return Vec::new();
        };
        let estimate_bps = sub.cc.as_ref().map(|c| c.estimate_bps());
        sub.slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video)
            .map(|s| {
                let track = s.binding.and_then(|b| {
                    self.publishers
                        .get(&b.track.publisher)?
                        .tracks
                        .get(b.track.index)
                });
                let layer = match (s.binding.and_then(|b| b.layer), track) {
                    (Some(l), Some(t)) if t.is_simulcast() => {
                        let mut infos = [LayerInfo {
                            active: false,
                            bitrate_bps: 0,
                        }; MAX_LAYERS];
                        let n = t.layer_infos(now, &mut infos);
                        let mut ranked = [0; MAX_LAYERS];
                        let count = rank_layers(&infos[..n], &mut ranked);
                        ranked[..count]
                            .iter()
                            .position(|&i| i == l)
                            .map(|rank| rank_name(rank, count))
                    }
                    (Some(_), Some(_)) => Some("high"),
                    _ => None,
                };
                SlotView {
                    mid: s.mid.to_string(),
                    layer,
                    requested: sub.request,
                    estimate_bps,
                    simulcast: track.is_some_and(|t| t.is_simulcast()),
                }
            })
            .collect()
    }
}

/// A simulcast slot's target layer when it binds.
fn target_layer(
    track: &Track,
    request: LayerRequest,
    estimate: Option<u64>,
    current: Option<usize>,
    upgrade: bool,
    now: Instant,
) -> Option<usize> {
    let mut infos = [LayerInfo {
        active: false,
        bitrate_bps: 0,
    }; MAX_LAYERS];
    let n = track.layer_infos(now, &mut infos);
    choose_layer(request, &infos[..n], estimate, current, upgrade)
}
