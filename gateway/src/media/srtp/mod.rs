//! SRTP/SRTCP for one DTLS-SRTP association (RFC 3711, RFC 7714), keyed from the DTLS
//! exporter (RFC 5764). Packets are protected and unprotected in caller-owned buffers;
//! the only allocations are the per-SSRC tables growing when a stream starts.
//!
//! - `kdf`: session keys from the master key and salt.
//! - `aes_cm_hmac`, `aead_gcm`: the two transforms, in place; `cipher` picks one.
//! - `rtp_index`: ROC estimation; `replay`: the receive window.
//! - `ssrc_table`: bounded per-SSRC state; `wire`: header fields.
mod aead_gcm;
mod aes_cm_hmac;
mod cipher;
mod kdf;
mod replay;
mod rtp_index;
mod ssrc_table;
mod wire;

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;

use self::{
    cipher::Cipher,
    replay::ReplayWindow,
    ssrc_table::SsrcTable,
    wire::{rtcp_ssrc, rtp_header_len, rtp_seq_ssrc, RTCP_CLEAR},
};

use super::dtls::SrtpKeys;

/// Distinct SSRCs a client may send RTP from, and separately RTCP from. Their state
/// (index, replay window) is created only once a packet's tag verified, so forged SSRCs
/// cannot take a slot; the bound keeps a misbehaving client's state small. A WebRTC
/// client uses a handful (audio, video, their RTX/FEC, one RTCP sender).
const MAX_SSRCS: usize = 16;
/// SSRCs roomgate sends on one session: one per forwarded stream, so bounded by the
/// room. Past this the least recently used one is forgotten (its ROC restarts at 0),
/// which only a stream silent for that long can notice.
const MAX_SEND_SSRCS: usize = 256;
/// Highest SRTCP index (31 bits, RFC 3711 3.4); after it the keys must change.
const MAX_SRTCP_INDEX: u32 = (1 << 31) - 1;

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
    /// The packet index would pass 2^48 (RTP): the keys are spent.
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
}

/// The SRTP protection profiles roomgate negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Aes128CmHmacSha1_80,
    AeadAes128Gcm,
}

impl Profile {
    pub fn of(p: SrtpProtectionProfile) -> Option<Self> {
        match p {
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
                Some(Profile::Aes128CmHmacSha1_80)
            }
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(Profile::AeadAes128Gcm),
            _ => None,
        }
    }

    pub const fn key_len(self) -> usize {
        kdf::KEY_LEN
    }

    pub const fn salt_len(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => kdf::SALT_LEN,
            Profile::AeadAes128Gcm => aead_gcm::SALT_LEN,
        }
    }

    /// Bytes SRTP adds to an RTP packet: the tag.
    pub const fn rtp_overhead(self) -> usize {
        match self {
            Profile::Aes128CmHmacSha1_80 => aes_cm_hmac::TAG_LEN,
            Profile::AeadAes128Gcm => aead_gcm::TAG_LEN,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet: the E|index word and the tag.
    pub const fn rtcp_overhead(self) -> usize {
        wire::SRTCP_INDEX_LEN + self.rtp_overhead()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("unsupported SRTP profile {0:?}")]
    Profile(SrtpProtectionProfile),
    #[error("keying material is {got} bytes, profile needs {want}")]
    KeyLength { got: usize, want: usize },
    #[error("master key of {key} bytes and salt of {salt} do not fit AES-128")]
    MasterKey { key: usize, salt: usize },
}

/// Why roomgate could not protect one of its own packets.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectError {
    #[error("RTP packet of {0} bytes has no complete header")]
    MalformedRtp(usize),
    #[error("RTCP packet of {0} bytes is shorter than its 8-byte header")]
    MalformedRtcp(usize),
    #[error("buffer holds {have} bytes, the protected packet needs {need}")]
    BufferTooSmall { need: usize, have: usize },
    #[error("packet index exhausted on SSRC {0:#010x}: the session needs new keys")]
    IndexExhausted(u32),
    #[error("the cipher refused the packet")]
    Cipher,
}

/// A tag that did not verify.
#[derive(Debug)]
struct AuthFailed;

struct SendRtp {
    highest: u64,
    last_use: u64,
}

struct SendRtcp {
    index: u32,
    last_use: u64,
}

/// The two directions of one DTLS-SRTP association, as seen by the DTLS server.
pub struct SrtpSession {
    pub profile: Profile,
    /// Decrypts what the client (DTLS client) sends.
    remote: Cipher,
    /// Encrypts what roomgate sends.
    local: Cipher,
    rtp_in: SsrcTable<ReplayWindow>,
    rtcp_in: SsrcTable<ReplayWindow>,
    rtp_out: SsrcTable<SendRtp>,
    rtcp_out: SsrcTable<SendRtcp>,
    /// Packets protected so far: the clock that orders send state for eviction.
    sent: u64,
}

impl SrtpSession {
    pub fn new(keys: &SrtpKeys) -> Result<Self, SrtpError> {
        let profile = Profile::of(keys.profile).ok_or(SrtpError::Profile(keys.profile))?;
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
        Ok(SrtpSession {
            profile,
            remote: Cipher::new(profile, client_key, client_salt)?,
            local: Cipher::new(profile, server_key, server_salt)?,
            rtp_in: SsrcTable::new(MAX_SSRCS),
            rtcp_in: SsrcTable::new(MAX_SSRCS),
            rtp_out: SsrcTable::new(MAX_SEND_SSRCS),
            rtcp_out: SsrcTable::new(MAX_SEND_SSRCS),
            sent: 0,
        })
    }

    /// Verifies and decrypts the SRTP packet filling `buf`; returns the length of the
    /// RTP packet now at its start. Every check runs before a new SSRC gets state. After
    /// a failure `buf` holds no plaintext, but is not necessarily the packet as received.
    pub fn unprotect_rtp_in_place(&mut self, buf: &mut [u8]) -> Result<usize, UnprotectFailure> {
        let header_len = rtp_header_len(buf).ok_or(UnprotectFailure::Malformed)?;
        if buf.len() < header_len + self.profile.rtp_overhead() {
            return Err(UnprotectFailure::Malformed);
        }
        let (seq, ssrc) = rtp_seq_ssrc(buf);
        let slot = self.rtp_in.find(ssrc);
        let index = match slot.and_then(|i| self.rtp_in.get(i)) {
            Some(window) => {
                let index =
                    rtp_index::estimate(window.top(), seq).ok_or(UnprotectFailure::Other)?;
                if !window.is_fresh(index) {
                    return Err(UnprotectFailure::Replay);
                }
                index
            }
            None if self.rtp_in.is_full() => return Err(UnprotectFailure::SsrcLimit),
            // A stream's first packet: its ROC starts at 0 (RFC 3711 3.3.1).
            None => u64::from(seq),
        };
        let len = self
            .remote
            .unprotect_rtp(buf, header_len, ssrc, index)
            .map_err(|AuthFailed| UnprotectFailure::Auth)?;
        match slot.and_then(|i| self.rtp_in.get_mut(i)) {
            Some(window) => window.accept(index),
            None => {
                self.rtp_in.insert(ssrc, ReplayWindow::new(index));
            }
        }
        Ok(len)
    }

    /// Verifies and (if its E flag is set) decrypts the SRTCP packet filling `buf`;
    /// returns the length of the RTCP compound packet now at its start.
    pub fn unprotect_rtcp_in_place(&mut self, buf: &mut [u8]) -> Result<usize, UnprotectFailure> {
        if buf.len() < RTCP_CLEAR + self.profile.rtcp_overhead() {
            return Err(UnprotectFailure::Malformed);
        }
        let (encrypted, srtcp_index) = self
            .remote
            .rtcp_index(buf)
            .ok_or(UnprotectFailure::Malformed)?;
        let index = u64::from(srtcp_index);
        let ssrc = rtcp_ssrc(buf);
        let slot = self.rtcp_in.find(ssrc);
        match slot.and_then(|i| self.rtcp_in.get(i)) {
            Some(window) if !window.is_fresh(index) => return Err(UnprotectFailure::Replay),
            Some(_) => {}
            None if self.rtcp_in.is_full() => return Err(UnprotectFailure::SsrcLimit),
            None => {}
        }
        let len = self
            .remote
            .unprotect_rtcp(buf, ssrc, encrypted, srtcp_index)
            .map_err(|AuthFailed| UnprotectFailure::Auth)?;
        match slot.and_then(|i| self.rtcp_in.get_mut(i)) {
            Some(window) => window.accept(index),
            None => {
                self.rtcp_in.insert(ssrc, ReplayWindow::new(index));
            }
        }
        Ok(len)
    }

    /// Protects the RTP packet `plain` into `out` (which needs
    /// [`Profile::rtp_overhead`] bytes more); returns the SRTP packet's length.
    pub fn protect_rtp_into(
        &mut self,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ProtectError> {
        let need = plain.len() + self.profile.rtp_overhead();
        let have = out.len();
        let dst = out
            .get_mut(..plain.len())
            .ok_or(ProtectError::BufferTooSmall { need, have })?;
        dst.copy_from_slice(plain);
        self.protect_rtp_in_place(out, plain.len())
    }

    /// Protects the RTP packet in `buf[..plain_len]` where it is; `buf` has room for the
    /// tag. Returns the SRTP packet's length.
    pub fn protect_rtp_in_place(
        &mut self,
        buf: &mut [u8],
        plain_len: usize,
    ) -> Result<usize, ProtectError> {
        let need = plain_len + self.profile.rtp_overhead();
        if buf.len() < need {
            return Err(ProtectError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let header_len =
            rtp_header_len(&buf[..plain_len]).ok_or(ProtectError::MalformedRtp(plain_len))?;
        let (seq, ssrc) = rtp_seq_ssrc(buf);
        let slot = self.rtp_out.find(ssrc);
        let index = match slot.and_then(|i| self.rtp_out.get(i)) {
            Some(state) => rtp_index::estimate(state.highest, seq),
            None => Some(u64::from(seq)),
        }
        .ok_or(ProtectError::IndexExhausted(ssrc))?;
        let len = self
            .local
            .protect_rtp(buf, header_len, plain_len, ssrc, index)?;
        self.sent += 1;
        let fresh = SendRtp {
            highest: index,
            last_use: self.sent,
        };
        match slot.and_then(|i| self.rtp_out.get_mut(i)) {
            Some(state) => {
                state.highest = state.highest.max(index);
                state.last_use = self.sent;
            }
            None => {
                if self.rtp_out.is_full() {
                    let lru = least_recent(self.rtp_out.states().iter().map(|s| s.last_use));
                    self.rtp_out.replace(lru, ssrc, fresh);
                } else {
                    self.rtp_out.insert(ssrc, fresh);
                }
            }
        }
        Ok(len)
    }

    /// Protects the RTCP compound packet `plain` into `out` (which needs
    /// [`Profile::rtcp_overhead`] bytes more); returns the SRTCP packet's length.
    pub fn protect_rtcp_into(
        &mut self,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ProtectError> {
        let need = plain.len() + self.profile.rtcp_overhead();
        let have = out.len();
        let dst = out
            .get_mut(..plain.len())
            .ok_or(ProtectError::BufferTooSmall { need, have })?;
        dst.copy_from_slice(plain);
        self.protect_rtcp_in_place(out, plain.len())
    }

    /// Protects the RTCP packet in `buf[..plain_len]` where it is; `buf` has room for
    /// the E|index word and the tag. Returns the SRTCP packet's length.
    pub fn protect_rtcp_in_place(
        &mut self,
        buf: &mut [u8],
        plain_len: usize,
    ) -> Result<usize, ProtectError> {
        if plain_len < RTCP_CLEAR {
            return Err(ProtectError::MalformedRtcp(plain_len));
        }
        let need = plain_len + self.profile.rtcp_overhead();
        if buf.len() < need {
            return Err(ProtectError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let ssrc = rtcp_ssrc(buf);
        let slot = self.rtcp_out.find(ssrc);
        // Each SSRC's first SRTCP index is 1, as webrtc-srtp and libsrtp number them.
        let index = match slot.and_then(|i| self.rtcp_out.get(i)) {
            Some(state) if state.index >= MAX_SRTCP_INDEX => {
                return Err(ProtectError::IndexExhausted(ssrc))
            }
            Some(state) => state.index + 1,
            None => 1,
        };
        let len = self.local.protect_rtcp(buf, plain_len, ssrc, index)?;
        self.sent += 1;
        let fresh = SendRtcp {
            index,
            last_use: self.sent,
        };
        match slot.and_then(|i| self.rtcp_out.get_mut(i)) {
            Some(state) => *state = fresh,
            None => {
                if self.rtcp_out.is_full() {
                    let lru = least_recent(self.rtcp_out.states().iter().map(|s| s.last_use));
                    self.rtcp_out.replace(lru, ssrc, fresh);
                } else {
                    self.rtcp_out.insert(ssrc, fresh);
                }
            }
        }
        Ok(len)
    }
}

/// Slot of the smallest `last_use`.
fn least_recent(last_uses: impl Iterator<Item = u64>) -> usize {
    last_uses
        .enumerate()
        .min_by_key(|&(_, used)| used)
        .map_or(0, |(slot, _)| slot)
}

/// Bytes of keying material the exporter must produce for `p`.
pub fn material_len(p: SrtpProtectionProfile) -> Option<usize> {
    Profile::of(p).map(|pp| 2 * (pp.key_len() + pp.salt_len()))
}
