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
/// Distinct SSRCs (RTP and RTCP senders together) one session may use. webrtc-srtp keeps
/// per-SSRC state (replay window, rollover counter) and creates it before the auth tag is
/// checked, so without a bound a stream of forged SSRCs would grow it without limit. A
/// WebRTC client uses a handful (audio, video, their RTX/FEC, one RTCP sender).
const MAX_SSRCS: usize = 16;
/// RTP fixed header; RTCP header + sender SSRC, then the 4-byte SRTCP E/index word.
const RTP_HEADER: usize = 12;
const SRTCP_MIN_PLAIN: usize = 8 + 4;

/// Why a packet from the client was not accepted; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnprotectFailure {
    /// Authentication tag did not verify (tampered, wrong key, or garbage).
    Auth,
    /// Index already seen or too old for the replay window.
    Replay,
    /// Too short or not parseable as RTP/RTCP.
    Malformed,
    /// The session already used [`MAX_SSRCS`] SSRCs; a new one is refused.
    SsrcLimit,
    Other,
}

impl UnprotectFailure {
    pub const ALL: [UnprotectFailure; 5] = [
        UnprotectFailure::Auth,
        UnprotectFailure::Replay,
        UnprotectFailure::Malformed,
        UnprotectFailure::SsrcLimit,
        UnprotectFailure::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnprotectFailure::Auth => "auth",
            UnprotectFailure::Replay => "replay",
            UnprotectFailure::Malformed => "malformed",
            UnprotectFailure::SsrcLimit => "ssrc_limit",
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
    /// SSRCs this session's client has used (bounded by [`MAX_SSRCS`]).
    ssrcs: Vec<u32>,
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
            ssrcs: Vec::with_capacity(4),
        })
    }

    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, UnprotectFailure> {
        // Length and SSRC checks come first: webrtc-srtp indexes into short packets and
        // allocates per-SSRC state before it verifies anything.
        let tags = self.profile.rtp_auth_tag_len() + self.profile.aead_auth_tag_len();
        if packet.len() < RTP_HEADER + tags {
            return Err(UnprotectFailure::Malformed);
        }
        self.admit_ssrc(&packet[8..12])?;
        self.remote
            .decrypt_rtp(packet)
            .map_err(|e| UnprotectFailure::of(&e))
    }

    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, UnprotectFailure> {
        let tags = self.profile.rtcp_auth_tag_len() + self.profile.aead_auth_tag_len();
        if packet.len() < SRTCP_MIN_PLAIN + tags {
            return Err(UnprotectFailure::Malformed);
        }
        self.admit_ssrc(&packet[4..8])?;
        self.remote
            .decrypt_rtcp(packet)
            .map_err(|e| UnprotectFailure::of(&e))
    }

    fn admit_ssrc(&mut self, raw: &[u8]) -> Result<(), UnprotectFailure> {
        let ssrc = u32::from_be_bytes(raw.try_into().map_err(|_| UnprotectFailure::Malformed)?);
        if self.ssrcs.contains(&ssrc) {
            return Ok(());
        }
        if self.ssrcs.len() >= MAX_SSRCS {
            return Err(UnprotectFailure::SsrcLimit);
        }
        self.ssrcs.push(ssrc);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;

    fn session(profile: P) -> SrtpSession {
        let len = material_len(profile).unwrap();
        SrtpSession::new(&SrtpKeys {
            profile,
            material: (0..len as u8).collect(),
        })
        .unwrap()
    }

    #[test]
    fn short_packets_are_malformed_not_a_panic() {
        for profile in [P::Srtp_Aes128_Cm_Hmac_Sha1_80, P::Srtp_Aead_Aes_128_Gcm] {
            let mut s = session(profile);
            for n in 0..40 {
                let mut rtcp = vec![0u8; n];
                if n >= 2 {
                    rtcp[0] = 0x80;
                    rtcp[1] = 0xc8;
                }
                let _ = s.unprotect_rtcp(&rtcp);
                let mut rtp = vec![0u8; n];
                if n >= 1 {
                    rtp[0] = 0x80;
                }
                let _ = s.unprotect_rtp(&rtp);
            }
            assert_eq!(
                s.unprotect_rtcp(&[0x80, 0xc8, 0, 1]),
                Err(UnprotectFailure::Malformed)
            );
        }
    }

    #[test]
    fn forged_ssrcs_are_bounded() {
        let mut s = session(P::Srtp_Aes128_Cm_Hmac_Sha1_80);
        let packet = |ssrc: u32| {
            let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[0u8; 40]);
            p
        };
        for ssrc in 0..MAX_SSRCS as u32 {
            assert_eq!(s.unprotect_rtp(&packet(ssrc)), Err(UnprotectFailure::Auth));
        }
        assert_eq!(
            s.unprotect_rtp(&packet(1000)),
            Err(UnprotectFailure::SsrcLimit)
        );
        // A known SSRC still gets to the cipher.
        assert_eq!(s.unprotect_rtp(&packet(3)), Err(UnprotectFailure::Auth));
    }
}
