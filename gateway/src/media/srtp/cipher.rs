//! One direction's transform, for either negotiated profile, dispatched without boxing.
use super::{
    aead_gcm::AeadGcm, aes_cm_hmac::AesCmHmac, kdf::SessionKeys, AuthFailed, Profile, ProtectError,
    SrtpError,
};

// Both transforms hold two expanded AES keys and differ by a few hundred bytes; the
// session that owns them is boxed once, so boxing a variant would only add a pointer hop.
#[allow(clippy::large_enum_variant)]
pub(super) enum Cipher {
    AesCmHmac(AesCmHmac),
    AeadGcm(AeadGcm),
}

impl Cipher {
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        let keys = SessionKeys::derive(master_key, master_salt).ok_or(SrtpError::MasterKey {
            key: master_key.len(),
            salt: master_salt.len(),
        })?;
        Ok(match profile {
            Profile::Aes128CmHmacSha1_80 => Cipher::AesCmHmac(AesCmHmac::new(&keys)),
            Profile::AeadAes128Gcm => {
                Cipher::AeadGcm(AeadGcm::new(&keys).map_err(|_| SrtpError::MasterKey {
                    key: master_key.len(),
                    salt: master_salt.len(),
                })?)
            }
        })
    }

    pub fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        plain_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, ProtectError> {
        match self {
            Cipher::AesCmHmac(c) => Ok(c.protect_rtp(buf, header_len, plain_len, ssrc, index)),
            Cipher::AeadGcm(c) => c
                .protect_rtp(buf, header_len, plain_len, ssrc, index)
                .map_err(|_| ProtectError::Cipher),
        }
    }

    pub fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, AuthFailed> {
        match self {
            Cipher::AesCmHmac(c) => c.unprotect_rtp(buf, header_len, ssrc, index),
            Cipher::AeadGcm(c) => c.unprotect_rtp(buf, header_len, ssrc, index),
        }
    }

    pub fn protect_rtcp(
        &self,
        buf: &mut [u8],
        plain_len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, ProtectError> {
        match self {
            Cipher::AesCmHmac(c) => Ok(c.protect_rtcp(buf, plain_len, ssrc, index)),
            Cipher::AeadGcm(c) => c
                .protect_rtcp(buf, plain_len, ssrc, index)
                .map_err(|_| ProtectError::Cipher),
        }
    }

    /// The E flag and 31-bit SRTCP index, read from where the profile puts them.
    pub fn rtcp_index(&self, buf: &[u8]) -> Option<(bool, u32)> {
        match self {
            Cipher::AesCmHmac(_) => AesCmHmac::rtcp_index(buf),
            Cipher::AeadGcm(_) => AeadGcm::rtcp_index(buf),
        }
    }

    pub fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        encrypted: bool,
        index: u32,
    ) -> Result<usize, AuthFailed> {
        match self {
            Cipher::AesCmHmac(c) => c.unprotect_rtcp(buf, ssrc, encrypted, index),
            Cipher::AeadGcm(c) => c.unprotect_rtcp(buf, ssrc, encrypted, index),
        }
    }
}
