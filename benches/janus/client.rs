//! One WebRTC endpoint of the load generator against Janus: a UDP socket on the host side
//! of the veth, ICE as the controlling agent (Janus is lite) that also answers Janus's own
//! checks, DTLS in whichever role the SDP gave us, SRTP keys from the DTLS export, then
//! counting and timing whatever RTP arrives.
//!
//! The WHIP/WHEP `Peer` of `tests/support/webrtc.rs` cannot be used as is: its signalling
//! is WHIP/WHEP, it never answers Binding Requests, and it is always the DTLS client.
//! Its building blocks are reused: `DemuxConn`, `srtp_contexts`, certificates, the
//! controlling Binding Request, RTP parsing and payload stamps.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::mpsc, task::JoinHandle};
use webrtc_dtls::{
    config::{ClientAuthType, Config as DtlsConfig, ExtendedMasterSecretType},
    conn::DTLSConn,
    crypto::Certificate,
    extension::extension_use_srtp::SrtpProtectionProfile,
};
use webrtc_srtp::{context::Context as SrtpContext, protection_profile::ProtectionProfile};
use webrtc_util::{conn::Conn, KeyingMaterialExporter};

use super::{stun, JanusError};
use crate::{
    support::binding_request,
    webrtc::{
        fingerprint_of, fingerprint_of_der, new_certificate, now_ns, payload_stamp,
        random_ice_string, runtime, srtp_contexts, srtp_profile, Answer, DemuxConn, RtpPacket,
        EXPORTER_LABEL,
    },
};

const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Consent freshness checks while connected, as a browser sends them (RFC 7675).
const CONSENT_EVERY: Duration = Duration::from_secs(3);

/// A bound socket with its ICE credentials and DTLS certificate: everything the SDP needs
/// before the remote description is known.
pub struct Endpoint {
    socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    pub ufrag: String,
    pub pwd: String,
    pub cert: Certificate,
    pub fingerprint: String,
}

impl Endpoint {
    pub fn bind(ip: IpAddr) -> Result<Endpoint, JanusError> {
        let socket = runtime()
            .block_on(UdpSocket::bind(SocketAddr::new(ip, 0)))
            .map_err(|e| JanusError::Setup(format!("bind {ip}: {e}")))?;
        let local = socket
            .local_addr()
            .map_err(|e| JanusError::Setup(format!("local address: {e}")))?;
        let cert = new_certificate();
        Ok(Endpoint {
            socket: Arc::new(socket),
            local,
            ufrag: random_ice_string(8),
            pwd: random_ice_string(24),
            fingerprint: fingerprint_of(&cert),
            cert,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsRole {
    Client,
    Server,
}

impl DtlsRole {
    /// Our role given the remote's `a=setup` (an answer's `active`/`passive`, or an
    /// offer's `actpass`, to which we answer `active`).
    pub fn against(remote_setup: &str) -> Result<DtlsRole, JanusError> {
        match remote_setup {
            "active" => Ok(DtlsRole::Server),
            "passive" | "actpass" => Ok(DtlsRole::Client),
            other => Err(JanusError::Sdp(format!("unusable a=setup:{other}"))),
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub rtp: AtomicU64,
    pub rtp_bytes: AtomicU64,
    pub rtcp: AtomicU64,
    /// Janus's Binding Requests we answered, and those we could not verify.
    pub stun_answered: AtomicU64,
    pub stun_refused: AtomicU64,
    pub srtp_failures: AtomicU64,
    pub before_keys: AtomicU64,
    pub foreign_source: AtomicU64,
}

struct Shared {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    ufrag: String,
    pwd: String,
    local_ctx: Mutex<Option<SrtpContext>>,
    remote_ctx: Mutex<Option<SrtpContext>>,
    counters: Counters,
    /// receive - send (ns) of every stamped payload.
    latencies: Mutex<Vec<u64>>,
    stopped: AtomicBool,
}

/// A connected endpoint: ICE done, DTLS done, SRTP keys set.
pub struct JanusPeer {
    shared: Arc<Shared>,
    _dtls: Arc<DTLSConn>,
    tasks: Vec<JoinHandle<()>>,
    pub remote: SocketAddr,
    pub profile: ProtectionProfile,
}

/// ICE, DTLS and key export against the remote description `remote_sdp`.
pub fn connect(
    ep: Endpoint,
    remote_sdp: &Answer,
    role: DtlsRole,
    timeout: Duration,
) -> Result<JanusPeer, JanusError> {
    let remote = remote_sdp
        .candidates
        .iter()
        .find(|c| c.is_ipv4())
        .copied()
        .ok_or_else(|| JanusError::Sdp("no IPv4 host candidate".into()))?;
    runtime().block_on(establish(ep, remote_sdp, remote, role, timeout))
}

async fn establish(
    ep: Endpoint,
    remote_sdp: &Answer,
    remote: SocketAddr,
    role: DtlsRole,
    timeout: Duration,
) -> Result<JanusPeer, JanusError> {
    let shared = Arc::new(Shared {
        socket: ep.socket.clone(),
        remote,
        ufrag: ep.ufrag.clone(),
        pwd: ep.pwd.clone(),
        local_ctx: Mutex::new(None),
        remote_ctx: Mutex::new(None),
        counters: Counters::default(),
        latencies: Mutex::new(Vec::new()),
        stopped: AtomicBool::new(false),
    });
    let (dtls_tx, dtls_rx) = mpsc::unbounded_channel();
    let (ice_tx, mut ice_rx) = mpsc::channel::<Vec<u8>>(64);
    let mut tasks = vec![tokio::spawn(reader(shared.clone(), dtls_tx, ice_tx))];
    let abort = |tasks: &[JoinHandle<()>]| tasks.iter().for_each(JoinHandle::abort);

    // Controlling agent against a lite one: checks with USE-CANDIDATE nominate the pair.
    let deadline = Instant::now() + timeout;
    let mut nominated = false;
    'ice: while Instant::now() < deadline {
        let req = binding_request(&remote_sdp.ice_ufrag, &ep.ufrag, &remote_sdp.ice_pwd, true);
        let txid = req[8..20].to_vec();
        if let Err(e) = ep.socket.send_to(&req, remote).await {
            abort(&tasks);
            return Err(JanusError::Ice(format!("send check to {remote}: {e}")));
        }
        let wait = Instant::now() + CHECK_EVERY;
        while let Ok(Some(reply)) = tokio::time::timeout_at(wait.into(), ice_rx.recv()).await {
            if stun::is_success_for(&reply, &txid, &remote_sdp.ice_pwd) {
                nominated = true;
                break 'ice;
            }
        }
    }
    if !nominated {
        abort(&tasks);
        return Err(JanusError::Ice(format!(
            "no verified success response from {remote} within {timeout:?}"
        )));
    }
    drop(ice_rx);

    let conn: Arc<dyn Conn + Send + Sync> =
        Arc::new(DemuxConn::new(ep.socket.clone(), remote, dtls_rx));
    let config = DtlsConfig {
        certificates: vec![ep.cert.clone()],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        extended_master_secret: ExtendedMasterSecretType::Request,
        // The certificate is self-signed; it is checked against a=fingerprint below.
        insecure_skip_verify: true,
        client_auth: ClientAuthType::RequireAnyClientCert,
        ..Default::default()
    };
    let is_client = role == DtlsRole::Client;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2));
    let dtls = match tokio::time::timeout(
        left,
        DTLSConn::new(conn.clone(), config, is_client, None),
    )
    .await
    {
        Ok(Ok(d)) => Arc::new(d),
        Ok(Err(e)) => {
            let _ = conn.close().await;
            abort(&tasks);
            return Err(JanusError::Dtls(e.to_string()));
        }
        Err(_) => {
            let _ = conn.close().await;
            abort(&tasks);
            return Err(JanusError::Dtls(format!(
                "handshake ({role:?}) did not finish within {left:?}"
            )));
        }
    };
    let state = dtls.connection_state().await;
    let got = state
        .peer_certificates
        .first()
        .map(|der| fingerprint_of_der(der))
        .unwrap_or_default();
    if got != remote_sdp.fingerprint {
        abort(&tasks);
        return Err(JanusError::Dtls(format!(
            "Janus's certificate {got} does not match a=fingerprint {}",
            remote_sdp.fingerprint
        )));
    }
    let dtls_profile = dtls.selected_srtpprotection_profile();
    let profile = srtp_profile(dtls_profile).ok_or_else(|| {
        abort(&tasks);
        JanusError::Dtls(format!("no usable SRTP profile ({dtls_profile:?})"))
    })?;
    let len = 2 * (profile.key_len() + profile.salt_len());
    let material = state
        .export_keying_material(EXPORTER_LABEL, &[], len)
        .await
        .map_err(|e| {
            abort(&tasks);
            JanusError::Dtls(format!("key export: {e}"))
        })?;
    let (local, remote_ctx) = srtp_contexts(&material, profile, is_client).map_err(|e| {
        abort(&tasks);
        JanusError::Dtls(e)
    })?;
    *lock(&shared.local_ctx) = Some(local);
    *lock(&shared.remote_ctx) = Some(remote_ctx);
    tasks.push(tokio::spawn(consent(
        shared.clone(),
        remote_sdp.ice_ufrag.clone(),
        remote_sdp.ice_pwd.clone(),
    )));
    Ok(JanusPeer {
        shared,
        _dtls: dtls,
        tasks,
        remote,
        profile,
    })
}

/// A poisoned lock only means a reader task panicked; the data is counters and keys.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The socket's only reader, demultiplexing by first byte (RFC 7983).
async fn reader(
    shared: Arc<Shared>,
    dtls_tx: mpsc::UnboundedSender<Vec<u8>>,
    ice_tx: mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0u8; 4096];
    let c = &shared.counters;
    loop {
        let (n, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if from != shared.remote {
            c.foreign_source.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let d = &buf[..n];
        match d {
            // Binding Request (type 0x0001): Janus's own check.
            [0x00, 0x01, ..] => {
                match stun::answer_binding_request(d, &shared.ufrag, &shared.pwd, from) {
                    Ok(reply) => {
                        if shared.socket.send_to(&reply, from).await.is_ok() {
                            c.stun_answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        c.stun_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            [0..=3, ..] => {
                let _ = ice_tx.try_send(d.to_vec());
            }
            [20..=63, ..] => {
                let _ = dtls_tx.send(d.to_vec());
            }
            [128..=191, 192..=223, ..] => {
                let ok = lock(&shared.remote_ctx)
                    .as_mut()
                    .map(|ctx| ctx.decrypt_rtcp(d).is_ok());
                match ok {
                    Some(true) => c.rtcp.fetch_add(1, Ordering::Relaxed),
                    Some(false) => c.srtp_failures.fetch_add(1, Ordering::Relaxed),
                    None => c.before_keys.fetch_add(1, Ordering::Relaxed),
                };
            }
            [128..=191, ..] => handle_rtp(&shared, d),
            _ => {}
        }
    }
}

fn handle_rtp(shared: &Shared, d: &[u8]) {
    let c = &shared.counters;
    let plain = {
        let mut ctx = lock(&shared.remote_ctx);
        let Some(ctx) = ctx.as_mut() else {
            c.before_keys.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match ctx.decrypt_rtp(d) {
            Ok(p) => p,
            Err(_) => {
                c.srtp_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    let at_ns = now_ns();
    let Some(pkt) = RtpPacket::parse(&plain) else {
        c.srtp_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.rtp.fetch_add(1, Ordering::Relaxed);
    c.rtp_bytes
        .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
    if let Some((sent, _)) = payload_stamp(&pkt.payload) {
        lock(&shared.latencies).push(at_ns.saturating_sub(sent));
    }
}

async fn consent(shared: Arc<Shared>, remote_ufrag: String, remote_pwd: String) {
    loop {
        tokio::time::sleep(CONSENT_EVERY).await;
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let req = binding_request(&remote_ufrag, &shared.ufrag, &remote_pwd, false);
        let _ = shared.socket.send_to(&req, shared.remote).await;
    }
}

impl JanusPeer {
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn rtp_received(&self) -> u64 {
        self.shared.counters.rtp.load(Ordering::Relaxed)
    }

    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.shared.latencies))
    }

    /// SRTP-protect and send without blocking; false if it could not be protected or the
    /// socket buffer was full (the caller counts that as a send drop, never retries).
    pub fn try_send_rtp(&self, plain: &[u8]) -> bool {
        let protected = match lock(&self.shared.local_ctx).as_mut() {
            Some(ctx) => match ctx.encrypt_rtp(plain) {
                Ok(p) => p,
                Err(_) => return false,
            },
            None => return false,
        };
        self.shared
            .socket
            .try_send_to(&protected, self.remote)
            .is_ok()
    }
}

impl Drop for JanusPeer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}
