//! SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711 4.1.1, 4.2.1; RFC 5764 4.1.2): AES-128 counter
//! mode and an 80-bit HMAC-SHA1 tag, for RTP and SRTCP, in place.
use aes::{
    cipher::{InnerIvInit, KeyInit, StreamCipher},
    Aes128Enc,
};
use hmac::{digest::generic_array::GenericArray, Hmac, Mac};
use sha1::Sha1;

use super::{
    kdf::{SessionKeys, AUTH_KEY_LEN, SALT_LEN},
    wire::{read_u32, RTCP_CLEAR, SRTCP_E, SRTCP_INDEX_LEN},
    AuthFailed,
};

pub(super) const TAG_LEN: usize = 10;

type HmacSha1 = Hmac<Sha1>;

pub(super) struct AesCmHmac {
    rtp_key: Aes128Enc,
    rtp_salt: [u8; SALT_LEN],
    /// Keyed once; each packet clones this state (a few hundred bytes, no heap).
    rtp_auth: HmacSha1,
    rtcp_key: Aes128Enc,
    rtcp_salt: [u8; SALT_LEN],
    rtcp_auth: HmacSha1,
}

impl AesCmHmac {
    pub fn new(keys: &SessionKeys) -> Self {
        AesCmHmac {
            rtp_key: Aes128Enc::new(&keys.rtp_key.into()),
            rtp_salt: keys.rtp_salt,
            rtp_auth: hmac_key(&keys.rtp_auth),
            rtcp_key: Aes128Enc::new(&keys.rtcp_key.into()),
            rtcp_salt: keys.rtcp_salt,
            rtcp_auth: hmac_key(&keys.rtcp_auth),
        }
    }

    /// Encrypts `buf[header_len..plain_len]` and appends the tag; `buf` has room for it.
    pub fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        plain_len: usize,
        ssrc: u32,
        index: u64,
    ) -> usize {
        keystream(
            &self.rtp_key,
            &self.rtp_salt,
            ssrc,
            index,
            &mut buf[header_len..plain_len],
        );
        let tag = rtp_tag(&self.rtp_auth, &buf[..plain_len], index);
        buf[plain_len..plain_len + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        plain_len + TAG_LEN
    }

    /// Verifies and decrypts the whole of `buf` (header, payload, tag); returns the
    /// plaintext length. Nothing is decrypted unless the tag verifies.
    pub fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, AuthFailed> {
        let end = buf.len().checked_sub(TAG_LEN).ok_or(AuthFailed)?;
        let mut mac = self.rtp_auth.clone();
        mac.update(&buf[..end]);
        mac.update(&super::rtp_index::roc(index).to_be_bytes());
        mac.verify_truncated_left(&buf[end..])
            .map_err(|_| AuthFailed)?;
        keystream(
            &self.rtp_key,
            &self.rtp_salt,
            ssrc,
            index,
            &mut buf[header_len..end],
        );
        Ok(end)
    }

    /// Encrypts `buf[8..plain_len]`, then appends E|index and the tag.
    pub fn protect_rtcp(&self, buf: &mut [u8], plain_len: usize, ssrc: u32, index: u32) -> usize {
        let srtcp_index = u64::from(index);
        keystream(
            &self.rtcp_key,
            &self.rtcp_salt,
            ssrc,
            srtcp_index,
            &mut buf[RTCP_CLEAR..plain_len],
        );
        let word_end = plain_len + SRTCP_INDEX_LEN;
        buf[plain_len..word_end].copy_from_slice(&(index | SRTCP_E).to_be_bytes());
        let mut mac = self.rtcp_auth.clone();
        mac.update(&buf[..word_end]);
        let tag = mac.finalize().into_bytes();
        buf[word_end..word_end + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        word_end + TAG_LEN
    }

    /// The E flag and SRTCP index of a packet at least [`TAG_LEN`] + 4 bytes long.
    pub fn rtcp_index(buf: &[u8]) -> Option<(bool, u32)> {
        let at = buf.len().checked_sub(TAG_LEN + SRTCP_INDEX_LEN)?;
        let word = read_u32(&buf[at..]);
        Some((word & SRTCP_E != 0, word & !SRTCP_E))
    }

    /// Verifies `buf`, and decrypts it if the E flag says so; returns the RTCP length.
    pub fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        encrypted: bool,
        index: u32,
    ) -> Result<usize, AuthFailed> {
        let signed = buf.len().checked_sub(TAG_LEN).ok_or(AuthFailed)?;
        let end = signed.checked_sub(SRTCP_INDEX_LEN).ok_or(AuthFailed)?;
        if end < RTCP_CLEAR {
            return Err(AuthFailed);
        }
        let mut mac = self.rtcp_auth.clone();
        mac.update(&buf[..signed]);
        mac.verify_truncated_left(&buf[signed..])
            .map_err(|_| AuthFailed)?;
        if encrypted {
            keystream(
                &self.rtcp_key,
                &self.rtcp_salt,
                ssrc,
                u64::from(index),
                &mut buf[RTCP_CLEAR..end],
            );
        }
        Ok(end)
    }
}

/// A 20-byte key zero-padded to SHA-1's 64-byte block is exactly what HMAC itself does
/// with a short key (RFC 2104 2), and this form has no failure case.
fn hmac_key(key: &[u8; AUTH_KEY_LEN]) -> HmacSha1 {
    let mut block = [0u8; 64];
    block[..AUTH_KEY_LEN].copy_from_slice(key);
    <HmacSha1 as Mac>::new(GenericArray::from_slice(&block))
}

fn rtp_tag(auth: &HmacSha1, authenticated: &[u8], index: u64) -> [u8; 20] {
    let mut mac = auth.clone();
    mac.update(authenticated);
    mac.update(&super::rtp_index::roc(index).to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// XORs the AES-CM keystream for (SSRC, 48-bit index) into `data` (RFC 3711 4.1.1):
/// IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
fn keystream(key: &Aes128Enc, salt: &[u8; SALT_LEN], ssrc: u32, index: u64, data: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..14].copy_from_slice(&index.to_be_bytes()[2..]);
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    let core = ctr::CtrCore::<&Aes128Enc, ctr::flavors::Ctr128BE>::inner_iv_init(key, &iv.into());
    let mut ctr = ctr::Ctr128BE::<&Aes128Enc>::from_core(core);
    ctr.apply_keystream(data);
}
