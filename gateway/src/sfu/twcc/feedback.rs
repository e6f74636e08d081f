//! The transport-wide feedback packet (RTPFB FMT 15,
//! draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1): a bounds-checked view for
//! parsing and a writer that encodes status chunks as compactly as libwebrtc does.
//!
//! Times on the wire: the reference time counts 64 ms units (24 bits, wrapping), each
//! receive delta 250 µs units relative to the previous received packet (the first one
//! relative to the reference time). A delta of 0..=255 ticks travels in one byte, anything
//! else (negative after reordering, or over 63.75 ms) in two signed bytes.

use super::super::rtcp::{FMT_TRANSPORT_CC, PT_RTPFB};

/// One receive-delta tick, in microseconds.
pub const DELTA_TICK_US: i64 = 250;
/// One reference-time tick, in microseconds.
pub const REFERENCE_TICK_US: i64 = 64_000;
/// The reference time is 24 bits wide and wraps every 2^24 ticks (about 12.4 days).
pub const REFERENCE_TIME_MASK: u32 = 0x00ff_ffff;
/// The smallest feedback packet the writer produces: common header, the fixed fields,
/// one chunk and one small delta, padded to a word.
pub const MIN_PACKET_LEN: usize = 24;

/// SSRCs, base seq, status count, reference time and fb pkt count.
const FIXED_LEN: usize = 16;
const HEADER_LEN: usize = 4;
const CHUNK_LEN: usize = 2;
/// The common header's 16-bit length counts words after the first one.
const MAX_PACKET_LEN: usize = (u16::MAX as usize + 1) * 4;

const RUN_LENGTH_MAX: usize = 0x1fff;
const ONE_BIT_CAPACITY: usize = 14;
const TWO_BIT_CAPACITY: usize = 7;

/// Wire symbols of the packet status chunks; 3 is reserved.
const SYMBOL_NOT_RECEIVED: u8 = 0;
const SYMBOL_SMALL_DELTA: u8 = 1;
const SYMBOL_LARGE_DELTA: u8 = 2;
const SYMBOL_RESERVED: u8 = 3;

/// Why an FCI is not a valid transport-wide feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("{len} bytes, the fixed part needs {FIXED_LEN}")]
    TooShort { len: usize },
    #[error("status chunks for {count} packets run past the end of the packet")]
    ChunksTruncated { count: u16 },
    #[error("packet {index} has the reserved status symbol 3")]
    ReservedSymbol { index: u16 },
}

/// Why [`write_feedback`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("no packet statuses to report")]
    Empty,
    #[error("{available} bytes of room, the first status needs {needed}")]
    NoRoom { available: usize, needed: usize },
}

/// What the feedback says about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketStatus {
    NotReceived,
    /// Arrived `delta_ticks` × 250 µs after the previous received packet of this feedback
    /// (the first one: after the reference time).
    Received {
        delta_ticks: i16,
    },
    /// Arrived, but the feedback carries no receive deltas at all (libwebrtc's
    /// timestamp-less form: the bytes after the chunks are too few to hold them).
    ReceivedUntimed,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// How many symbols a chunk holds (before truncation to the status count).
fn chunk_capacity(chunk: u16) -> usize {
    match chunk >> 14 {
        0 | 1 => usize::from(chunk) & RUN_LENGTH_MAX,
        2 => ONE_BIT_CAPACITY,
        _ => TWO_BIT_CAPACITY,
    }
}

fn chunk_symbol(chunk: u16, i: usize) -> u8 {
    match chunk >> 14 {
        0 | 1 => ((chunk >> 13) & 0b11) as u8,
        2 => ((chunk >> (ONE_BIT_CAPACITY - 1 - i)) & 1) as u8,
        _ => ((chunk >> (2 * (TWO_BIT_CAPACITY - 1 - i))) & 0b11) as u8,
    }
}

/// A transport-wide feedback packet. `body` is the RTCP packet after its 4-byte common
/// header, padding removed; every bound is checked by [`Self::parse`], so the accessors
/// afterwards cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct TransportFeedback<'a> {
    body: &'a [u8],
    deltas_at: usize,
    has_timestamps: bool,
}

impl<'a> TransportFeedback<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, FeedbackError> {
        if body.len() < FIXED_LEN {
            return Err(FeedbackError::TooShort { len: body.len() });
        }
        let count = be16(body, 10).unwrap_or(0);
        let mut covered = 0usize;
        let mut at = FIXED_LEN;
        let mut delta_bytes = 0usize;
        while covered < usize::from(count) {
            let chunk = be16(body, at).ok_or(FeedbackError::ChunksTruncated { count })?;
            at += CHUNK_LEN;
            // The last chunk may describe more packets than remain; libwebrtc ignores the
            // excess, and a captured Chrome packet below relies on it.
            let n = chunk_capacity(chunk).min(usize::from(count) - covered);
            for i in 0..n.min(ONE_BIT_CAPACITY) {
                if chunk_symbol(chunk, i) == SYMBOL_RESERVED {
                    return Err(FeedbackError::ReservedSymbol {
                        index: (covered + i) as u16,
                    });
                }
            }
            delta_bytes += if chunk >> 14 == 0 {
                n * usize::from(chunk_symbol(chunk, 0))
            } else {
                (0..n).map(|i| usize::from(chunk_symbol(chunk, i))).sum()
            };
            covered += n;
        }
        Ok(Self {
            body,
            deltas_at: at,
            // libwebrtc's rule for telling timestamp-less feedback apart: deltas are
            // present exactly when the bytes after the chunks can hold all of them.
            has_timestamps: body.len() - at >= delta_bytes,
        })
    }

    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0).unwrap_or(0)
    }

    pub fn media_ssrc(&self) -> u32 {
        be32(self.body, 4).unwrap_or(0)
    }

    pub fn base_seq(&self) -> u16 {
        be16(self.body, 8).unwrap_or(0)
    }

    pub fn status_count(&self) -> u16 {
        be16(self.body, 10).unwrap_or(0)
    }

    /// 24-bit reference time in 64 ms units, on the feedback sender's clock.
    pub fn reference_time(&self) -> u32 {
        be32(self.body, 12).unwrap_or(0) >> 8
    }

    /// The feedback sender's 8-bit counter of feedback packets.
    pub fn fb_pkt_count(&self) -> u8 {
        self.body.get(15).copied().unwrap_or(0)
    }

    /// False for libwebrtc's timestamp-less feedback: received packets then come as
    /// [`PacketStatus::ReceivedUntimed`].
    pub fn has_timestamps(&self) -> bool {
        self.has_timestamps
    }

    /// Every packet the feedback covers, in sequence order from the base.
    pub fn packets(&self) -> Packets<'a> {
        Packets {
            body: self.body,
            base_seq: self.base_seq(),
            count: self.status_count(),
            emitted: 0,
            chunk_at: FIXED_LEN,
            chunk: 0,
            chunk_left: 0,
            chunk_pos: 0,
            delta_at: self.deltas_at,
            has_timestamps: self.has_timestamps,
        }
    }
}

/// Iterator over `(sequence number, status)` of a [`TransportFeedback`].
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    body: &'a [u8],
    base_seq: u16,
    count: u16,
    emitted: u16,
    chunk_at: usize,
    chunk: u16,
    chunk_left: usize,
    chunk_pos: usize,
    delta_at: usize,
    has_timestamps: bool,
}

impl Iterator for Packets<'_> {
    type Item = (u16, PacketStatus);

    fn next(&mut self) -> Option<Self::Item> {
        if self.emitted >= self.count {
            return None;
        }
        // Zero-length runs are legal and hold nothing; the body bounds the loop.
        while self.chunk_left == 0 {
            self.chunk = be16(self.body, self.chunk_at)?;
            self.chunk_at += CHUNK_LEN;
            self.chunk_left = chunk_capacity(self.chunk);
            self.chunk_pos = 0;
        }
        let symbol = chunk_symbol(self.chunk, self.chunk_pos);
        self.chunk_pos += 1;
        self.chunk_left -= 1;
        let status = match symbol {
            SYMBOL_NOT_RECEIVED => PacketStatus::NotReceived,
            SYMBOL_SMALL_DELTA | SYMBOL_LARGE_DELTA if !self.has_timestamps => {
                PacketStatus::ReceivedUntimed
            }
            SYMBOL_SMALL_DELTA => {
                let b = *self.body.get(self.delta_at)?;
                self.delta_at += 1;
                PacketStatus::Received {
                    delta_ticks: i16::from(b),
                }
            }
            SYMBOL_LARGE_DELTA => {
                let v = be16(self.body, self.delta_at)?;
                self.delta_at += 2;
                PacketStatus::Received {
                    delta_ticks: v as i16,
                }
            }
            _ => return None,
        };
        let seq = self.base_seq.wrapping_add(self.emitted);
        self.emitted += 1;
        Some((seq, status))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.count - self.emitted.min(self.count));
        (0, Some(left))
    }
}

/// The fixed fields of a feedback packet the writer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackHeader {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub base_seq: u16,
    /// 64 ms units; only the low 24 bits are sent.
    pub reference_time: u32,
    pub fb_pkt_count: u8,
}

fn symbol_of(status: Option<i16>) -> u8 {
    match status {
        None => SYMBOL_NOT_RECEIVED,
        Some(0..=255) => SYMBOL_SMALL_DELTA,
        Some(_) => SYMBOL_LARGE_DELTA,
    }
}

/// Chunk encoder over a stream of symbols: it holds the symbols not yet committed to a
/// chunk and emits a chunk only when the next symbol no longer fits any chunk kind that
/// could hold all of them. Long uniform stretches become run-length chunks, mixed ones
/// 1-bit vectors, and 2-bit vectors only where a large delta forces them.
#[derive(Debug, Clone, Copy)]
struct ChunkEncoder {
    /// The first symbols held; past 14 the encoder only holds uniform runs, so
    /// `symbols[0]` stands for all of them.
    symbols: [u8; ONE_BIT_CAPACITY],
    len: usize,
    all_same: bool,
    has_large: bool,
}

impl ChunkEncoder {
    fn new() -> Self {
        Self {
            symbols: [0; ONE_BIT_CAPACITY],
            len: 0,
            all_same: true,
            has_large: false,
        }
    }

    fn can_add(&self, symbol: u8) -> bool {
        self.len < TWO_BIT_CAPACITY
            || (self.len < ONE_BIT_CAPACITY && !self.has_large && symbol != SYMBOL_LARGE_DELTA)
            || (self.len < RUN_LENGTH_MAX && self.all_same && self.symbols[0] == symbol)
    }

    fn add(&mut self, symbol: u8) {
        if self.len < ONE_BIT_CAPACITY {
            self.symbols[self.len] = symbol;
        }
        self.all_same = self.all_same && (self.len == 0 || self.symbols[0] == symbol);
        self.has_large = self.has_large || symbol == SYMBOL_LARGE_DELTA;
        self.len += 1;
    }

    fn run_length(&self) -> u16 {
        (u16::from(self.symbols[0]) << 13) | self.len as u16
    }

    fn one_bit(&self) -> u16 {
        let mut chunk = 0x8000;
        for (i, &s) in self.symbols.iter().take(self.len).enumerate() {
            chunk |= u16::from(s & 1) << (ONE_BIT_CAPACITY - 1 - i);
        }
        chunk
    }

    fn two_bit(&self, n: usize) -> u16 {
        let mut chunk = 0xc000;
        for (i, &s) in self.symbols.iter().take(n).enumerate() {
            chunk |= u16::from(s) << (2 * (TWO_BIT_CAPACITY - 1 - i));
        }
        chunk
    }

    /// Commits the held symbols (or the first seven) to a chunk; called only when the
    /// next symbol cannot be added.
    fn emit(&mut self) -> u16 {
        if self.all_same {
            let chunk = self.run_length();
            *self = Self::new();
            return chunk;
        }
        if self.len == ONE_BIT_CAPACITY {
            let chunk = self.one_bit();
            *self = Self::new();
            return chunk;
        }
        // Mixed and 7..14 long, and a large delta is coming: seven go out as a 2-bit
        // vector, the rest (small deltas and losses only) stay held.
        let chunk = self.two_bit(TWO_BIT_CAPACITY);
        let held = self.symbols;
        let rest = self.len.saturating_sub(TWO_BIT_CAPACITY);
        *self = Self::new();
        for &s in held.iter().skip(TWO_BIT_CAPACITY).take(rest) {
            self.add(s);
        }
        chunk
    }

    /// Adds `symbol`, returning the chunk committed to make room for it, if any.
    fn push(&mut self, symbol: u8) -> Option<u16> {
        let emitted = if self.can_add(symbol) {
            None
        } else {
            Some(self.emit())
        };
        self.add(symbol);
        emitted
    }

    /// The chunk for whatever is still held.
    fn finish(&self) -> Option<u16> {
        match self.len {
            0 => None,
            _ if self.all_same => Some(self.run_length()),
            n if n <= TWO_BIT_CAPACITY => Some(self.two_bit(n)),
            _ => Some(self.one_bit()),
        }
    }
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Appends one feedback packet for `statuses` (`None`: not received; `Some(ticks)`: the
/// receive delta in 250 µs ticks) to `out`, as many of them as fit in
/// `min(max_len, out's spare capacity)` bytes, so `out` is never reallocated. Returns how
/// many statuses went in (the packet status count); the caller reports the rest in the
/// next packet, with `base_seq` advanced by that many.
pub fn write_feedback<I>(
    out: &mut Vec<u8>,
    max_len: usize,
    header: &FeedbackHeader,
    statuses: I,
) -> Result<u16, WriteError>
where
    I: IntoIterator<Item = Option<i16>>,
    I::IntoIter: Clone,
{
    let statuses = statuses.into_iter();
    let budget = max_len.min(out.capacity() - out.len()).min(MAX_PACKET_LEN);

    // Pass 1: how many statuses fit, simulating the encoder exactly as pass 2 runs it.
    let mut encoder = ChunkEncoder::new();
    let mut chunks = 0usize;
    let mut delta_bytes = 0usize;
    let mut count = 0u16;
    let mut first_needed = None;
    for status in statuses.clone() {
        if count == u16::MAX {
            break;
        }
        let symbol = symbol_of(status);
        let mut next = encoder;
        let mut next_chunks = chunks;
        if !next.can_add(symbol) {
            next.emit();
            next_chunks += 1;
        }
        next.add(symbol);
        let next_deltas = delta_bytes + usize::from(symbol);
        let len = padded(HEADER_LEN + FIXED_LEN + CHUNK_LEN * (next_chunks + 1) + next_deltas);
        first_needed.get_or_insert(len);
        if len > budget {
            break;
        }
        encoder = next;
        chunks = next_chunks;
        delta_bytes = next_deltas;
        count += 1;
    }
    if count == 0 {
        return Err(match first_needed {
            None => WriteError::Empty,
            Some(needed) => WriteError::NoRoom {
                available: budget,
                needed,
            },
        });
    }

    // Pass 2: header and fixed fields; the length is patched once the size is known.
    let start = out.len();
    out.extend_from_slice(&[0x80 | FMT_TRANSPORT_CC, PT_RTPFB, 0, 0]);
    out.extend_from_slice(&header.sender_ssrc.to_be_bytes());
    out.extend_from_slice(&header.media_ssrc.to_be_bytes());
    out.extend_from_slice(&header.base_seq.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    let reference = (header.reference_time & REFERENCE_TIME_MASK).to_be_bytes();
    out.extend_from_slice(&[
        reference[1],
        reference[2],
        reference[3],
        header.fb_pkt_count,
    ]);

    let mut encoder = ChunkEncoder::new();
    for status in statuses.clone().take(usize::from(count)) {
        if let Some(chunk) = encoder.push(symbol_of(status)) {
            out.extend_from_slice(&chunk.to_be_bytes());
        }
    }
    if let Some(chunk) = encoder.finish() {
        out.extend_from_slice(&chunk.to_be_bytes());
    }

    // Pass 3: receive deltas in the same order.
    for delta in statuses.take(usize::from(count)).flatten() {
        match u8::try_from(delta) {
            Ok(small) => out.push(small),
            Err(_) => out.extend_from_slice(&delta.to_be_bytes()),
        }
    }

    let unpadded = out.len() - start;
    let total = padded(unpadded);
    let padding = total - unpadded;
    if padding > 0 {
        out.resize(start + total - 1, 0);
        out.push(padding as u8);
        out[start] |= 0x20;
    }
    let words = u16::try_from(total / 4 - 1).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::rtcp::{parse_compound, RtcpPacket};

    use PacketStatus::{NotReceived as Lost, Received};

    fn rx(delta_ticks: i16) -> PacketStatus {
        Received { delta_ticks }
    }

    /// Parses a whole RTCP packet the way the SFU does: compound framing strips the
    /// header and padding first.
    fn parse(packet: &[u8]) -> TransportFeedback<'_> {
        let mut it = parse_compound(packet);
        match it.next() {
            Some(Ok(RtcpPacket::TransportFeedback(fb))) => {
                assert!(it.next().is_none());
                fb
            }
            other => panic!("expected transport feedback, got {other:?}"),
        }
    }

    fn statuses(fb: &TransportFeedback<'_>) -> Vec<(u16, PacketStatus)> {
        fb.packets().collect()
    }

    /// The statuses as the writer takes them.
    fn as_input(list: &[(u16, PacketStatus)]) -> Vec<Option<i16>> {
        list.iter()
            .map(|(_, s)| match s {
                Received { delta_ticks } => Some(*delta_ticks),
                _ => None,
            })
            .collect()
    }

    fn header_of(fb: &TransportFeedback<'_>) -> FeedbackHeader {
        FeedbackHeader {
            sender_ssrc: fb.sender_ssrc(),
            media_ssrc: fb.media_ssrc(),
            base_seq: fb.base_seq(),
            reference_time: fb.reference_time(),
            fb_pkt_count: fb.fb_pkt_count(),
        }
    }

    fn write(header: &FeedbackHeader, input: &[Option<i16>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2048);
        let n = write_feedback(&mut out, usize::MAX, header, input.iter().copied())
            .expect("room for everything");
        assert_eq!(usize::from(n), input.len());
        out
    }

    // Captured byte vectors from pion/rtcp, transport_layer_cc_test.go
    // (TestTransportLayerCC_Unmarshal and TestTransportLayerCC_Marshal). Their SSRCs and
    // reference times come from browser sessions; the bytes are the vectors, the
    // expectations below are decoded by hand from the draft.

    /// pion Unmarshal "example1" (= Marshal "example1"): one packet, run-length chunk.
    const PION_ONE_PACKET: [u8; 24] = [
        0xaf, 0xcd, 0x00, 0x05, 0xfa, 0x17, 0xfa, 0x17, 0x43, 0x03, 0x2f, 0xa0, 0x00, 0x99, 0x00,
        0x01, 0x3d, 0xe8, 0x02, 0x17, 0x20, 0x01, 0x94, 0x01,
    ];
    /// pion Unmarshal/Marshal "example4": run of seven small deltas, 3 bytes of padding.
    const PION_SEVEN_SMALL: [u8; 32] = [
        0xaf, 0xcd, 0x00, 0x07, 0xfa, 0x17, 0xfa, 0x17, 0x19, 0x3d, 0xd8, 0xbb, 0x00, 0x04, 0x00,
        0x07, 0x10, 0x63, 0x6e, 0x01, 0x20, 0x07, 0x4c, 0x24, 0x24, 0x10, 0x0c, 0x0c, 0x10, 0x00,
        0x00, 0x03,
    ];
    /// pion Marshal "example5": a full 1-bit status vector.
    const PION_ONE_BIT: [u8; 28] = [
        0xaf, 0xcd, 0x00, 0x06, 0xfa, 0x17, 0xfa, 0x17, 0x19, 0x3d, 0xd8, 0xbb, 0x00, 0x01, 0x00,
        0x0e, 0x10, 0x63, 0x6d, 0x00, 0xba, 0x00, 0x10, 0x0c, 0x0c, 0x10, 0x00, 0x02,
    ];
    /// pion Marshal "example6": a partly used 1-bit vector, base seq above 0x8000.
    const PION_ONE_BIT_PARTIAL: [u8; 32] = [
        0xaf, 0xcd, 0x00, 0x07, 0xfa, 0x17, 0xfa, 0x17, 0x43, 0x03, 0x2f, 0xa0, 0x9c, 0x14, 0x00,
        0x0c, 0x75, 0x84, 0x20, 0x00, 0xbe, 0xc0, 0xc1, 0x3f, 0x3b, 0x3f, 0x53, 0x90, 0x3b, 0x00,
        0x00, 0x03,
    ];
    /// pion Unmarshal "example6": 2-bit vector with a large delta, then a run-length
    /// chunk that describes 48 losses where only 2 remain of the status count.
    const PION_TWO_BIT_OVERLONG_RUN: [u8; 32] = [
        0xaf, 0xcd, 0x00, 0x07, 0x9b, 0x74, 0xf6, 0x1f, 0x93, 0x71, 0xdc, 0xbc, 0x85, 0x3c, 0x00,
        0x09, 0x63, 0xf9, 0x16, 0xb3, 0xd5, 0x52, 0x00, 0x30, 0x9b, 0xaa, 0x6a, 0xaa, 0x7b, 0x01,
        0x09, 0x01,
    ];
    /// pion Unmarshal "example7": status count 0, no chunks.
    const PION_EMPTY: [u8; 20] = [
        0x8f, 0xcd, 0x00, 0x04, 0x9a, 0xcb, 0x04, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    /// pion Unmarshal "example2": its second 2-bit vector uses symbol 3, reserved in -01.
    const PION_RESERVED_SYMBOL: [u8; 28] = [
        0xaf, 0xcd, 0x00, 0x06, 0xfa, 0x17, 0xfa, 0x17, 0x19, 0x3d, 0xd8, 0xbb, 0x01, 0x74, 0x00,
        0x0e, 0x45, 0xb1, 0x5a, 0x40, 0xd8, 0x00, 0xf0, 0xff, 0xd0, 0x00, 0x00, 0x03,
    ];
    /// pion Unmarshal "example8": three small deltas announced, one present.
    const PION_DELTAS_MISSING: [u8; 24] = [
        0xaf, 0xcd, 0x00, 0x05, 0xfa, 0x17, 0xfa, 0x17, 0x43, 0x03, 0x2f, 0xa0, 0x00, 0x99, 0x00,
        0x03, 0x3d, 0xe8, 0x02, 0x17, 0x20, 0x03, 0x94, 0x01,
    ];

    #[test]
    fn twcc_parses_pion_one_packet() {
        let fb = parse(&PION_ONE_PACKET);
        assert_eq!(fb.sender_ssrc(), 4_195_875_351);
        assert_eq!(fb.media_ssrc(), 1_124_282_272);
        assert_eq!(fb.base_seq(), 153);
        assert_eq!(fb.status_count(), 1);
        assert_eq!(fb.reference_time(), 4_057_090);
        assert_eq!(fb.fb_pkt_count(), 23);
        assert!(fb.has_timestamps());
        // 0x94 = 148 ticks = 37 ms.
        assert_eq!(statuses(&fb), vec![(153, rx(148))]);
    }

    #[test]
    fn twcc_parses_pion_run_and_vectors() {
        let fb = parse(&PION_SEVEN_SMALL);
        assert_eq!(
            (fb.base_seq(), fb.reference_time(), fb.fb_pkt_count()),
            (4, 1_074_030, 1)
        );
        let ticks: Vec<_> = [76, 36, 36, 16, 12, 12, 16].map(rx).into();
        let want: Vec<_> = (4u16..).zip(ticks).collect();
        assert_eq!(statuses(&fb), want);

        let fb = parse(&PION_ONE_BIT);
        assert_eq!(
            (fb.base_seq(), fb.status_count(), fb.fb_pkt_count()),
            (1, 14, 0)
        );
        let mut want = vec![rx(16), rx(12), rx(12), Lost, rx(16)];
        want.resize(14, Lost);
        assert_eq!(
            statuses(&fb)
                .into_iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>(),
            want
        );

        let fb = parse(&PION_ONE_BIT_PARTIAL);
        assert_eq!((fb.base_seq(), fb.reference_time()), (39_956, 7_701_536));
        let got = statuses(&fb);
        assert_eq!(got.len(), 12);
        assert_eq!(got[0], (39_956, rx(193)));
        assert_eq!(got[5], (39_961, Lost));
        assert_eq!(got[7], (39_963, rx(59)));
        assert_eq!(got[11], (39_967, Lost));
    }

    #[test]
    fn twcc_parses_pion_two_bit_vector_with_overlong_run() {
        let fb = parse(&PION_TWO_BIT_OVERLONG_RUN);
        assert_eq!(fb.sender_ssrc(), 2_608_133_663);
        assert_eq!(fb.media_ssrc(), 2_473_712_828);
        assert_eq!((fb.base_seq(), fb.status_count()), (34_108, 9));
        assert_eq!((fb.reference_time(), fb.fb_pkt_count()), (6_551_830, 179));
        let want = vec![
            (34_108, rx(155)),
            (34_109, rx(170)),
            (34_110, rx(106)),
            (34_111, rx(170)),
            (34_112, rx(123)),
            (34_113, Lost),
            // Large delta 0x0109: 265 ticks = 66.25 ms.
            (34_114, rx(265)),
            (34_115, Lost),
            (34_116, Lost),
        ];
        assert_eq!(statuses(&fb), want);
    }

    #[test]
    fn twcc_parses_pion_empty_and_rejects_reserved_symbol() {
        let fb = parse(&PION_EMPTY);
        assert_eq!(fb.sender_ssrc(), 2_596_996_162);
        assert_eq!(fb.status_count(), 0);
        assert_eq!(fb.packets().count(), 0);

        let body = &PION_RESERVED_SYMBOL[4..PION_RESERVED_SYMBOL.len() - 3];
        assert_eq!(
            TransportFeedback::parse(body).map(|_| ()),
            Err(FeedbackError::ReservedSymbol { index: 7 })
        );
    }

    #[test]
    fn twcc_too_few_delta_bytes_means_timestamp_less() {
        // libwebrtc reads deltas only when all of them fit after the chunks; otherwise
        // the packet is its timestamp-less form (pion calls this one too short).
        let fb = parse(&PION_DELTAS_MISSING);
        assert!(!fb.has_timestamps());
        let got: Vec<_> = fb.packets().map(|(_, s)| s).collect();
        assert_eq!(got, vec![PacketStatus::ReceivedUntimed; 3]);
    }

    #[test]
    fn twcc_writer_reproduces_pion_bytes() {
        for captured in [
            &PION_ONE_PACKET[..],
            &PION_SEVEN_SMALL[..],
            &PION_ONE_BIT[..],
            &PION_ONE_BIT_PARTIAL[..],
        ] {
            let fb = parse(captured);
            let written = write(&header_of(&fb), &as_input(&statuses(&fb)));
            assert_eq!(written, captured);
        }
    }

    #[test]
    fn twcc_writer_round_trips_the_overlong_run() {
        // The captured run of 48 is re-encoded as a run of 2; the packet says the same.
        let fb = parse(&PION_TWO_BIT_OVERLONG_RUN);
        let want = statuses(&fb);
        let written = write(&header_of(&fb), &as_input(&want));
        assert_eq!(written.len(), PION_TWO_BIT_OVERLONG_RUN.len());
        assert_eq!(&written[20..24], &[0xd5, 0x52, 0x00, 0x02]);
        assert_eq!(statuses(&parse(&written)), want);
    }

    #[test]
    fn twcc_chunk_examples_from_the_draft() {
        // draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1.3 and §3.1.4.
        assert_eq!(chunk_capacity(0x00dd), 221);
        assert_eq!(chunk_symbol(0x00dd, 0), SYMBOL_NOT_RECEIVED);
        let one_bit: Vec<_> = (0..14).map(|i| chunk_symbol(0x9f1c, i)).collect();
        assert_eq!(one_bit, [0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]);
        let two_bit: Vec<_> = (0..7).map(|i| chunk_symbol(0xcd50, i)).collect();
        assert_eq!(two_bit, [0, 3, 1, 1, 1, 0, 0]);
    }

    /// Feedback for `received` seqs (each a small delta unless listed in `large`), as the
    /// writer's input from the first seq to the last.
    fn input(received: &[u16], large: &[u16]) -> Vec<Option<i16>> {
        let first = received[0];
        let span = usize::from(received[received.len() - 1].wrapping_sub(first)) + 1;
        let mut v = vec![None; span];
        for &seq in received {
            let delta = if large.contains(&seq) { 300 } else { 4 };
            v[usize::from(seq.wrapping_sub(first))] = Some(delta);
        }
        v
    }

    fn written_len(input: &[Option<i16>]) -> usize {
        let header = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 0,
            reference_time: 0,
            fb_pkt_count: 0,
        };
        write(&header, input).len()
    }

    #[test]
    fn twcc_writer_is_as_compact_as_libwebrtc() {
        // Expected sizes from libwebrtc's transport_feedback_unittest.cc (20-byte header,
        // 2-byte chunks, 1- or 2-byte deltas, padded to words).
        assert_eq!(written_len(&input(&[1, 2, 7, 8, 9, 10, 13], &[])), 32);
        assert_eq!(written_len(&input(&[1, 2, 7, 8, 9, 10, 13, 14], &[])), 32);
        assert_eq!(
            written_len(&input(&[65533, 65534, 65535, 0, 1, 2], &[])),
            28
        );
        assert_eq!(written_len(&input(&[1, 2, 6, 7], &[1, 2, 6, 7])), 32);
        assert_eq!(written_len(&input(&[1, 2, 6, 7, 8], &[1, 2, 6, 7, 8])), 36);
        // MaxRle: 1-bit vector, a run of 8191 losses, final chunk: three chunks.
        assert_eq!(written_len(&input(&[0, 8191 + 14], &[])), 28);
        // MinRle: a run of 15 losses between two vectors.
        assert_eq!(written_len(&input(&[0, 29], &[])), 28);
        // OneToTwoBitVector and its simple split.
        assert_eq!(written_len(&input(&[0, 6], &[6])), 28);
        assert_eq!(written_len(&input(&[0, 7], &[7])), 28);
        // OneToTwoBitVectorSplit: 22 received, the ninth with a large delta.
        let seqs: Vec<u16> = (0..22).collect();
        assert_eq!(written_len(&input(&seqs, &[8])), 52);
    }

    /// Small deterministic generator: the tests need varied input, not randomness.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_input(rng: &mut XorShift, len: usize) -> Vec<Option<i16>> {
        (0..len)
            .map(|_| match rng.next() % 10 {
                0..=2 => None,
                3 => Some((rng.next() as i16) | 0x100),
                4 => Some(-((rng.next() % 200) as i16)),
                _ => Some((rng.next() % 256) as i16),
            })
            .collect()
    }

    #[test]
    fn twcc_round_trips_varied_statuses() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let len = 1 + (rng.next() % 400) as usize;
            let mut input = random_input(&mut rng, len);
            // Long runs of one kind, as after a burst loss or at a steady rate.
            if round % 3 == 0 {
                let at = (rng.next() as usize) % len;
                let run = (rng.next() % 9000) as usize;
                input.splice(at..at, std::iter::repeat_n(None, run));
            }
            let header = FeedbackHeader {
                sender_ssrc: rng.next() as u32,
                media_ssrc: rng.next() as u32,
                base_seq: rng.next() as u16,
                reference_time: rng.next() as u32,
                fb_pkt_count: rng.next() as u8,
            };
            let bytes = write(&header, &input);
            assert_eq!(bytes.len() % 4, 0);
            let fb = parse(&bytes);
            assert_eq!(
                header_of(&fb).reference_time,
                header.reference_time & REFERENCE_TIME_MASK
            );
            assert_eq!(fb.sender_ssrc(), header.sender_ssrc);
            assert_eq!(fb.fb_pkt_count(), header.fb_pkt_count);
            let got = statuses(&fb);
            assert_eq!(as_input(&got), input);
            let seqs: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
            let want: Vec<u16> = (0..input.len())
                .map(|i| header.base_seq.wrapping_add(i as u16))
                .collect();
            assert_eq!(seqs, want);
        }
    }

    #[test]
    fn twcc_writer_stays_in_the_callers_capacity() {
        let mut rng = XorShift(7);
        let input = random_input(&mut rng, 2000);
        let header = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 65_000,
            reference_time: 3,
            fb_pkt_count: 4,
        };
        let mut out = Vec::with_capacity(100);
        out.extend_from_slice(&[0xee; 8]);
        let cap = out.capacity();
        let n = write_feedback(&mut out, usize::MAX, &header, input.iter().copied())
            .expect("fits some");
        assert_eq!(out.capacity(), cap, "never reallocates");
        assert!(out.len() <= cap);
        assert!(usize::from(n) < input.len());
        assert_eq!(&out[..8], &[0xee; 8], "appends");
        let fb = parse(&out[8..]);
        assert_eq!(as_input(&statuses(&fb)), input[..usize::from(n)]);

        // The rest continues from where the first packet stopped.
        let mut next = Vec::with_capacity(4096);
        let header = FeedbackHeader {
            base_seq: header.base_seq.wrapping_add(n),
            ..header
        };
        let m = write_feedback(
            &mut next,
            600,
            &header,
            input[usize::from(n)..].iter().copied(),
        )
        .expect("fits some");
        assert!(next.len() <= 600);
        assert_eq!(parse(&next).base_seq(), 65_000u16.wrapping_add(n));
        assert!(usize::from(n + m) <= input.len());

        let mut tiny = Vec::with_capacity(MIN_PACKET_LEN - 1);
        assert_eq!(
            write_feedback(&mut tiny, usize::MAX, &header, [Some(1)]),
            Err(WriteError::NoRoom {
                available: MIN_PACKET_LEN - 1,
                needed: MIN_PACKET_LEN
            })
        );
        assert!(tiny.is_empty());
        let mut out = Vec::with_capacity(64);
        assert_eq!(
            write_feedback(&mut out, 64, &header, std::iter::empty()),
            Err(WriteError::Empty)
        );
    }

    #[test]
    fn twcc_extreme_deltas_round_trip() {
        let input = [
            Some(i16::MIN),
            Some(i16::MAX),
            Some(0),
            Some(255),
            Some(256),
            Some(-1),
        ];
        let header = FeedbackHeader {
            sender_ssrc: 0,
            media_ssrc: 0,
            base_seq: 65_535,
            reference_time: REFERENCE_TIME_MASK,
            fb_pkt_count: 255,
        };
        let bytes = write(&header, &input);
        // Large, large, small, small, large, large: one 2-bit vector, 10 delta bytes.
        assert_eq!(bytes.len(), padded(20 + 2 + 10));
        let fb = parse(&bytes);
        assert_eq!(fb.reference_time(), REFERENCE_TIME_MASK);
        assert_eq!(as_input(&statuses(&fb)), input);
        assert_eq!(statuses(&fb)[1].0, 0, "sequence wraps after 65535");
    }

    #[test]
    fn twcc_rejects_malformed_bodies() {
        assert_eq!(
            TransportFeedback::parse(&[0; 15]).map(|_| ()),
            Err(FeedbackError::TooShort { len: 15 })
        );
        // Status count 3, no chunk.
        let mut body = [0u8; 16];
        body[11] = 3;
        assert_eq!(
            TransportFeedback::parse(&body).map(|_| ()),
            Err(FeedbackError::ChunksTruncated { count: 3 })
        );
        // A run of 2 where 3 are announced, then nothing.
        let mut body = body.to_vec();
        body.extend_from_slice(&[0x20, 0x02]);
        assert_eq!(
            TransportFeedback::parse(&body).map(|_| ()),
            Err(FeedbackError::ChunksTruncated { count: 3 })
        );
        // Zero-length runs hold nothing and are skipped.
        let mut body = [0u8; 16].to_vec();
        body[11] = 1;
        body.extend_from_slice(&[0x00, 0x00, 0x20, 0x01, 9]);
        let fb = TransportFeedback::parse(&body).expect("valid");
        assert_eq!(fb.packets().collect::<Vec<_>>(), vec![(0, rx(9))]);
        // Run-length chunk of the reserved symbol.
        let mut body = [0u8; 16].to_vec();
        body[11] = 2;
        body.extend_from_slice(&[0x60, 0x02]);
        assert_eq!(
            TransportFeedback::parse(&body).map(|_| ()),
            Err(FeedbackError::ReservedSymbol { index: 0 })
        );
    }

    #[test]
    fn twcc_never_panics_on_corrupt_input() {
        let mut rng = XorShift(99);
        let input = random_input(&mut rng, 60);
        let header = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 3,
            reference_time: 4,
            fb_pkt_count: 5,
        };
        let bytes = write(&header, &input);
        let body = &bytes[4..];
        for n in 0..=body.len() {
            if let Ok(fb) = TransportFeedback::parse(&body[..n]) {
                let _ = fb.packets().count();
            }
        }
        for i in 0..body.len() {
            for v in [0x00, 0x01, 0x3f, 0x60, 0x80, 0xc0, 0xd5, 0xff] {
                let mut b = body.to_vec();
                b[i] = v;
                if let Ok(fb) = TransportFeedback::parse(&b) {
                    let n = fb.packets().count();
                    assert!(n <= usize::from(fb.status_count()));
                }
            }
        }
        for _ in 0..2000 {
            let len = (rng.next() % 64) as usize;
            let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Ok(fb) = TransportFeedback::parse(&b) {
                let _ = fb.packets().count();
            }
        }
    }
}
