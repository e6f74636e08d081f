//! RFC 3711 4.3 session key derivation with the AES-CM PRF, key derivation rate 0
//! (RFC 5764 4.1.2). RFC 7714 11 uses the same PRF for AEAD_AES_128_GCM, with the
//! 12-byte master salt zero-padded to the 14 bytes the PRF expects.
use aes::{
    cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit},
    Aes128Enc,
};

pub(super) const KEY_LEN: usize = 16;
pub(super) const AUTH_KEY_LEN: usize = 20;
/// The longest master/session salt (AES-CM); AEAD uses the first 12 bytes.
pub(super) const SALT_LEN: usize = 14;

const LABEL_RTP_CIPHER: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_CIPHER: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// The session keys of one direction.
pub(super) struct SessionKeys {
    pub rtp_key: [u8; KEY_LEN],
    pub rtp_auth: [u8; AUTH_KEY_LEN],
    pub rtp_salt: [u8; SALT_LEN],
    pub rtcp_key: [u8; KEY_LEN],
    pub rtcp_auth: [u8; AUTH_KEY_LEN],
    pub rtcp_salt: [u8; SALT_LEN],
}

impl SessionKeys {
    /// `None` unless the master key is 16 bytes and the salt at most 14.
    pub fn derive(master_key: &[u8], master_salt: &[u8]) -> Option<Self> {
        if master_salt.len() > SALT_LEN {
            return None;
        }
        let prf = Aes128Enc::new_from_slice(master_key).ok()?;
        let mut keys = SessionKeys {
            rtp_key: [0; KEY_LEN],
            rtp_auth: [0; AUTH_KEY_LEN],
            rtp_salt: [0; SALT_LEN],
            rtcp_key: [0; KEY_LEN],
            rtcp_auth: [0; AUTH_KEY_LEN],
            rtcp_salt: [0; SALT_LEN],
        };
        prf_out(&prf, master_salt, LABEL_RTP_CIPHER, &mut keys.rtp_key);
        prf_out(&prf, master_salt, LABEL_RTP_AUTH, &mut keys.rtp_auth);
        prf_out(&prf, master_salt, LABEL_RTP_SALT, &mut keys.rtp_salt);
        prf_out(&prf, master_salt, LABEL_RTCP_CIPHER, &mut keys.rtcp_key);
        prf_out(&prf, master_salt, LABEL_RTCP_AUTH, &mut keys.rtcp_auth);
        prf_out(&prf, master_salt, LABEL_RTCP_SALT, &mut keys.rtcp_salt);
        Some(keys)
    }
}

/// AES-CM keystream with IV = (master_salt XOR (label << 48)) * 2^16: the label lands
/// in byte 7 of the 14-byte salt, and the low 16 bits count blocks.
fn prf_out(prf: &Aes128Enc, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        prf.encrypt_block(GenericArray::from_mut_slice(&mut block));
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}
