//! The room's forwarding state: publishers' tracks, subscribers' slots, the bindings
//! between them, and the RTP/RTCP rewriting that makes a switched source look like one
//! continuous stream to each subscriber.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::sdp::{Codec, MediaKind};

use super::pool::BufferPool;
use super::receive::ReceiveStats;
use super::rtcp::{self, FirEntry, Nack, ReportBlock, RtcpError, RtcpPacket, SenderReport};
use super::rtp::{seq_newer, RtpError, RtpHeader, RtpHeaderMut};
use super::rtx::{RtxBuffer, AUDIO_ENTRY_RESERVE, VIDEO_ENTRY_RESERVE};

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
}

/// One receiving m-line of a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedSlot {
    pub kind: MediaKind,
    /// The SSRC this subscriber sees, whatever publisher currently feeds the slot.
    pub out_ssrc: u32,
    /// The subscriber's negotiated payload type and format.
    pub codec: Codec,
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
    /// Packets kept per track for NACK answers; 0 disables retransmission.
    pub rtx_buffer_packets: usize,
    /// Minimum spacing of keyframe requests sent to one publisher track.
    pub pli_min_interval: Duration,
    /// Receiver report period towards publishers (values below 10 ms are raised to
    /// 10 ms so a zero cannot make the timer spin).
    pub rr_interval: Duration,
    /// SSRC roomgate uses as the sender of its own RTCP.
    pub sender_ssrc: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            rtx_buffer_packets: 512,
            pli_min_interval: Duration::from_millis(500),
            rr_interval: Duration::from_secs(1),
            // "rmgt": any fixed value works as long as no slot uses it as out_ssrc.
            sender_ssrc: 0x726d_6774,
        }
    }
}

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
    /// NACKed sequence numbers not (or no longer) in the buffer, or not ours to answer.
    pub nack_misses: u64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TrackKey {
    publisher: MemberId,
    index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotRef {
    subscriber: MemberId,
    slot: usize,
}

struct Track {
    kind: MediaKind,
    codec: Codec,
    ssrc: Option<u32>,
    /// Slots currently fed by this track.
    bound: Vec<SlotRef>,
    rtx: RtxBuffer,
    recv: ReceiveStats,
    /// LSR value (NTP middle 32 bits) and arrival time of the latest SR.
    last_sr: Option<(u32, Instant)>,
    last_keyframe_request: Option<Instant>,
    fir_seq: u8,
    /// Publisher offered `ccm fir` without `nack pli`: it may ignore PLIs.
    fir_only: bool,
}

struct Publisher {
    tracks: Vec<Track>,
    /// Receives RTCP from us. Set by `set_ready`, or implied by its first packet: it
    /// cannot send SRTP before the keys exist.
    ready: bool,
}

/// How long after a (re)bind, in packets arrived on the track, and how far behind the
/// binding's first seq a packet counts as a straggler from before the bind. Bounded both
/// ways so that a long-running stream, whose seqs lap the 16-bit space, is never taken
/// for a straggler.
const REORDER_WINDOW: u16 = 512;

#[derive(Debug, Clone, Copy)]
struct Offsets {
    seq: u16,
    ts: u32,
    /// Source seq of the first packet forwarded in this binding.
    first_in_seq: u16,
    /// Retransmission-buffer index of that packet; NACKs never reach further back.
    first_index: u64,
}

impl Offsets {
    /// A reordered packet from just before the bind point: its rewritten seq would
    /// collide with one the slot already sent from its previous source.
    fn predates(&self, seq: u16, index: u64) -> bool {
        let behind = self.first_in_seq.wrapping_sub(seq);
        let soon = index.saturating_sub(self.first_index) < u64::from(REORDER_WINDOW);
        soon && behind != 0 && behind <= REORDER_WINDOW
    }
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    track: TrackKey,
    /// Fixed by the first packet forwarded after binding, since only then are the
    /// source's seq and timestamp known.
    offsets: Option<Offsets>,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u16,
    ts: u32,
    at: Instant,
}

struct Slot {
    kind: MediaKind,
    out_ssrc: u32,
    codec: Codec,
    binding: Option<Binding>,
    /// Newest packet sent on this slot, across bindings: the continuity anchor.
    last_out: Option<LastOut>,
}

impl Slot {
    /// Offsets for a packet about to go out, fixing them on the binding's first packet.
    /// `None`: the packet predates the binding and must not be sent.
    fn offsets_for(&mut self, seq: u16, ts: u32, index: u64, now: Instant) -> Option<Offsets> {
        let last_out = self.last_out;
        let clock_rate = self.codec.clock_rate;
        let kind = self.kind;
        let binding = self.binding.as_mut()?;
        if let Some(off) = binding.offsets {
            return (!off.predates(seq, index)).then_some(off);
        }
        let (seq_off, ts_off) = match last_out {
            None => (0, 0),
            Some(last) => {
                let step = timestamp_step(kind, clock_rate, now.saturating_duration_since(last.at));
                (
                    last.seq.wrapping_add(1).wrapping_sub(seq),
                    last.ts.wrapping_add(step).wrapping_sub(ts),
                )
            }
        };
        let off = Offsets {
            seq: seq_off,
            ts: ts_off,
            first_in_seq: seq,
            first_index: index,
        };
        binding.offsets = Some(off);
        Some(off)
    }

    fn note_sent(&mut self, seq: u16, ts: u32, now: Instant) {
        let newer = match self.last_out {
            Some(last) => seq_newer(seq, last.seq),
            None => true,
        };
        if newer {
            self.last_out = Some(LastOut { seq, ts, at: now });
        }
    }
}

/// Timestamp advance across a source switch: the real elapsed time, but at least one
/// frame (video) or one 20 ms packet (audio) so the new source never appears to go back.
fn timestamp_step(kind: MediaKind, clock_rate: u32, elapsed: Duration) -> u32 {
    let min = match kind {
        MediaKind::Video => clock_rate / 30,
        MediaKind::Audio => clock_rate / 50,
    };
    let elapsed = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    u32::try_from(elapsed).unwrap_or(u32::MAX).max(min)
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
}

/// Retransmissions one subscriber may get per [`RTX_WINDOW`] (≈1,280 packets/s, far above
/// what repairing a single video stream needs).
const RTX_PER_WINDOW: u32 = 128;
const RTX_WINDOW: Duration = Duration::from_millis(100);

fn fir_only(codec: &Codec) -> bool {
    let has = |fb: &str| {
        codec
            .rtcp_fb
            .iter()
            .any(|f| f.trim().eq_ignore_ascii_case(fb))
    };
    has("ccm fir") && !has("nack pli")
}

/// Copy `packet` into a pooled buffer and rewrite it into a subscriber's stream.
fn rewritten(
    pool: &mut BufferPool,
    packet: &[u8],
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
) -> Vec<u8> {
    let mut out = pool.copy_of(packet);
    // The packet parsed as RTP already, so the header is there.
    if let Ok(mut h) = RtpHeaderMut::new(&mut out) {
        h.set_ssrc(ssrc);
        h.set_payload_type(pt);
        h.set_sequence_number(seq);
        h.set_timestamp(ts);
    }
    out
}

/// The parts of the room a keyframe request touches; split out so callers can hold
/// borrows of the subscriber map at the same time.
struct Sink<'a> {
    config: &'a ForwardConfig,
    out: &'a mut VecDeque<Output>,
    stats: &'a mut ForwardStats,
    pool: &'a mut BufferPool,
}

impl Sink<'_> {
    /// Ask a publisher track for a keyframe, at most once per `pli_min_interval`.
    /// Audio has no keyframes; an unready publisher or unlearned SSRC has nothing to
    /// address (and its first packets will start with a keyframe anyway).
    fn request_keyframe(&mut self, publishers: &mut IdMap<Publisher>, key: TrackKey, now: Instant) {
        let Some(publisher) = publishers.get_mut(&key.publisher) else {
            return;
        };
        if !publisher.ready {
            return;
        }
        let Some(track) = publisher.tracks.get_mut(key.index) else {
            return;
        };
        let Some(ssrc) = track.ssrc else { return };
        if track.kind != MediaKind::Video {
            return;
        }
        if let Some(last) = track.last_keyframe_request {
            if now.saturating_duration_since(last) < self.config.pli_min_interval {
                self.stats.plis_rate_limited += 1;
                return;
            }
        }
        track.last_keyframe_request = Some(now);
        let mut packet = self.pool.take();
        if track.fir_only {
            track.fir_seq = track.fir_seq.wrapping_add(1);
            rtcp::write_fir_into(
                &mut packet,
                self.config.sender_ssrc,
                &[FirEntry {
                    ssrc,
                    seq_nr: track.fir_seq,
                }],
            );
        } else {
            rtcp::write_pli_into(&mut packet, self.config.sender_ssrc, ssrc);
        }
        self.out.push_back(Output::Rtcp {
            to: key.publisher,
            packet,
        });
        self.stats.plis_sent += 1;
    }
}

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
}

impl RoomCore {
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
        let capacity = self.config.rtx_buffer_packets;
        let tracks = tracks
            .into_iter()
            .map(|t| Track {
                rtx: RtxBuffer::new(
                    capacity,
                    match t.kind {
                        MediaKind::Video => VIDEO_ENTRY_RESERVE,
                        MediaKind::Audio => AUDIO_ENTRY_RESERVE,
                    },
                ),
                kind: t.kind,
                fir_only: fir_only(&t.codec),
                codec: t.codec,
                ssrc: t.ssrc,
                bound: Vec::new(),
                recv: ReceiveStats::default(),
                last_sr: None,
                last_keyframe_request: None,
                fir_seq: 0,
            })
            .collect();
        self.publishers.insert(
            id,
            Publisher {
                tracks,
                ready: false,
            },
        );
        self.publisher_order.push(id);
        if self.next_rr.is_none() {
            self.next_rr = Some(now + self.config.rr_interval);
        }
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
            .map(|s| Slot {
                kind: s.kind,
                out_ssrc: s.out_ssrc,
                codec: s.codec,
                binding: None,
                last_out: None,
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
            },
        );
        self.subscriber_order.push(id);
        self.bind_unbound(id, now);
    }

    /// Bind every unbound slot of `sub` to the earliest-joined eligible publisher's
    /// compatible track. A subscriber's slots take distinct tracks, so two video slots
    /// show two publishers rather than one twice.
    fn bind_unbound(&mut self, sub_id: MemberId, now: Instant) {
        let Self {
            config,
            publishers,
            publisher_order: order,
            subscribers,
            out,
            stats,
            pool,
            ..
        } = self;
        let mut sink = Sink {
            config,
            out,
            stats,
            pool,
        };
        let Some(sub) = subscribers.get_mut(&sub_id) else {
            return;
        };
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
            let Some(track) = publishers
                .get_mut(&key.publisher)
                .and_then(|p| p.tracks.get_mut(key.index))
            else {
                continue;
            };
            track.bound.push(SlotRef {
                subscriber: sub_id,
                slot: slot_index,
            });
            sub.slots[slot_index].binding = Some(Binding {
                track: key,
                offsets: None,
            });
            if sub.ready {
                sink.request_keyframe(publishers, key, now);
            }
        }
    }

    /// The member's SRTP is ready: from now on it receives. A subscriber's bound tracks
    /// get a keyframe request so its decoder can start.
    pub fn set_ready(&mut self, id: MemberId, now: Instant) {
        if let Some(p) = self.publishers.get_mut(&id) {
            p.ready = true;
        }
        let Self {
            config,
            publishers,
            subscribers,
            out,
            stats,
            pool,
            ..
        } = self;
        let mut sink = Sink {
            config,
            out,
            stats,
            pool,
        };
        let Some(sub) = subscribers.get_mut(&id) else {
            return;
        };
        if sub.ready {
            return;
        }
        sub.ready = true;
        for slot in &sub.slots {
            if let Some(b) = slot.binding {
                sink.request_keyframe(publishers, b.track, now);
            }
        }
    }

    pub fn remove_member(&mut self, id: MemberId, now: Instant) {
        self.remove_subscriber(id);
        self.remove_publisher(id, now);
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
    /// (unknown SSRC, unexpected PT) return `Ok` and are counted.
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
        let ssrc = header.ssrc();
        let pt = header.payload_type();
        let index = match publisher.tracks.iter().position(|t| t.ssrc == Some(ssrc)) {
            Some(i) => i,
            None => match publisher
                .tracks
                .iter()
                .position(|t| t.ssrc.is_none() && t.codec.payload_type == pt)
            {
                Some(i) => {
                    publisher.tracks[i].ssrc = Some(ssrc);
                    i
                }
                None => {
                    self.stats.rtp_unknown_ssrc += 1;
                    return Ok(());
                }
            },
        };
        let track = &mut publisher.tracks[index];
        if pt != track.codec.payload_type {
            self.stats.rtp_payload_type_mismatch += 1;
            return Ok(());
        }
        let seq = header.sequence_number();
        let ts = header.timestamp();
        track.recv.update(seq, ts, track.codec.clock_rate, now);
        let stored_at = track.rtx.insert(seq, packet);

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
            let Some(off) = slot.offsets_for(seq, ts, stored_at, now) else {
                self.stats.rtp_dropped_before_bind += 1;
                continue;
            };
            let out_seq = seq.wrapping_add(off.seq);
            let out_ts = ts.wrapping_add(off.ts);
            let out = rewritten(
                &mut self.pool,
                packet,
                slot.out_ssrc,
                slot.codec.payload_type,
                out_seq,
                out_ts,
            );
            slot.note_sent(out_seq, out_ts, now);
            self.out.push_back(Output::Rtp {
                to: r.subscriber,
                packet: out,
            });
            self.stats.rtp_forwarded += 1;
        }
        Ok(())
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
                // RR, SDES, BYE, REMB, TWCC, APP, and feedback from the wrong role:
                // consumed. Subscribers' reports describe our streams, not the
                // publishers', so relaying them would mislead the publishers' estimators.
                _ => {}
            }
        }
        Ok(())
    }

    fn on_keyframe_request(&mut self, from: MemberId, media_ssrc: u32, now: Instant) {
        let Self {
            config,
            publishers,
            subscribers,
            out,
            stats,
            pool,
            ..
        } = self;
        let mut sink = Sink {
            config,
            out,
            stats,
            pool,
        };
        let Some(sub) = subscribers.get(&from) else {
            return;
        };
        let Some(slot) = sub.slots.iter().find(|s| s.out_ssrc == media_ssrc) else {
            sink.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        // An unbound slot has no source to ask; nothing to count as a drop beyond the
        // request itself, which `plis_received`/`firs_received` already saw.
        if let Some(b) = slot.binding {
            sink.request_keyframe(publishers, b.track, now);
        }
    }

    /// Answer a subscriber's NACK from the bound track's buffer, in the subscriber's
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
        let Some(slot) = sub.slots.iter().find(|s| s.out_ssrc == nack.media_ssrc()) else {
            self.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        let source = slot.binding.and_then(|b| {
            let off = b.offsets?;
            let track = self
                .publishers
                .get(&b.track.publisher)?
                .tracks
                .get(b.track.index)?;
            Some((off, track))
        });
        let Some((off, track)) = source.filter(|_| sub.ready) else {
            self.stats.nack_misses += nack.lost_seqs().count() as u64;
            return;
        };
        for out_seq in nack.lost_seqs() {
            let seq = out_seq.wrapping_sub(off.seq);
            // Only packets this binding forwarded: earlier ones belong to a different
            // stream position (or were never sent to this subscriber).
            let hit = track
                .rtx
                .get(seq)
                .filter(|s| s.index >= off.first_index && !off.predates(seq, s.index));
            let Some(stored) = hit else {
                self.stats.nack_misses += 1;
                continue;
            };
            if sub.rtx_in_window >= RTX_PER_WINDOW {
                self.stats.nack_misses += 1;
                continue;
            }
            sub.rtx_in_window += 1;
            let Ok(h) = RtpHeader::parse(stored.data) else {
                self.stats.nack_misses += 1;
                continue;
            };
            let packet = rewritten(
                &mut self.pool,
                stored.data,
                slot.out_ssrc,
                slot.codec.payload_type,
                out_seq,
                h.timestamp().wrapping_add(off.ts),
            );
            self.out.push_back(Output::Rtp { to: from, packet });
            self.stats.retransmissions += 1;
        }
    }

    fn on_sender_report(&mut self, from: MemberId, sr: &SenderReport<'_>, now: Instant) {
        let Some(publisher) = self.publishers.get_mut(&from) else {
            return;
        };
        let ssrc = sr.sender_ssrc();
        let Some(track) = publisher.tracks.iter_mut().find(|t| t.ssrc == Some(ssrc)) else {
            self.stats.rtcp_unknown_ssrc += 1;
            return;
        };
        track.last_sr = Some((sr.sender_info().ntp_middle(), now));
        for r in &track.bound {
            let Some(sub) = self.subscribers.get(&r.subscriber) else {
                continue;
            };
            let Some(slot) = sub.slots.get(r.slot).filter(|_| sub.ready) else {
                continue;
            };
            // Before the first forwarded packet the timestamp offset is unknown, and an
            // SR with the wrong mapping would desync audio and video.
            let Some(off) = slot.binding.and_then(|b| b.offsets) else {
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

    /// Send due receiver reports.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_rr else { return };
        if now < due {
            return;
        }
        self.next_rr = Some(now + self.config.rr_interval);
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
                    .filter(|t| t.recv.has_new())
                    .filter_map(|t| {
                        let ssrc = t.ssrc?;
                        Some(t.recv.report(ssrc, t.last_sr, now))
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

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Next receiver-report time while any publisher exists.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_rr
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

    /// The publisher track feeding a subscriber's slot, as (publisher, track SSRC if
    /// known): for diagnostics and the control plane.
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
        let key = slot.binding?.track;
        let track = self.publishers.get(&key.publisher)?.tracks.get(key.index)?;
        Some((key.publisher, track.ssrc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(name: &str, pt: u8, fmtp: Option<&str>) -> Codec {
        Codec {
            payload_type: pt,
            name: name.into(),
            clock_rate: 90_000,
            channels: None,
            fmtp: fmtp.map(Into::into),
            rtcp_fb: vec![],
        }
    }

    #[test]
    fn fir_only_detection() {
        let mut c = codec("VP8", 96, None);
        c.rtcp_fb = vec!["ccm fir".into(), "nack".into()];
        assert!(fir_only(&c));
        c.rtcp_fb.push("nack pli".into());
        assert!(!fir_only(&c));
    }

    #[test]
    fn timestamp_step_is_at_least_one_frame() {
        assert_eq!(
            timestamp_step(MediaKind::Video, 90_000, Duration::ZERO),
            3000
        );
        assert_eq!(
            timestamp_step(MediaKind::Audio, 48_000, Duration::ZERO),
            960
        );
        assert_eq!(
            timestamp_step(MediaKind::Video, 90_000, Duration::from_secs(2)),
            180_000
        );
    }
}
