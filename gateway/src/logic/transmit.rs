//! Sending what one receive batch produced, with UDP GSO where it pays.
//!
//! Fan-out makes one datagram per subscriber per packet. When a batch holds several packets
//! of one publisher (a frame, a keyframe burst), each subscriber gets several datagrams of
//! the same size in a row. Grouped by destination, such a run leaves in one `sendmsg` with
//! `UDP_SEGMENT`: the kernel walks the socket, route and UDP/IP output path once for the
//! run and cuts it into datagrams at the device, instead of once per datagram.
use std::net::{IpAddr, SocketAddr};

use tracing::warn;

use crate::{net::SendErrno, stats::ThreadStats};

use super::{
    core::Transmit,
    multi_send::{MultiSend, MAX_BATCH},
    sockets::Sockets,
};

/// Segments per GSO send; the kernel's own limit (UDP_MAX_SEGMENTS) is 64 on 5.x.
const MAX_SEGMENTS: usize = 64;
/// A GSO send must fit one UDP datagram before segmentation.
const MAX_GSO_BYTES: usize = 65_000;
/// Only MTU-sized datagrams are coalesced: a segment larger than the path MTU would make
/// the whole run fail where the single datagram would merely be fragmented.
const MAX_SEGMENT: usize = 1_472;

/// Transmits collected over one receive batch, and what sending them needs. Every
/// vector keeps its capacity, so a warm thread sends without allocating.
#[derive(Default)]
pub struct TransmitBatch {
    txs: Vec<Transmit>,
    /// Send order: destination first, then queue position, so each destination's
    /// datagrams stay in the order the core produced them.
    order: Vec<(SocketAddr, Option<IpAddr>, Option<u32>, u32)>,
    results: Vec<Result<(), SendErrno>>,
    gso_buf: Vec<u8>,
    /// Queue positions of datagrams waiting to leave on the group socket together.
    pending: Vec<u32>,
    multi: MultiSend,
    /// Set once a GSO send failed for a reason that sending datagram by datagram does not
    /// have (a route that refuses segmentation offload): from then on, no GSO.
    gso_refused: bool,
}

impl TransmitBatch {
    pub fn push(&mut self, t: Transmit) {
        self.txs.push(t);
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Send everything collected; `done` gets every transmit back with its result, in
    /// queue order.
    pub fn send_all(
        &mut self,
        sockets: &Sockets,
        gso: bool,
        stats: &ThreadStats,
        mut done: impl FnMut(Transmit, Result<(), SendErrno>),
    ) {
        let segments = if gso && !self.gso_refused {
            sockets.max_gso_segments().min(MAX_SEGMENTS)
        } else {
            1
        };
        self.results.clear();
        self.results.resize(self.txs.len(), Ok(()));
        self.send_ordered(sockets, segments, stats);
        for (t, r) in self.txs.drain(..).zip(self.results.drain(..)) {
            done(t, r);
        }
    }

    /// Send in destination order: GSO runs where they form, the other datagrams on the
    /// group socket in `sendmmsg` batches, the rest (connected sockets) one by one. The
    /// pending batch goes out before anything else is sent, so each destination's
    /// datagrams leave in the order the core produced them.
    fn send_ordered(&mut self, sockets: &Sockets, segments: usize, stats: &ThreadStats) {
        self.order.clear();
        self.order.extend(
            self.txs
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to, t.src_ip, t.conn.map(|c| c.0), i as u32)),
        );
        if segments >= 2 {
            // Unstable sort on a key that ends in the queue position: stable where it
            // matters, and it sorts in place.
            self.order.sort_unstable();
        }
        let mut start = 0;
        while start < self.order.len() {
            let run = if segments >= 2 {
                self.run_len(start, segments)
            } else {
                1
            };
            let first = self.order[start].3 as usize;
            if run == 1 {
                if sockets.on_group(&self.txs[first]) {
                    self.pending.push(first as u32);
                    if self.pending.len() == MAX_BATCH {
                        self.flush_pending(sockets);
                    }
                } else {
                    self.flush_pending(sockets);
                    self.results[first] = sockets
                        .send(&self.txs[first])
                        .map_err(|e| SendErrno::of(&e));
                }
                start += 1;
                continue;
            }
            self.flush_pending(sockets);
            self.gso_buf.clear();
            for &(.., i) in &self.order[start..start + run] {
                self.gso_buf
                    .extend_from_slice(&self.txs[i as usize].contents);
            }
            let head = &self.txs[first];
            let result = sockets
                .send_segments(head, &self.gso_buf, head.contents.len())
                .map_err(|e| SendErrno::of(&e));
            match result {
                Ok(()) => {
                    stats.tx_gso_sends.inc();
                    stats.tx_gso_datagrams.add(run as u64);
                    for &(.., i) in &self.order[start..start + run] {
                        self.results[i as usize] = Ok(());
                    }
                }
                // A full buffer refuses single datagrams just the same.
                Err(e @ (SendErrno::WouldBlock | SendErrno::NoBufs)) => {
                    for &(.., i) in &self.order[start..start + run] {
                        self.results[i as usize] = Err(e);
                    }
                }
                // EMSGSIZE (a run larger than the path MTU allows, where a single datagram
                // is fragmented) or EIO/EINVAL (no segmentation offload on this route):
                // the datagrams themselves are fine, so send them one by one.
                Err(e) => {
                    stats.tx_gso_fallbacks.inc();
                    if !matches!(e, SendErrno::MsgSize) {
                        self.gso_refused = true;
                        warn!(
                            ?e,
                            "UDP GSO send refused; sending datagram by datagram from now on"
                        );
                    }
                    for &(.., i) in &self.order[start..start + run] {
                        let t = &self.txs[i as usize];
                        self.results[i as usize] = sockets.send(t).map_err(|e| SendErrno::of(&e));
                    }
                }
            }
            start += run;
        }
        self.flush_pending(sockets);
    }

    /// Send the group-socket datagrams waiting for a `sendmmsg`.
    fn flush_pending(&mut self, sockets: &Sockets) {
        let Self {
            txs,
            pending,
            results,
            multi,
            ..
        } = self;
        match pending.len() {
            0 => {}
            1 => {
                let i = pending[0] as usize;
                results[i] = sockets.send(&txs[i]).map_err(|e| SendErrno::of(&e));
            }
            n => sockets.send_many(
                multi,
                n,
                |k| &txs[pending[k] as usize],
                |k, errno| {
                    results[pending[k] as usize] = match errno {
                        None => Ok(()),
                        Some(e) => Err(SendErrno::of(&std::io::Error::from_raw_os_error(e))),
                    }
                },
            ),
        }
        pending.clear();
    }

    /// How many transmits from `start` (in send order) can leave in one GSO send: one
    /// destination, one source, one socket, equal sizes except a shorter last one.
    fn run_len(&self, start: usize, segments: usize) -> usize {
        let (to, src, conn, first) = self.order[start];
        let size = self.txs[first as usize].contents.len();
        if size == 0 || size > MAX_SEGMENT {
            return 1;
        }
        let mut bytes = size;
        let mut run = 1;
        for &(t, s, c, i) in &self.order[start + 1..] {
            let len = self.txs[i as usize].contents.len();
            if run == segments
                || (t, s, c) != (to, src, conn)
                || len > size
                || len == 0
                || bytes + len > MAX_GSO_BYTES
            {
                break;
            }
            bytes += len;
            run += 1;
            if len < size {
                // Only the last segment may be short.
                break;
            }
        }
        run
    }
}
