//! One media session's DTLS-SRTP transport: the handshake (roomgate is always the DTLS
//! server), then SRTP/SRTCP with the exported keys.
//!
//! Sans-IO in the str0m manner: the caller hands in records and packets with `now`
//! (`handle_*`), protects and unprotects in its own buffers, and asks when the transport
//! next needs time (`poll_timeout`). The handshake itself runs on the thread's
//! [`DtlsDriver`]; its retransmission timers live inside webrtc-dtls's runtime, so the
//! transport mirrors them as a deadline: every flight (in or out) restarts webrtc-dtls's
//! timer, so the runtime must run [`FLIGHT_INTERVAL`] after the last one.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    dtls::{acceptable_after_handshake, DtlsDriver, DtlsHandle, SrtpKeys, FLIGHT_INTERVAL},
    final_flight::FinalFlight,
    srtp::{ProtectError, SrtpError, SrtpSession, UnprotectFailure},
};

/// ClientHello to keys; a client that stalls longer loses its session.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// DTLS records accepted from one client while its handshake runs. A handshake needs a
/// few dozen; webrtc-dtls buffers early epoch-1 records without limit, so a flooding
/// client is cut off here.
const HANDSHAKE_RECORD_BUDGET: u32 = 256;
/// webrtc-dtls arms its timer a little after the flight that `now` stamps (the runtime
/// runs the handshake step after the caller read the clock), and tokio rounds deadlines
/// up to the next millisecond: waking this much later finds the timer expired. A wake-up
/// that comes too early costs a retransmission one more interval, never a handshake.
const TIMER_SLACK: Duration = Duration::from_millis(10);
/// DTLS content type of handshake records.
const HANDSHAKE: u8 = 22;

/// What became of one DTLS record from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsInput {
    /// A ClientHello started the handshake.
    Started,
    /// Queued for webrtc-dtls: the thread's DTLS runtime must run.
    Fed,
    /// Over the handshake's budget or queue, or after the handshake a record no
    /// legitimate peer sends.
    Dropped,
    /// After the handshake, the client repeated its last flight: it missed roomgate's.
    /// Send [`Transport::flight_to_repeat`] again.
    RepeatFlight,
}

/// Why a packet from the client was not turned into plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("SRTP before the DTLS handshake finished")]
    NoKeys,
    #[error("SRTP unprotect failed: {0:?}")]
    Unprotect(UnprotectFailure),
}

/// Why a packet for the client was not protected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransmitError {
    #[error("no SRTP keys yet")]
    NoKeys,
    #[error(transparent)]
    Protect(#[from] ProtectError),
}

enum Phase {
    /// Waiting for the client's ClientHello.
    New,
    Handshaking {
        handle: DtlsHandle,
        started: Instant,
        /// Records accepted so far (bounded by [`HANDSHAKE_RECORD_BUDGET`]).
        records: u32,
        /// When webrtc-dtls's flight timer fires at the latest.
        wake: Instant,
    },
    Connected {
        /// Kept so a close_notify from the client is still read.
        handle: DtlsHandle,
        srtp: Box<SrtpSession>,
    },
}

pub struct Transport {
    /// SHA-256 fingerprint from the client's SDP; the DTLS client must present it.
    remote_fingerprint: String,
    phase: Phase,
    /// roomgate's latest handshake flight, for a client that missed it.
    final_flight: FinalFlight,
}

impl Transport {
    pub fn new(remote_fingerprint: String) -> Self {
        Transport {
            remote_fingerprint,
            phase: Phase::New,
            final_flight: FinalFlight::default(),
        }
    }

    /// For APIs: "new", "connecting" or "connected".
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::New => "new",
            Phase::Handshaking { .. } => "connecting",
            Phase::Connected { .. } => "connected",
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self.phase, Phase::New)
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshaking { .. })
    }

    /// A DTLS record from the client. The first one starts the handshake on `driver`
    /// under the caller's handle `id`.
    pub fn handle_dtls(
        &mut self,
        now: Instant,
        record: &[u8],
        driver: &DtlsDriver,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> DtlsInput {
        match &mut self.phase {
            Phase::New => {
                let handle = driver.start(id, self.remote_fingerprint.clone(), local, remote);
                handle.feed(record);
                self.phase = Phase::Handshaking {
                    handle,
                    started: now,
                    records: 0,
                    wake: now + FLIGHT_INTERVAL + TIMER_SLACK,
                };
                DtlsInput::Started
            }
            Phase::Handshaking {
                handle,
                records,
                wake,
                ..
            } => {
                *records += 1;
                if *records <= HANDSHAKE_RECORD_BUDGET && handle.feed(record) {
                    *wake = now + FLIGHT_INTERVAL + TIMER_SLACK;
                    self.final_flight.client_flight();
                    DtlsInput::Fed
                } else {
                    DtlsInput::Dropped
                }
            }
            Phase::Connected { handle, .. } => {
                if !acceptable_after_handshake(record) || !handle.feed(record) {
                    return DtlsInput::Dropped;
                }
                // A handshake record now is the client repeating its last flight.
                if record.first() == Some(&HANDSHAKE) && self.final_flight.repeat(now).is_some() {
                    DtlsInput::RepeatFlight
                } else {
                    DtlsInput::Fed
                }
            }
        }
    }

    /// The handshake sent `datagram`: webrtc-dtls restarted its retransmission timer.
    pub fn handle_flight_sent(&mut self, now: Instant, datagram: &[u8]) {
        if let Phase::Handshaking { wake, .. } = &mut self.phase {
            *wake = now + FLIGHT_INTERVAL + TIMER_SLACK;
        }
        if !matches!(self.phase, Phase::New) {
            self.final_flight.sent(datagram);
        }
    }

    /// The datagrams of roomgate's last flight, after [`DtlsInput::RepeatFlight`].
    pub fn flight_to_repeat(&self) -> &[Vec<u8>] {
        self.final_flight.last()
    }

    /// The handshake finished with `keys`. Returns how long it took; `Ok(None)` when no
    /// handshake was running (a late event for an association already replaced).
    pub fn handle_keys(
        &mut self,
        now: Instant,
        keys: &SrtpKeys,
    ) -> Result<Option<Duration>, SrtpError> {
        let phase = std::mem::replace(&mut self.phase, Phase::New);
        let Phase::Handshaking {
            handle, started, ..
        } = phase
        else {
            self.phase = phase;
            return Ok(None);
        };
        // On failure the phase stays New and the handle drops, ending the task; the
        // caller ends the session.
        let srtp = SrtpSession::new(keys)?;
        self.phase = Phase::Connected {
            handle,
            srtp: Box::new(srtp),
        };
        Ok(Some(now.saturating_duration_since(started)))
    }

    /// Verify and decrypt the SRTP (or SRTCP, `rtcp`) packet filling `buf` where it is;
    /// returns the length of the plaintext now at its start.
    pub fn unprotect_in_place(&mut self, buf: &mut [u8], rtcp: bool) -> Result<usize, RecvError> {
        let Phase::Connected { srtp, .. } = &mut self.phase else {
            return Err(RecvError::NoKeys);
        };
        let result = if rtcp {
            srtp.unprotect_rtcp_in_place(buf)
        } else {
            srtp.unprotect_rtp_in_place(buf)
        };
        if result.is_ok() {
            self.final_flight.forget();
        }
        result.map_err(RecvError::Unprotect)
    }

    /// Protect the plaintext packet in `buf` where it is; `buf` grows by the SRTP
    /// overhead (within its capacity when it came from the room's pool).
    pub fn protect_in_place(&mut self, buf: &mut Vec<u8>, rtcp: bool) -> Result<(), TransmitError> {
        let Phase::Connected { srtp, .. } = &mut self.phase else {
            return Err(TransmitError::NoKeys);
        };
        let plain_len = buf.len();
        let overhead = if rtcp {
            srtp.profile.rtcp_overhead()
        } else {
            srtp.profile.rtp_overhead()
        };
        buf.resize(plain_len + overhead, 0);
        let result = if rtcp {
            srtp.protect_rtcp_in_place(buf, plain_len)
        } else {
            srtp.protect_rtp_in_place(buf, plain_len)
        };
        match result {
            Ok(len) => {
                buf.truncate(len);
                Ok(())
            }
            Err(e) => {
                buf.truncate(plain_len);
                Err(e.into())
            }
        }
    }

    /// The handshake ran longer than [`HANDSHAKE_TIMEOUT`].
    pub fn handshake_expired(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Handshaking { started, .. }
            if now.saturating_duration_since(started) >= HANDSHAKE_TIMEOUT)
    }

    /// Whether webrtc-dtls's flight timer is due, so the DTLS runtime must run. The
    /// mirrored timer restarts: in its waiting state webrtc-dtls re-arms it every time it
    /// fires.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match &mut self.phase {
            Phase::Handshaking { wake, .. } if now >= *wake => {
                *wake = now + FLIGHT_INTERVAL + TIMER_SLACK;
                true
            }
            _ => false,
        }
    }

    /// The handshake deadline and webrtc-dtls's next flight timer while handshaking.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking { started, wake, .. } => Some(wake.min(started + HANDSHAKE_TIMEOUT)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::media::Identity;

    const WAIT: Duration = FLIGHT_INTERVAL.saturating_add(TIMER_SLACK);

    /// A ClientHello-shaped record: enough to start a handshake task.
    const RECORD: [u8; 16] = [22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0];

    #[test]
    fn a_live_handshake_asks_for_the_runtime_when_webrtc_dtls_timer_fires() {
        let driver = DtlsDriver::new(Arc::new(Identity::generate().unwrap())).unwrap();
        let (local, remote) = (
            "127.0.0.1:7000".parse().unwrap(),
            "192.0.2.1:4000".parse().unwrap(),
        );
        let mut t = Transport::new("00".into());
        assert_eq!(t.poll_timeout(), None, "no handshake, no timer");
        let t0 = Instant::now();
        let input = t.handle_dtls(t0, &RECORD, &driver, 1, local, remote);
        assert_eq!(input, DtlsInput::Started);
        assert_eq!(t.poll_timeout(), Some(t0 + WAIT));

        assert!(!t.handle_timeout(t0 + WAIT - Duration::from_millis(1)));
        assert!(t.handle_timeout(t0 + WAIT), "the runtime must run");
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + WAIT + WAIT),
            "webrtc-dtls re-arms while it waits"
        );

        let sent = t0 + Duration::from_secs(2);
        t.handle_flight_sent(sent, &[]);
        assert_eq!(t.poll_timeout(), Some(sent + WAIT), "a flight restarts it");
        t.handle_flight_sent(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(100), &[]);
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + HANDSHAKE_TIMEOUT),
            "the handshake deadline comes first"
        );
        assert!(!t.handshake_expired(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1)));
        assert!(t.handshake_expired(t0 + HANDSHAKE_TIMEOUT));
    }

    /// The client never hears roomgate's last flight (ChangeCipherSpec + Finished):
    /// when it repeats its own, the transport sends ours again and the client finishes.
    #[test]
    fn a_lost_final_flight_is_repeated_when_the_client_asks_again() {
        use crate::media::dtls::test_client::{client, fingerprint_of, CLIENT, SERVER};
        use crate::media::DtlsEvent;
        use webrtc_dtls::crypto::Certificate;
        const CHANGE_CIPHER_SPEC: u8 = 20;

        let driver = DtlsDriver::new(Arc::new(Identity::generate().unwrap())).unwrap();
        let cert = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let mut t = Transport::new(fingerprint_of(&cert));
        let c = client(cert);
        let (local, remote) = (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
        let (mut connected, mut lost, mut repeated) = (false, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c.done.is_finished() {
            assert!(Instant::now() < deadline, "the client never finished");
            let now = Instant::now();
            while let Ok(ev) = c.out.try_recv() {
                let DtlsEvent::Transmit { datagram, .. } = ev else {
                    continue;
                };
                if t.handle_dtls(now, &datagram, &driver, 1, local, remote)
                    == DtlsInput::RepeatFlight
                {
                    for d in t.flight_to_repeat() {
                        repeated += 1;
                        let _ = c.inbound.try_send(d.clone());
                    }
                }
            }
            driver.drive();
            while let Some(ev) = driver.poll_event() {
                match ev {
                    // The server's final flight (ChangeCipherSpec + Finished) is lost on
                    // the way. It is told by its first record, not by when Connected
                    // comes: the driver may report the flight one poll before the keys.
                    DtlsEvent::Transmit { datagram, .. } => {
                        t.handle_flight_sent(now, &datagram);
                        if datagram.first() == Some(&CHANGE_CIPHER_SPEC) {
                            lost += 1;
                        } else {
                            let _ = c.inbound.try_send(datagram);
                        }
                    }
                    DtlsEvent::Connected { keys, .. } => {
                        t.handle_keys(now, &keys).expect("keys");
                        connected = true;
                    }
                    // The client, done, sends close_notify.
                    DtlsEvent::Closed { .. } if repeated >= 1 => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(connected);
        assert!(lost >= 1, "the final flight was dropped");
        assert!(repeated >= 1, "and sent again on the client's repeat");
        assert!(
            c.done.join().unwrap().is_ok(),
            "the client completed its handshake"
        );
    }

    #[test]
    fn no_srtp_before_the_handshake_finished() {
        let mut t = Transport::new("00".into());
        let mut packet = [0x80u8; 40];
        assert_eq!(
            t.unprotect_in_place(&mut packet, false),
            Err(RecvError::NoKeys)
        );
        let mut out = vec![0x80; 40];
        assert_eq!(
            t.protect_in_place(&mut out, false),
            Err(TransmitError::NoKeys)
        );
        assert_eq!(out.len(), 40, "left as it was");
    }
}
