//! SRTP/SRTCP for one session (webrtc-srtp), keyed from the DTLS exporter (RFC 5764).
use bytes::Bytes;
use webrtc_srtp::{
    context::Context,
    option::{srtcp_replay_protection, srtp_replay_protection},
    protection_profile::ProtectionProfile,
};

use super::dtls::SrtpKeys;

/// Replay window in packets (RFC 3711 asks for at least 64).
const REPLAY_WINDOW: usize = 1024;

/// Why a packet from the client was not accepted; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnprotectFailure {
    /// Authentication tag did not verify (tampered, wrong key, or garbage).
    Auth,
    /// Index already seen or too old for the replay window.
    Replay,
    /// Too short or not parseable as RTP/RTCP.
    Malformed,
    Other,
}

impl UnprotectFailure {
    pub const ALL: [UnprotectFailure; 4] = [
        UnprotectFailure::Auth,
        UnprotectFailure::Replay,
        UnprotectFailure::Malformed,
        UnprotectFailure::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnprotectFailure::Auth => "auth",
            UnprotectFailure::Replay => "replay",
            UnprotectFailure::Malformed => "malformed",
            UnprotectFailure::Other => "other",
        }
    }

    fn of(e: &webrtc_srtp::Error) -> Self {
        use webrtc_srtp::Error as E;
        match e {
            E::ErrFailedToVerifyAuthTag
            | E::RtpFailedToVerifyAuthTag
            | E::RtcpFailedToVerifyAuthTag => UnprotectFailure::Auth,
            E::ErrDuplicated | E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) => {
                UnprotectFailure::Replay
            }
            E::ErrTooShortRtp
            | E::ErrTooShortRtcp
            | E::SrtpTooSmall(..)
            | E::SrtcpTooSmall(..)
            | E::RtcpInvalidLengthAuthTag(..)
            | E::Rtcp(_)
            | E::Util(_) => UnprotectFailure::Malformed,
            _ => UnprotectFailure::Other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("unsupported SRTP profile {0:?}")]
    Profile(webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile),
    #[error("keying material is {got} bytes, profile needs {want}")]
    KeyLength { got: usize, want: usize },
    #[error("SRTP context: {0}")]
    Context(#[from] webrtc_srtp::Error),
}

/// The two directions of one DTLS-SRTP association, as seen by the DTLS server.
pub struct SrtpSession {
    /// Decrypts what the client (DTLS client) sends.
    remote: Context,
    /// Encrypts what roomgate sends.
    local: Context,
    pub profile: ProtectionProfile,
}

impl SrtpSession {
    pub fn new(keys: &SrtpKeys) -> Result<Self, SrtpError> {
        let profile = profile_of(keys.profile)?;
        let (k, s) = (profile.key_len(), profile.salt_len());
        let want = 2 * (k + s);
        if keys.material.len() != want {
            return Err(SrtpError::KeyLength {
                got: keys.material.len(),
                want,
            });
        }
        // RFC 5764 4.2: client_key | server_key | client_salt | server_salt.
        let m = &keys.material;
        let (client_key, server_key) = (&m[..k], &m[k..2 * k]);
        let (client_salt, server_salt) = (&m[2 * k..2 * k + s], &m[2 * k + s..]);
        let remote = Context::new(
            client_key,
            client_salt,
            profile,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )?;
        let local = Context::new(server_key, server_salt, profile, None, None)?;
        Ok(SrtpSession {
            remote,
            local,
            profile,
        })
    }

    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, UnprotectFailure> {
        self.remote
            .decrypt_rtp(packet)
            .map_err(|e| UnprotectFailure::of(&e))
    }

    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, UnprotectFailure> {
        self.remote
            .decrypt_rtcp(packet)
            .map_err(|e| UnprotectFailure::of(&e))
    }

    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, webrtc_srtp::Error> {
        self.local.encrypt_rtp(packet)
    }

    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, webrtc_srtp::Error> {
        self.local.encrypt_rtcp(packet)
    }
}

fn profile_of(
    p: webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile,
) -> Result<ProtectionProfile, SrtpError> {
    use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
    match p {
        P::Srtp_Aes128_Cm_Hmac_Sha1_80 => Ok(ProtectionProfile::Aes128CmHmacSha1_80),
        P::Srtp_Aead_Aes_128_Gcm => Ok(ProtectionProfile::AeadAes128Gcm),
        other => Err(SrtpError::Profile(other)),
    }
}

/// Bytes of keying material the exporter must produce for `p`.
pub fn material_len(
    p: webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile,
) -> Option<usize> {
    profile_of(p)
        .ok()
        .map(|pp| 2 * (pp.key_len() + pp.salt_len()))
}
