//! RTCP (RFC 3550 §6, RFC 4585, RFC 5104): compound-packet iteration, typed views of the
//! packets the SFU acts on, and writers for the packets it sends.
//!
//! Transport-wide feedback has its own module ([`crate::sfu::twcc`]); this one frames it.
//!
//! Views borrow the datagram; every length is checked when the packet is parsed so the
//! accessors afterwards cannot go out of bounds.

use super::twcc::{FeedbackError, TransportFeedback};

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;

/// RTPFB FMT 1 (RFC 4585 §6.2.1).
pub const FMT_NACK: u8 = 1;
/// RTPFB FMT 15: transport-wide congestion-control feedback
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1).
pub const FMT_TRANSPORT_CC: u8 = 15;
/// PSFB FMT 1 (RFC 4585 §6.3.1).
pub const FMT_PLI: u8 = 1;
/// PSFB FMT 4 (RFC 5104 §4.3.1).
pub const FMT_FIR: u8 = 4;

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;
/// The 5-bit count field caps report blocks per SR/RR.
const MAX_REPORT_BLOCKS: usize = 31;

/// RFC 5761 §4 demultiplexing for rtcp-mux: RTCP packet types 192..=223 land in the byte
/// where RTP has marker + PT, and no dynamic RTP PT collides with them.
pub fn is_rtcp(packet: &[u8]) -> bool {
    matches!(packet.get(1), Some(192..=223))
}

/// Why a buffer is not a valid RTCP compound packet. `offset` is where the offending
/// packet starts inside the compound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("empty RTCP datagram")]
    Empty,
    #[error("RTCP packet at offset {offset}: {remaining} bytes left, a header needs 4")]
    TruncatedHeader { offset: usize, remaining: usize },
    #[error("RTCP packet at offset {offset}: version {version}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error(
        "RTCP packet at offset {offset}: length field says {declared} bytes, {remaining} remain"
    )]
    LengthOverrun {
        offset: usize,
        declared: usize,
        remaining: usize,
    },
    #[error("RTCP packet at offset {offset}: padding count {padding} does not fit in {len} bytes")]
    BadPadding {
        offset: usize,
        padding: u8,
        len: usize,
    },
    #[error("RTCP {kind} at offset {offset}: body is {len} bytes, needs {needed}")]
    BodyTooShort {
        offset: usize,
        kind: &'static str,
        len: usize,
        needed: usize,
    },
    #[error("RTCP {kind} at offset {offset}: {reason}")]
    Invalid {
        offset: usize,
        kind: &'static str,
        reason: &'static str,
    },
    #[error("RTCP transport-cc feedback at offset {offset}: {source}")]
    TransportFeedback {
        offset: usize,
        source: FeedbackError,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Sender info of an SR (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp_seconds: u32,
    pub ntp_fraction: u32,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

impl SenderInfo {
    /// The middle 32 bits of the NTP timestamp: what a receiver echoes as LSR.
    pub fn ntp_middle(&self) -> u32 {
        (self.ntp_seconds << 16) | (self.ntp_fraction >> 16)
    }
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// Signed 24-bit on the wire; clamped when written.
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    pub jitter: u32,
    pub last_sr: u32,
    /// In units of 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Self {
        // Sign-extend the 24-bit field by shifting it to the top of an i32 and back.
        let lost = (be32(b, 4) << 8) as i32 >> 8;
        Self {
            ssrc: be32(b, 0),
            fraction_lost: b[4],
            cumulative_lost: lost,
            extended_highest_seq: be32(b, 8),
            jitter: be32(b, 12),
            last_sr: be32(b, 16),
            delay_since_last_sr: be32(b, 20),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0x00ff_ffff;
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&self.extended_highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.last_sr.to_be_bytes());
        out.extend_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// Iterates the report blocks of an SR or RR.
pub type ReportBlocks<'a> =
    std::iter::Map<std::slice::ChunksExact<'a, u8>, fn(&[u8]) -> ReportBlock>;

fn report_blocks(blocks: &[u8]) -> ReportBlocks<'_> {
    blocks
        .chunks_exact(REPORT_BLOCK_LEN)
        .map(ReportBlock::parse as fn(&[u8]) -> ReportBlock)
}

/// SR (PT 200). `body` starts at the sender SSRC.
#[derive(Debug, Clone, Copy)]
pub struct SenderReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> SenderReport<'a> {
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    pub fn sender_info(&self) -> SenderInfo {
        SenderInfo {
            ntp_seconds: be32(self.body, 4),
            ntp_fraction: be32(self.body, 8),
            rtp_timestamp: be32(self.body, 12),
            packet_count: be32(self.body, 16),
            octet_count: be32(self.body, 20),
        }
    }

    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let start = 4 + SENDER_INFO_LEN;
        report_blocks(&self.body[start..start + self.count * REPORT_BLOCK_LEN])
    }

    /// The SR as a subscriber should see it: sent by `ssrc`, RTP timestamp shifted into
    /// that subscriber's timestamp space, and without report blocks (they describe what
    /// the publisher received, which is none of the subscriber's business).
    pub fn rewritten(&self, ssrc: u32, timestamp_offset: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 4 + SENDER_INFO_LEN);
        self.rewrite_into(&mut out, ssrc, timestamp_offset);
        out
    }

    /// [`Self::rewritten`], appended to `out` (a reused buffer).
    pub fn rewrite_into(&self, out: &mut Vec<u8>, ssrc: u32, timestamp_offset: u32) {
        let mut info = self.sender_info();
        info.rtp_timestamp = info.rtp_timestamp.wrapping_add(timestamp_offset);
        write_sr_into(out, ssrc, &info, &[]);
    }
}

/// RR (PT 201). `body` starts at the sender SSRC.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> ReceiverReport<'a> {
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        report_blocks(&self.body[4..4 + self.count * REPORT_BLOCK_LEN])
    }
}

/// One SDES chunk: the source and its raw item list (type, length, text ... 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    pub ssrc: u32,
    pub items: &'a [u8],
}

/// SDES (PT 202).
#[derive(Debug, Clone, Copy)]
pub struct Sdes<'a> {
    body: &'a [u8],
    count: usize,
}

/// Walks one chunk starting at `start`; returns (items end, next chunk start).
fn sdes_chunk_bounds(body: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut at = start.checked_add(4)?;
    if at > body.len() {
        return None;
    }
    loop {
        let item_type = *body.get(at)?;
        if item_type == 0 {
            let items_end = at;
            // The null terminator plus padding up to the next 32-bit boundary.
            let next = (at + 4) & !3;
            if next > body.len() {
                return None;
            }
            return Some((items_end, next));
        }
        let len = usize::from(*body.get(at + 1)?);
        at += 2 + len;
        if at > body.len() {
            return None;
        }
    }
}

impl<'a> Sdes<'a> {
    pub fn chunks(&self) -> impl Iterator<Item = SdesChunk<'a>> + 'a {
        let body = self.body;
        let mut at = 0;
        (0..self.count).map_while(move |_| {
            let (items_end, next) = sdes_chunk_bounds(body, at)?;
            let chunk = SdesChunk {
                ssrc: be32(body, at),
                items: &body[at + 4..items_end],
            };
            at = next;
            Some(chunk)
        })
    }
}

/// BYE (PT 203).
#[derive(Debug, Clone, Copy)]
pub struct Bye<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Bye<'a> {
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.body[..self.count * 4]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    pub fn reason(&self) -> Option<&'a [u8]> {
        let at = self.count * 4;
        let len = usize::from(*self.body.get(at)?);
        self.body.get(at + 1..at + 1 + len)
    }
}

/// Generic NACK (RTPFB FMT 1).
#[derive(Debug, Clone, Copy)]
pub struct Nack<'a> {
    body: &'a [u8],
}

impl<'a> Nack<'a> {
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    pub fn media_ssrc(&self) -> u32 {
        be32(self.body, 4)
    }

    /// (PID, BLP) pairs.
    pub fn entries(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.body[8..].chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u16::from_be_bytes([c[2], c[3]]),
            )
        })
    }

    /// Every sequence number reported lost: each PID, then PID+i+1 for each bit i of BLP.
    pub fn lost_seqs(&self) -> impl Iterator<Item = u16> + 'a {
        self.entries().flat_map(|(pid, blp)| {
            std::iter::once(pid).chain(
                (0..16u16)
                    .filter(move |i| blp & (1 << i) != 0)
                    .map(move |i| pid.wrapping_add(i + 1)),
            )
        })
    }
}

/// Picture Loss Indication (PSFB FMT 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pli {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
}

/// One FIR request: the media sender asked for a keyframe, and the command sequence
/// number that lets it ignore repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirEntry {
    pub ssrc: u32,
    pub seq_nr: u8,
}

/// Full Intra Request (PSFB FMT 4).
#[derive(Debug, Clone, Copy)]
pub struct Fir<'a> {
    body: &'a [u8],
}

impl<'a> Fir<'a> {
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0)
    }

    /// RFC 5104 says SHALL be 0; the targets are in the FCI entries.
    pub fn media_ssrc(&self) -> u32 {
        be32(self.body, 4)
    }

    pub fn entries(&self) -> impl Iterator<Item = FirEntry> + 'a {
        self.body[8..].chunks_exact(8).map(|c| FirEntry {
            ssrc: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            seq_nr: c[4],
        })
    }
}

/// One packet of a compound datagram.
#[derive(Debug, Clone, Copy)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    Sdes(Sdes<'a>),
    Bye(Bye<'a>),
    Nack(Nack<'a>),
    Pli(Pli),
    Fir(Fir<'a>),
    TransportFeedback(TransportFeedback<'a>),
    /// APP, XR, REMB, ...: well-formed as far as the common header goes, not interpreted.
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

fn need(offset: usize, kind: &'static str, body: &[u8], needed: usize) -> Result<(), RtcpError> {
    if body.len() < needed {
        return Err(RtcpError::BodyTooShort {
            offset,
            kind,
            len: body.len(),
            needed,
        });
    }
    Ok(())
}

impl<'a> RtcpPacket<'a> {
    /// `count` is the 5-bit RC/SC/FMT field; `body` is everything after the 4-byte
    /// header, minus padding.
    fn parse(offset: usize, packet_type: u8, count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let n = usize::from(count);
        Ok(match packet_type {
            PT_SR => {
                need(
                    offset,
                    "SR",
                    body,
                    4 + SENDER_INFO_LEN + n * REPORT_BLOCK_LEN,
                )?;
                Self::SenderReport(SenderReport { body, count: n })
            }
            PT_RR => {
                need(offset, "RR", body, 4 + n * REPORT_BLOCK_LEN)?;
                Self::ReceiverReport(ReceiverReport { body, count: n })
            }
            PT_SDES => {
                let mut at = 0;
                for _ in 0..n {
                    match sdes_chunk_bounds(body, at) {
                        Some((_, next)) => at = next,
                        None => {
                            return Err(RtcpError::Invalid {
                                offset,
                                kind: "SDES",
                                reason: "chunk runs past the packet",
                            })
                        }
                    }
                }
                Self::Sdes(Sdes { body, count: n })
            }
            PT_BYE => {
                need(offset, "BYE", body, n * 4)?;
                if let Some(&len) = body.get(n * 4) {
                    need(offset, "BYE", body, n * 4 + 1 + usize::from(len))?;
                }
                Self::Bye(Bye { body, count: n })
            }
            PT_RTPFB if count == FMT_NACK => {
                need(offset, "NACK", body, 12)?;
                Self::Nack(Nack { body })
            }
            PT_RTPFB if count == FMT_TRANSPORT_CC => Self::TransportFeedback(
                TransportFeedback::parse(body)
                    .map_err(|source| RtcpError::TransportFeedback { offset, source })?,
            ),
            PT_PSFB if count == FMT_PLI => {
                need(offset, "PLI", body, 8)?;
                Self::Pli(Pli {
                    sender_ssrc: be32(body, 0),
                    media_ssrc: be32(body, 4),
                })
            }
            PT_PSFB if count == FMT_FIR => {
                need(offset, "FIR", body, 16)?;
                Self::Fir(Fir { body })
            }
            _ => Self::Other {
                packet_type,
                count,
                body,
            },
        })
    }
}

/// Iterator over the packets of a compound datagram. Yields at most one error, then stops:
/// after a bad length nothing further can be framed.
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    buf: &'a [u8],
    offset: usize,
    done: bool,
}

/// Iterate the packets of `buf`. An empty buffer yields one `Empty` error.
pub fn parse_compound(buf: &[u8]) -> Compound<'_> {
    Compound {
        buf,
        offset: 0,
        done: false,
    }
}

/// Check a whole compound packet before acting on any of it, so a datagram with a bad
/// tail is dropped as a unit. Returns the number of packets.
pub fn validate_compound(buf: &[u8]) -> Result<usize, RtcpError> {
    let mut n = 0;
    for packet in parse_compound(buf) {
        packet?;
        n += 1;
    }
    Ok(n)
}

impl<'a> Compound<'a> {
    fn next_packet(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let offset = self.offset;
        let rest = &self.buf[offset..];
        if rest.len() < HEADER_LEN {
            return Err(RtcpError::TruncatedHeader {
                offset,
                remaining: rest.len(),
            });
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let declared = (usize::from(be16(rest, 2)) + 1) * 4;
        if declared > rest.len() {
            return Err(RtcpError::LengthOverrun {
                offset,
                declared,
                remaining: rest.len(),
            });
        }
        let packet = &rest[..declared];
        let mut end = declared;
        if rest[0] & 0x20 != 0 {
            let padding = packet[declared - 1];
            if padding == 0 || usize::from(padding) > declared - HEADER_LEN {
                return Err(RtcpError::BadPadding {
                    offset,
                    padding,
                    len: declared,
                });
            }
            end -= usize::from(padding);
        }
        self.offset += declared;
        RtcpPacket::parse(offset, rest[1], rest[0] & 0x1f, &packet[HEADER_LEN..end])
    }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.offset >= self.buf.len() {
            self.done = true;
            return if self.buf.is_empty() {
                Some(Err(RtcpError::Empty))
            } else {
                None
            };
        }
        let result = self.next_packet();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

fn push_header(out: &mut Vec<u8>, count: u8, packet_type: u8, body_len: usize) {
    debug_assert!(
        body_len.is_multiple_of(4),
        "writers only emit word-aligned bodies"
    );
    let words = u16::try_from(body_len / 4).unwrap_or(u16::MAX);
    out.push(0x80 | (count & 0x1f));
    out.push(packet_type);
    out.extend_from_slice(&words.to_be_bytes());
}

/// PLI (RFC 4585 §6.3.1), a reduced-size packet on its own.
pub fn write_pli(sender_ssrc: u32, media_ssrc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    write_pli_into(&mut out, sender_ssrc, media_ssrc);
    out
}

/// [`write_pli`], appended to `out` (a reused buffer).
pub fn write_pli_into(out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32) {
    push_header(out, FMT_PLI, PT_PSFB, 8);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
}

/// FIR (RFC 5104 §4.3.1); the common media SSRC is 0 as the RFC requires.
pub fn write_fir(sender_ssrc: u32, entries: &[FirEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + 8 * entries.len());
    write_fir_into(&mut out, sender_ssrc, entries);
    out
}

/// [`write_fir`], appended to `out` (a reused buffer).
pub fn write_fir_into(out: &mut Vec<u8>, sender_ssrc: u32, entries: &[FirEntry]) {
    let body_len = 8 + 8 * entries.len();
    push_header(out, FMT_FIR, PT_PSFB, body_len);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.ssrc.to_be_bytes());
        out.extend_from_slice(&[e.seq_nr, 0, 0, 0]);
    }
}

fn write_one_rr(out: &mut Vec<u8>, sender_ssrc: u32, blocks: &[ReportBlock]) {
    push_header(
        out,
        blocks.len() as u8,
        PT_RR,
        4 + blocks.len() * REPORT_BLOCK_LEN,
    );
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    for b in blocks {
        b.write(out);
    }
}

/// RR with the given blocks. More than 31 blocks do not fit one count field, so they
/// spill into further RR packets of the same compound.
pub fn write_rr(sender_ssrc: u32, blocks: &[ReportBlock]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + blocks.len() * REPORT_BLOCK_LEN);
    write_rr_into(&mut out, sender_ssrc, blocks);
    out
}

/// [`write_rr`], appended to `out` (a reused buffer).
pub fn write_rr_into(out: &mut Vec<u8>, sender_ssrc: u32, blocks: &[ReportBlock]) {
    if blocks.is_empty() {
        write_one_rr(out, sender_ssrc, &[]);
    }
    for chunk in blocks.chunks(MAX_REPORT_BLOCKS) {
        write_one_rr(out, sender_ssrc, chunk);
    }
}

/// SR with sender info and up to 31 blocks; the rest spill into RR packets.
pub fn write_sr(sender_ssrc: u32, info: &SenderInfo, blocks: &[ReportBlock]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(HEADER_LEN + 4 + SENDER_INFO_LEN + blocks.len() * REPORT_BLOCK_LEN + 8);
    write_sr_into(&mut out, sender_ssrc, info, blocks);
    out
}

/// [`write_sr`], appended to `out` (a reused buffer).
pub fn write_sr_into(
    out: &mut Vec<u8>,
    sender_ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) {
    let (first, rest) = blocks.split_at(blocks.len().min(MAX_REPORT_BLOCKS));
    let body_len = 4 + SENDER_INFO_LEN + first.len() * REPORT_BLOCK_LEN;
    push_header(out, first.len() as u8, PT_SR, body_len);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    for v in [
        info.ntp_seconds,
        info.ntp_fraction,
        info.rtp_timestamp,
        info.packet_count,
        info.octet_count,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for b in first {
        b.write(out);
    }
    for chunk in rest.chunks(MAX_REPORT_BLOCKS) {
        write_one_rr(out, sender_ssrc, chunk);
    }
}

/// Generic NACK for `lost` (RFC 4585 §6.2.1). Consecutive losses within 16 of an entry's
/// PID share that entry's bitmask; `lost` is best given in ascending order. Returns `None`
/// for an empty list, since a NACK without FCI is invalid.
pub fn write_nack(sender_ssrc: u32, media_ssrc: u32, lost: &[u16]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    write_nack_into(&mut out, sender_ssrc, media_ssrc, lost).then_some(out)
}

/// [`write_nack`] into a caller's buffer (appended; no allocation when `out` has room):
/// `lost` in ascending order packs into PID/BLP pairs. `false` (nothing written) when
/// `lost` is empty.
pub fn write_nack_into(out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32, lost: &[u16]) -> bool {
    if lost.is_empty() {
        return false;
    }
    let pairs = |f: &mut dyn FnMut(u16, u16)| {
        let mut current: Option<(u16, u16)> = None;
        for &seq in lost {
            match current.as_mut() {
                Some((pid, blp)) if (1..=16).contains(&seq.wrapping_sub(*pid)) => {
                    *blp |= 1 << (seq.wrapping_sub(*pid) - 1);
                }
                Some((pid, _)) if *pid == seq => {}
                _ => {
                    if let Some((pid, blp)) = current {
                        f(pid, blp);
                    }
                    current = Some((seq, 0));
                }
            }
        }
        if let Some((pid, blp)) = current {
            f(pid, blp);
        }
    };
    let mut count = 0;
    pairs(&mut |_, _| count += 1);
    let body_len = 8 + 4 * count;
    push_header(out, FMT_NACK, PT_RTPFB, body_len);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    pairs(&mut |pid, blp| {
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(&blp.to_be_bytes());
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> RtcpPacket<'_> {
        let mut it = parse_compound(buf);
        let p = it.next().expect("one packet").expect("valid");
        assert!(it.next().is_none());
        p
    }

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 77,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&write_pli(1, 2)));
        assert!(!is_rtcp(&[0x80, 96, 0, 0]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn pli_round_trip() {
        let p = write_pli(0xaaaa_aaaa, 0xbbbb_bbbb);
        assert_eq!(p.len(), 12);
        match one(&p) {
            RtcpPacket::Pli(pli) => {
                assert_eq!(pli.sender_ssrc, 0xaaaa_aaaa);
                assert_eq!(pli.media_ssrc, 0xbbbb_bbbb);
            }
            other => panic!("expected PLI, got {other:?}"),
        }
    }

    #[test]
    fn fir_round_trip() {
        let entries = [
            FirEntry { ssrc: 5, seq_nr: 1 },
            FirEntry {
                ssrc: 6,
                seq_nr: 200,
            },
        ];
        let p = write_fir(9, &entries);
        match one(&p) {
            RtcpPacket::Fir(fir) => {
                assert_eq!(fir.sender_ssrc(), 9);
                assert_eq!(fir.media_ssrc(), 0);
                assert_eq!(fir.entries().collect::<Vec<_>>(), entries);
            }
            other => panic!("expected FIR, got {other:?}"),
        }
    }

    #[test]
    fn rr_round_trip_and_spill() {
        let blocks = [block(1), block(2)];
        let p = write_rr(7, &blocks);
        assert_eq!(p.len(), 8 + 2 * 24);
        match one(&p) {
            RtcpPacket::ReceiverReport(rr) => {
                assert_eq!(rr.sender_ssrc(), 7);
                assert_eq!(rr.report_blocks().collect::<Vec<_>>(), blocks);
            }
            other => panic!("expected RR, got {other:?}"),
        }
        let many: Vec<_> = (0..40).map(block).collect();
        let p = write_rr(7, &many);
        let mut got = Vec::new();
        for packet in parse_compound(&p) {
            match packet.expect("valid") {
                RtcpPacket::ReceiverReport(rr) => got.extend(rr.report_blocks()),
                other => panic!("expected RR, got {other:?}"),
            }
        }
        assert_eq!(got, many);
        // An empty RR is still a valid packet (a keep-alive report).
        assert!(matches!(
            one(&write_rr(7, &[])),
            RtcpPacket::ReceiverReport(_)
        ));
    }

    #[test]
    fn cumulative_lost_clamps_to_24_bits() {
        let mut b = block(1);
        b.cumulative_lost = i32::MAX;
        let p = write_rr(1, &[b]);
        let RtcpPacket::ReceiverReport(rr) = one(&p) else {
            panic!("expected RR")
        };
        let got = rr.report_blocks().next().expect("block");
        assert_eq!(got.cumulative_lost, 0x7f_ffff);
        assert_eq!(got.fraction_lost, 25);
    }

    #[test]
    fn sr_round_trip_and_rewrite() {
        let info = SenderInfo {
            ntp_seconds: 0x0102_0304,
            ntp_fraction: 0x0506_0708,
            rtp_timestamp: 0xffff_fff0,
            packet_count: 10,
            octet_count: 1000,
        };
        let p = write_sr(3, &info, &[block(4)]);
        let RtcpPacket::SenderReport(sr) = one(&p) else {
            panic!("expected SR")
        };
        assert_eq!(sr.sender_ssrc(), 3);
        assert_eq!(sr.sender_info(), info);
        assert_eq!(info.ntp_middle(), 0x0304_0506);
        assert_eq!(sr.report_blocks().collect::<Vec<_>>(), vec![block(4)]);

        let rewritten = sr.rewritten(0x55, 0x20);
        let RtcpPacket::SenderReport(out) = one(&rewritten) else {
            panic!("expected SR")
        };
        assert_eq!(out.sender_ssrc(), 0x55);
        assert_eq!(out.sender_info().rtp_timestamp, 0x10, "wrapping add");
        assert_eq!(out.sender_info().ntp_seconds, info.ntp_seconds);
        assert_eq!(out.report_blocks().count(), 0);
    }

    #[test]
    fn nack_round_trip() {
        let lost = [100u16, 101, 103, 116, 117, 0xffff, 0, 2];
        let p = write_nack(1, 2, &lost).expect("non-empty");
        let RtcpPacket::Nack(nack) = one(&p) else {
            panic!("expected NACK")
        };
        assert_eq!(nack.sender_ssrc(), 1);
        assert_eq!(nack.media_ssrc(), 2);
        // 100..=116 fit one entry, 117 starts a new one; 0xffff's entry covers 0 and 2.
        assert_eq!(nack.entries().count(), 3);
        assert_eq!(nack.lost_seqs().collect::<Vec<_>>(), lost);
        assert!(write_nack(1, 2, &[]).is_none());
    }

    #[test]
    fn parses_hand_built_nack_with_several_fci() {
        let buf = [
            0x81,
            205,
            0,
            4, // header, 4 words follow
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            2, // sender, media
            0x00,
            0x0a,
            0b0000_0000,
            0b0000_0101, // PID 10, BLP bits 0 and 2
            0xff,
            0xff,
            0x80,
            0x00, // PID 65535, BLP bit 15 -> 15 (wrapped)
        ];
        let RtcpPacket::Nack(nack) = one(&buf) else {
            panic!("expected NACK")
        };
        assert_eq!(
            nack.lost_seqs().collect::<Vec<_>>(),
            vec![10, 11, 13, 0xffff, 15]
        );
    }

    #[test]
    fn compound_sr_sdes_bye() {
        let mut buf = write_sr(
            11,
            &SenderInfo {
                ntp_seconds: 1,
                ..Default::default()
            },
            &[],
        );
        // SDES with one chunk: CNAME "ab", terminator, padded to a word.
        buf.extend_from_slice(&[0x81, 202, 0, 3, 0, 0, 0, 11, 1, 2, b'a', b'b', 0, 0, 0, 0]);
        // BYE for SSRC 11 with reason "x" padded.
        buf.extend_from_slice(&[0x81, 203, 0, 2, 0, 0, 0, 11, 1, b'x', 0, 0]);
        let packets: Vec<_> = parse_compound(&buf)
            .collect::<Result<_, _>>()
            .expect("valid compound");
        assert_eq!(packets.len(), 3);
        assert_eq!(validate_compound(&buf), Ok(3));
        let RtcpPacket::Sdes(sdes) = packets[1] else {
            panic!("expected SDES")
        };
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(
            chunks,
            vec![SdesChunk {
                ssrc: 11,
                items: &[1, 2, b'a', b'b']
            }]
        );
        let RtcpPacket::Bye(bye) = packets[2] else {
            panic!("expected BYE")
        };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![11]);
        assert_eq!(bye.reason(), Some(&b"x"[..]));
    }

    #[test]
    fn unknown_types_pass_as_other() {
        // REMB-like PSFB FMT 15.
        let buf = [0x8f, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            one(&buf),
            RtcpPacket::Other {
                packet_type: 206,
                count: 15,
                ..
            }
        ));
    }

    /// A receiver report and a transport-wide feedback in one compound, as Chrome sends
    /// them; the feedback bytes are pion/rtcp's captured "example1"
    /// (transport_layer_cc_test.go).
    #[test]
    fn compound_with_transport_feedback() {
        let mut buf = write_rr(0xfa17_fa17, &[block(1)]);
        buf.extend_from_slice(&[
            0xaf, 0xcd, 0x00, 0x05, 0xfa, 0x17, 0xfa, 0x17, 0x43, 0x03, 0x2f, 0xa0, 0x00, 0x99,
            0x00, 0x01, 0x3d, 0xe8, 0x02, 0x17, 0x20, 0x01, 0x94, 0x01,
        ]);
        assert_eq!(validate_compound(&buf), Ok(2));
        let packets: Vec<_> = parse_compound(&buf)
            .collect::<Result<_, _>>()
            .expect("valid");
        let RtcpPacket::TransportFeedback(fb) = packets[1] else {
            panic!("expected transport feedback, got {:?}", packets[1])
        };
        assert_eq!(
            (fb.media_ssrc(), fb.base_seq(), fb.status_count()),
            (0x4303_2fa0, 153, 1)
        );

        // Status count 2 and the packet ends before any chunk: the whole compound is
        // refused.
        let at = buf.len() - 24;
        buf[at + 15] = 2;
        buf[at + 2..at + 4].copy_from_slice(&4u16.to_be_bytes());
        buf.truncate(at + 20);
        buf[at] &= !0x20;
        assert!(matches!(
            validate_compound(&buf),
            Err(RtcpError::TransportFeedback {
                offset,
                source: FeedbackError::ChunksTruncated { count: 2 },
            }) if offset == at
        ));
    }

    #[test]
    fn padding_is_stripped() {
        // PLI with the padding bit and 4 bytes of padding.
        let buf = [0xa1, 206, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4];
        assert!(matches!(
            one(&buf),
            RtcpPacket::Pli(Pli { media_ssrc: 2, .. })
        ));
        let bad = [0xa1, 206, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 99];
        assert!(matches!(
            validate_compound(&bad),
            Err(RtcpError::BadPadding { padding: 99, .. })
        ));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(validate_compound(&[]), Err(RtcpError::Empty));
        assert!(matches!(
            validate_compound(&[0x80, 201, 0]),
            Err(RtcpError::TruncatedHeader { .. })
        ));
        assert!(matches!(
            validate_compound(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadVersion { version: 1, .. })
        ));
        assert!(matches!(
            validate_compound(&[0x80, 201, 0, 5, 0, 0, 0, 0]),
            Err(RtcpError::LengthOverrun { declared: 24, .. })
        ));
        // RR claims one block but carries none.
        assert!(matches!(
            validate_compound(&[0x81, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BodyTooShort { kind: "RR", .. })
        ));
        // NACK without FCI.
        assert!(matches!(
            validate_compound(&[0x81, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]),
            Err(RtcpError::BodyTooShort { kind: "NACK", .. })
        ));
        // FIR without an entry.
        assert!(matches!(
            validate_compound(&[0x84, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BodyTooShort { kind: "FIR", .. })
        ));
        // SDES item length runs past the end.
        assert!(matches!(
            validate_compound(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 9, b'a', 0]),
            Err(RtcpError::Invalid { kind: "SDES", .. })
        ));
        // Valid PLI followed by a truncated packet: the whole compound is rejected.
        let mut buf = write_pli(1, 2);
        buf.extend_from_slice(&[0x80, 201]);
        assert!(matches!(
            validate_compound(&buf),
            Err(RtcpError::TruncatedHeader { offset: 12, .. })
        ));
    }

    #[test]
    fn never_panics_on_prefixes_and_garbage() {
        let mut buf = write_sr(1, &SenderInfo::default(), &[block(2)]);
        buf.extend(write_nack(1, 2, &[1, 2, 40]).expect("non-empty"));
        buf.extend(write_fir(1, &[FirEntry { ssrc: 3, seq_nr: 4 }]));
        buf.extend_from_slice(&[0x81, 202, 0, 3, 0, 0, 0, 11, 1, 2, b'a', b'b', 0, 0, 0, 0]);
        buf.extend_from_slice(&[0x81, 203, 0, 2, 0, 0, 0, 11, 1, b'x', 0, 0]);
        // Transport feedback: a 2-bit vector with a large delta, then a run of losses.
        buf.extend_from_slice(&[
            0x8f, 205, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 9, 0, 9, 0, 0, 1, 7, 0xd5, 0x52, 0, 2, 1,
            2, 3, 4, 5, 1, 9, 0,
        ]);
        for n in 0..=buf.len() {
            for p in parse_compound(&buf[..n]).flatten() {
                touch(p);
            }
        }
        // Every single-byte corruption of the header bytes.
        for i in 0..buf.len() {
            for v in [0u8, 0x1f, 0x80, 0xa0, 0xbf, 0xff] {
                let mut b = buf.clone();
                b[i] = v;
                for p in parse_compound(&b).flatten() {
                    touch(p);
                }
            }
        }
    }

    /// Call every accessor so a bad bound would panic here.
    fn touch(p: RtcpPacket<'_>) {
        match p {
            RtcpPacket::SenderReport(sr) => {
                let _ = (
                    sr.sender_ssrc(),
                    sr.sender_info(),
                    sr.report_blocks().count(),
                );
                let _ = sr.rewritten(1, 1);
            }
            RtcpPacket::ReceiverReport(rr) => {
                let _ = (rr.sender_ssrc(), rr.report_blocks().count());
            }
            RtcpPacket::Sdes(s) => {
                let _ = s.chunks().count();
            }
            RtcpPacket::Bye(b) => {
                let _ = (b.ssrcs().count(), b.reason());
            }
            RtcpPacket::Nack(n) => {
                let _ = (n.sender_ssrc(), n.media_ssrc(), n.lost_seqs().count());
            }
            RtcpPacket::Pli(_) | RtcpPacket::Other { .. } => {}
            RtcpPacket::Fir(f) => {
                let _ = (f.sender_ssrc(), f.media_ssrc(), f.entries().count());
            }
            RtcpPacket::TransportFeedback(fb) => {
                let _ = (fb.sender_ssrc(), fb.reference_time(), fb.packets().count());
            }
        }
    }
}
