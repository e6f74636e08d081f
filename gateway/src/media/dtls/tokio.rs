//! DTLS server handshakes (webrtc-dtls) on the logic thread that owns the session. This
//! is the only file that sees tokio or webrtc-dtls's connection type.
//!
//! webrtc-dtls is written against async I/O. Rather than hand its datagrams to another
//! thread, every logic thread owns a current-thread tokio runtime that only it drives:
//! the thread pushes a session's DTLS records into an in-memory [`Conn`], runs the
//! runtime's ready tasks ([`DtlsDriver::drive`]) and collects what the handshake wants to
//! send as [`DtlsEvent`]s. No datagram crosses a thread; the small locks inside the
//! channels are only ever taken by this one thread, and only for DTLS records, never for
//! media.
use std::{
    net::SocketAddr,
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{runtime::Runtime, sync::mpsc as tmpsc, task::JoinHandle};
use webrtc_dtls::{
    config::{ClientAuthType, Config, ExtendedMasterSecretType},
    conn::DTLSConn,
    extension::extension_use_srtp::SrtpProtectionProfile,
};
use webrtc_util::{conn::Conn, KeyingMaterialExporter};

use crate::media::{identity::sha256_fingerprint, srtp::material_len, Identity};

/// Ready-task rounds per [`DtlsDriver::drive`]. Each round lets every woken task of the
/// runtime run once; a handshake step crosses a handful of internal tasks and channels.
const DRIVE_ROUNDS: usize = 24;
/// First retransmission of a flight (RFC 6347 suggests 1 s; WebRTC stacks use less).
pub(crate) const FLIGHT_INTERVAL: Duration = Duration::from_millis(500);
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// DTLS records queued for one association before the thread drops more: a handshake
/// flight is a few records, and the queue is drained on every drive.
const INBOUND_QUEUE: usize = 64;
/// Largest DTLS record we accept from a client.
const MAX_RECORD: usize = 2048;

/// What the handshake of association `id` produced (`id` is the caller's handle).
#[derive(Debug)]
pub enum DtlsEvent {
    /// A DTLS record to send to the client.
    Transmit { id: u64, datagram: Vec<u8> },
    /// Handshake done and the client's certificate matches the SDP fingerprint.
    Connected { id: u64, keys: SrtpKeys },
    /// Handshake failed (bad records, wrong fingerprint, no SRTP profile, ...).
    Failed { id: u64, reason: HandshakeError },
    /// The client closed the association (close_notify or fatal alert).
    Closed { id: u64 },
}

/// Why a handshake ended without keys.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake: {0}")]
    Dtls(#[source] webrtc_dtls::Error),
    #[error("client presented no certificate")]
    NoCertificate,
    #[error("client certificate does not match the SDP fingerprint")]
    FingerprintMismatch,
    #[error("no usable SRTP profile ({0:?})")]
    NoSrtpProfile(SrtpProtectionProfile),
    #[error("keying material export: {0}")]
    Export(#[source] webrtc_util::KeyingMaterialExporterError),
}

/// The negotiated SRTP profile and the exporter output (RFC 5764 4.2).
pub struct SrtpKeys {
    pub profile: SrtpProtectionProfile,
    pub material: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .field("material", &"<redacted>")
            .finish()
    }
}

/// One per logic thread.
pub struct DtlsDriver {
    runtime: Runtime,
    events_tx: Sender<DtlsEvent>,
    events_rx: Receiver<DtlsEvent>,
    identity: Arc<Identity>,
}

/// The logic thread's handle on one session's handshake. Dropping it ends the task.
pub struct DtlsHandle {
    inbound: tmpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

impl DtlsHandle {
    /// Queue one DTLS record from the client; false once the association has ended.
    /// `false` when the record was not queued: the queue is full (a client flooding
    /// faster than the handshake consumes) or the association has ended.
    pub fn feed(&self, datagram: &[u8]) -> bool {
        self.inbound.try_send(datagram.to_vec()).is_ok()
    }
}

impl Drop for DtlsHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DtlsDriver {
    pub fn new(identity: Arc<Identity>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (events_tx, events_rx) = mpsc::channel();
        Ok(DtlsDriver {
            runtime,
            events_tx,
            events_rx,
            identity,
        })
    }

    /// Start the server side of a handshake with a client whose certificate must hash to
    /// `remote_fingerprint` (SHA-256, from its SDP).
    pub fn start(
        &self,
        id: u64,
        remote_fingerprint: String,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> DtlsHandle {
        let (inbound, inbound_rx) = tmpsc::channel(INBOUND_QUEUE);
        let conn = Arc::new(ChannelConn {
            id,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            events: self.events_tx.clone(),
            local,
            remote,
        });
        let expected = remote_fingerprint.clone();
        // Refuse a wrong certificate inside the handshake (the client gets a fatal alert
        // instead of a completed handshake); the check after it stays as a second line.
        let verify = move |certs: &[Vec<u8>], _chains: &[_]| match certs.first() {
            Some(der) if sha256_fingerprint(der).eq_ignore_ascii_case(&expected) => Ok(()),
            _ => Err(webrtc_dtls::Error::Other(
                "client certificate does not match the SDP fingerprint".into(),
            )),
        };
        let config = Config {
            verify_peer_certificate: Some(Arc::new(verify)),
            certificates: vec![self.identity.certificate.clone()],
            srtp_protection_profiles: vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ],
            extended_master_secret: ExtendedMasterSecretType::Require,
            // The client must present the certificate its SDP fingerprint names; there is
            // no CA chain in WebRTC, the fingerprint check below is the authentication.
            client_auth: ClientAuthType::RequireAnyClientCert,
            insecure_skip_verify: true,
            flight_interval: FLIGHT_INTERVAL,
            ..Default::default()
        };
        let events = self.events_tx.clone();
        let task = self.runtime.spawn(async move {
            let event = match handshake(conn, config, &remote_fingerprint).await {
                Ok((dtls, keys)) => {
                    let _ = events.send(DtlsEvent::Connected { id, keys });
                    // Keep reading: application data is ignored (no data channels), an alert
                    // or the end of the inbound channel ends the association.
                    let mut buf = vec![0u8; MAX_RECORD];
                    while dtls.read(&mut buf, None).await.is_ok() {}
                    DtlsEvent::Closed { id }
                }
                Err(reason) => DtlsEvent::Failed { id, reason },
            };
            let _ = events.send(event);
        });
        DtlsHandle { inbound, task }
    }

    /// Run whatever the runtime has ready (handshake steps, retransmission timers).
    pub fn drive(&self) {
        self.runtime.block_on(async {
            for _ in 0..DRIVE_ROUNDS {
                tokio::task::yield_now().await;
            }
        });
    }

    pub fn poll_event(&self) -> Option<DtlsEvent> {
        self.events_rx.try_recv().ok()
    }
}

async fn handshake(
    conn: Arc<ChannelConn>,
    config: Config,
    remote_fingerprint: &str,
) -> Result<(DTLSConn, SrtpKeys), HandshakeError> {
    let dtls = DTLSConn::new(conn, config, false, None)
        .await
        .map_err(HandshakeError::Dtls)?;
    let state = dtls.connection_state().await;
    let presented = state
        .peer_certificates
        .first()
        .map(|der| sha256_fingerprint(der))
        .ok_or(HandshakeError::NoCertificate)?;
    if !presented.eq_ignore_ascii_case(remote_fingerprint) {
        // Whoever completed this handshake is not the peer that sent the offer.
        let _ = dtls.close().await;
        return Err(HandshakeError::FingerprintMismatch);
    }
    let profile = dtls.selected_srtpprotection_profile();
    let len = material_len(profile).ok_or(HandshakeError::NoSrtpProfile(profile))?;
    let material = state
        .export_keying_material(EXPORTER_LABEL, &[], len)
        .await
        .map_err(HandshakeError::Export)?;
    Ok((dtls, SrtpKeys { profile, material }))
}

/// The datagram side of webrtc-dtls, backed by the logic thread's queues.
struct ChannelConn {
    id: u64,
    inbound: tokio::sync::Mutex<tmpsc::Receiver<Vec<u8>>>,
    events: Sender<DtlsEvent>,
    local: SocketAddr,
    remote: SocketAddr,
}

fn closed() -> webrtc_util::Error {
    webrtc_util::Error::Other("session ended".into())
}

#[async_trait]
impl Conn for ChannelConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let datagram = self.inbound.lock().await.recv().await.ok_or_else(closed)?;
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.remote))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.events
            .send(DtlsEvent::Transmit {
                id: self.id,
                datagram: buf.to_vec(),
            })
            .map_err(|_| closed())?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A webrtc-dtls client for tests, on its own thread and runtime.
#[cfg(test)]
pub(crate) mod test_client {
    use webrtc_dtls::crypto::Certificate;

    use super::*;

    pub const SERVER: &str = "127.0.0.1:7000";
    pub const CLIENT: &str = "127.0.0.1:50000";

    /// A webrtc-dtls client on its own thread and runtime, wired to a server session of
    /// `driver` through in-memory queues (the logic thread's role is played by the test).
    pub struct Client {
        /// Client -> server records (the client's ChannelConn emits Transmit events).
        pub out: Receiver<DtlsEvent>,
        /// Server -> client records.
        pub inbound: tmpsc::Sender<Vec<u8>>,
        pub done: std::thread::JoinHandle<Result<Vec<u8>, String>>,
    }

    pub fn client(cert: Certificate) -> Client {
        let (events_tx, out) = mpsc::channel();
        let (inbound, inbound_rx) = tmpsc::channel(1024);
        let conn = Arc::new(ChannelConn {
            id: 0,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            events: events_tx,
            local: CLIENT.parse().unwrap(),
            remote: SERVER.parse().unwrap(),
        });
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let config = Config {
                    certificates: vec![cert],
                    srtp_protection_profiles: vec![
                        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                    ],
                    extended_master_secret: ExtendedMasterSecretType::Require,
                    insecure_skip_verify: true,
                    ..Default::default()
                };
                let dtls = DTLSConn::new(conn, config, true, None)
                    .await
                    .map_err(|e| e.to_string())?;
                let state = dtls.connection_state().await;
                let keys = state
                    .export_keying_material(EXPORTER_LABEL, &[], 60)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = dtls.close().await;
                Ok(keys)
            })
        });
        Client { out, inbound, done }
    }

    /// The client's side of the SRTP keys a test client exported (it offers only
    /// AES_CM_128_HMAC_SHA1_80): local and remote swapped, so an `SrtpSession` built from
    /// them protects as the client and unprotects what the server sent.
    pub fn client_side_keys(material: &[u8]) -> SrtpKeys {
        let (k, s) = (16, 14);
        let mut swapped = Vec::with_capacity(material.len());
        swapped.extend_from_slice(&material[k..2 * k]);
        swapped.extend_from_slice(&material[..k]);
        swapped.extend_from_slice(&material[2 * k + s..]);
        swapped.extend_from_slice(&material[2 * k..2 * k + s]);
        SrtpKeys {
            profile: SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            material: swapped,
        }
    }

    /// A client with a fresh certificate, and that certificate's SDP fingerprint.
    pub fn with_new_certificate() -> (Client, String) {
        let cert = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let fingerprint = fingerprint_of(&cert);
        (client(cert), fingerprint)
    }

    pub fn fingerprint_of(cert: &Certificate) -> String {
        sha256_fingerprint(cert.certificate[0].as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use webrtc_dtls::crypto::Certificate;

    use super::{test_client::*, *};

    /// Play the logic thread until the server reports an outcome for session 1.
    fn run(driver: &DtlsDriver, handle: &DtlsHandle, c: &Client) -> DtlsEvent {
        run_lossy(driver, handle, c, 0).0
    }

    /// `run`, losing the server's first `lose` datagrams; also returns how many the server
    /// sent in all (so retransmissions are visible).
    fn run_lossy(
        driver: &DtlsDriver,
        handle: &DtlsHandle,
        c: &Client,
        lose: usize,
    ) -> (DtlsEvent, usize) {
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            while let Ok(ev) = c.out.try_recv() {
                if let DtlsEvent::Transmit { datagram, .. } = ev {
                    handle.feed(&datagram);
                }
            }
            driver.drive();
            while let Some(ev) = driver.poll_event() {
                match ev {
                    DtlsEvent::Transmit { datagram, .. } => {
                        sent += 1;
                        if sent > lose {
                            let _ = c.inbound.try_send(datagram);
                        }
                    }
                    other => return (other, sent),
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no DTLS outcome within 10 s");
    }

    #[test]
    fn a_lost_server_flight_is_retransmitted() {
        let (driver, handle, c) = honest_session();
        // The first datagram is the server's HelloVerifyRequest or ServerHello flight:
        // without retransmission (timer or on the client's repeat) nothing would follow.
        let (event, sent) = run_lossy(&driver, &handle, &c, 1);
        assert!(
            matches!(event, DtlsEvent::Connected { id: 1, .. }),
            "{event:?}"
        );
        assert!(
            sent > 1,
            "the lost flight was sent again ({sent} datagrams)"
        );
        assert!(c.done.join().unwrap().is_ok(), "client completed too");
    }

    /// A driver, server session 1 expecting the client's real fingerprint, and the client.
    fn honest_session() -> (DtlsDriver, DtlsHandle, Client) {
        let driver = DtlsDriver::new(Arc::new(Identity::generate().unwrap())).unwrap();
        let cert = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let handle = driver.start(
            1,
            fingerprint_of(&cert),
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
        );
        (driver, handle, client(cert))
    }

    #[test]
    fn handshake_exports_the_same_keys_on_both_sides() {
        let (driver, handle, c) = honest_session();
        match run(&driver, &handle, &c) {
            DtlsEvent::Connected { id, keys } => {
                assert_eq!(id, 1);
                assert_eq!(
                    keys.profile,
                    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80
                );
                let client_keys = c.done.join().unwrap().expect("client handshake");
                assert_eq!(keys.material, client_keys);
            }
            other => panic!("expected Connected, got {other:?}"),
        }
    }

    #[test]
    fn a_certificate_not_named_in_the_sdp_fails_the_handshake() {
        let driver = DtlsDriver::new(Arc::new(Identity::generate().unwrap())).unwrap();
        let cert = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let other = Certificate::generate_self_signed(vec!["other".into()]).unwrap();
        let handle = driver.start(
            1,
            fingerprint_of(&other),
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
        );
        let c = client(cert);
        match run(&driver, &handle, &c) {
            DtlsEvent::Failed { reason, .. } => {
                assert!(reason.to_string().contains("fingerprint"), "{reason}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn garbage_records_do_not_disturb_another_session() {
        let driver = DtlsDriver::new(Arc::new(Identity::generate().unwrap())).unwrap();
        let junk = driver.start(
            9,
            "00".into(),
            SERVER.parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        );
        // Content type 22 (handshake), bogus version and length, then noise.
        for n in 0..50u8 {
            junk.feed(&[22, 0xfe, 0xfd, 0, 0, n, 0, 0, 0, 0, 0, 0, 0x10, 1, 2, 3]);
            junk.feed(&[n; 40]);
        }
        let cert = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let handle = driver.start(
            1,
            fingerprint_of(&cert),
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
        );
        let c = client(cert);
        loop {
            match run(&driver, &handle, &c) {
                DtlsEvent::Connected { id: 1, .. } => break,
                DtlsEvent::Failed { id: 9, .. } | DtlsEvent::Closed { id: 9 } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(junk);
    }
}
