//! SRTP_AEAD_AES_128_GCM (RFC 7714): AES-128-GCM with a 16-byte tag, the RTP header (or
//! the SRTCP header and E|index word) as associated data, in place.
//!
//! GCM is ring's (already linked for DTLS): its AES-NI/PCLMUL assembly seals a 1100-byte
//! packet several times faster than the portable `aes-gcm` crate, and the bytes are the same.
use ring::{
    aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM},
    error::Unspecified,
};

use super::{
    kdf::SessionKeys,
    wire::{read_u32, RTCP_CLEAR, SRTCP_E, SRTCP_INDEX_LEN},
    AuthFailed,
};

pub(super) const TAG_LEN: usize = 16;
pub(super) const SALT_LEN: usize = 12;

pub(super) struct AeadGcm {
    rtp: LessSafeKey,
    rtp_salt: [u8; SALT_LEN],
    rtcp: LessSafeKey,
    rtcp_salt: [u8; SALT_LEN],
}

impl AeadGcm {
    pub fn new(keys: &SessionKeys) -> Result<Self, Unspecified> {
        Self::from_session(
            &keys.rtp_key,
            &aead_salt(&keys.rtp_salt),
            &keys.rtcp_key,
            &aead_salt(&keys.rtcp_salt),
        )
    }

    /// From session keys and salts directly (RFC 7714's test vectors are given so).
    pub fn from_session(
        rtp_key: &[u8; 16],
        rtp_salt: &[u8; SALT_LEN],
        rtcp_key: &[u8; 16],
        rtcp_salt: &[u8; SALT_LEN],
    ) -> Result<Self, Unspecified> {
        Ok(AeadGcm {
            rtp: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, rtp_key)?),
            rtp_salt: *rtp_salt,
            rtcp: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, rtcp_key)?),
            rtcp_salt: *rtcp_salt,
        })
    }

    /// Encrypts `buf[header_len..plain_len]` with the header as AAD and appends the tag.
    /// Fails only for a message over GCM's 2^36-byte limit.
    pub fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        plain_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, Unspecified> {
        let nonce = rtp_nonce(&self.rtp_salt, ssrc, index);
        let (header, rest) = buf.split_at_mut(header_len);
        let (body, tail) = rest.split_at_mut(plain_len - header_len);
        let tag = self
            .rtp
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), body)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(plain_len + TAG_LEN)
    }

    /// Verifies and decrypts the whole of `buf`; returns the plaintext length.
    pub fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, AuthFailed> {
        let end = buf.len().checked_sub(TAG_LEN).ok_or(AuthFailed)?;
        let body_len = end.checked_sub(header_len).ok_or(AuthFailed)?;
        let nonce = rtp_nonce(&self.rtp_salt, ssrc, index);
        let (header, rest) = buf.split_at_mut(header_len);
        let (body, tag) = rest.split_at_mut(body_len);
        let tag = Tag::try_from(&*tag).map_err(|_| AuthFailed)?;
        self.rtp
            .open_in_place_separate_tag(nonce, Aad::from(header), tag, body, 0..)
            .map_err(|_| AuthFailed)?;
        Ok(end)
    }

    /// Encrypts `buf[8..plain_len]`, then appends the tag and E|index (RFC 7714 9.1).
    pub fn protect_rtcp(
        &self,
        buf: &mut [u8],
        plain_len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, Unspecified> {
        let nonce = rtcp_nonce(&self.rtcp_salt, ssrc, index);
        let word = (index | SRTCP_E).to_be_bytes();
        let aad = rtcp_aad(&buf[..RTCP_CLEAR], word);
        let (body, tail) = buf[RTCP_CLEAR..].split_at_mut(plain_len - RTCP_CLEAR);
        let tag = self
            .rtcp
            .seal_in_place_separate_tag(nonce, Aad::from(aad), body)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        tail[TAG_LEN..TAG_LEN + SRTCP_INDEX_LEN].copy_from_slice(&word);
        Ok(plain_len + TAG_LEN + SRTCP_INDEX_LEN)
    }

    /// The E flag and SRTCP index: the packet's last word.
    pub fn rtcp_index(buf: &[u8]) -> Option<(bool, u32)> {
        let at = buf.len().checked_sub(SRTCP_INDEX_LEN)?;
        let word = read_u32(&buf[at..]);
        Some((word & SRTCP_E != 0, word & !SRTCP_E))
    }

    /// Verifies `buf` and decrypts it if the E flag says so; returns the RTCP length.
    pub fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        encrypted: bool,
        index: u32,
    ) -> Result<usize, AuthFailed> {
        let end = buf
            .len()
            .checked_sub(TAG_LEN + SRTCP_INDEX_LEN)
            .filter(|&end| end >= RTCP_CLEAR)
            .ok_or(AuthFailed)?;
        let nonce = rtcp_nonce(&self.rtcp_salt, ssrc, index);
        if encrypted {
            let mut word = [0u8; SRTCP_INDEX_LEN];
            word.copy_from_slice(&buf[end + TAG_LEN..]);
            let aad = rtcp_aad(&buf[..RTCP_CLEAR], word);
            let (body, tail) = buf[RTCP_CLEAR..].split_at_mut(end - RTCP_CLEAR);
            let tag = Tag::try_from(&tail[..TAG_LEN]).map_err(|_| AuthFailed)?;
            self.rtcp
                .open_in_place_separate_tag(nonce, Aad::from(aad), tag, body, 0..)
                .map_err(|_| AuthFailed)?;
            return Ok(end);
        }
        // Unencrypted SRTCP authenticates header, payload and E|index as AAD with an
        // empty plaintext (RFC 7714 9.2); bring the word next to the payload so the AAD
        // is one slice, and put the packet back as it came if the tag fails.
        buf[end..].rotate_left(TAG_LEN);
        let (aad, tag) = buf.split_at(end + SRTCP_INDEX_LEN);
        let verified = Tag::try_from(tag).and_then(|tag| {
            self.rtcp
                .open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut [], 0..)
                .map(|_| ())
        });
        if verified.is_err() {
            buf[end..].rotate_right(TAG_LEN);
            return Err(AuthFailed);
        }
        Ok(end)
    }
}

/// The derived salt is 14 bytes like AES-CM's; RFC 7714 uses the first 12.
fn aead_salt(derived: &[u8; super::kdf::SALT_LEN]) -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&derived[..SALT_LEN]);
    salt
}

/// RFC 7714 8.1: 00 00 | SSRC | ROC | SEQ, XOR the session salt.
fn rtp_nonce(salt: &[u8; SALT_LEN], ssrc: u32, index: u64) -> Nonce {
    let mut iv = [0u8; SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    xor(iv, salt)
}

/// RFC 7714 9.1: 00 00 | SSRC | 00 00 | 0 + 31-bit index, XOR the session salt.
fn rtcp_nonce(salt: &[u8; SALT_LEN], ssrc: u32, index: u32) -> Nonce {
    let mut iv = [0u8; SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & !SRTCP_E).to_be_bytes());
    xor(iv, salt)
}

/// The IV XOR the salt. Each (SSRC, index) is used once per key: the sender's index only
/// grows, which is the uniqueness ring's `assume_unique_for_key` asks for.
fn xor(mut iv: [u8; SALT_LEN], salt: &[u8; SALT_LEN]) -> Nonce {
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

/// RFC 7714 9.1: the 8 clear header bytes, then the E|index word.
fn rtcp_aad(clear: &[u8], word: [u8; SRTCP_INDEX_LEN]) -> [u8; RTCP_CLEAR + SRTCP_INDEX_LEN] {
    let mut aad = [0u8; RTCP_CLEAR + SRTCP_INDEX_LEN];
    aad[..RTCP_CLEAR].copy_from_slice(clear);
    aad[RTCP_CLEAR..].copy_from_slice(&word);
    aad
}
