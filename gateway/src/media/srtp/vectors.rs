//! Known-answer tests: RFC 3711 B.2 and B.3, RFC 7714 16.1 and 17.1, and the
//! AES_CM_128_HMAC_SHA1_80 packet libsrtp's driver checks (master key in, so it covers
//! derivation, counter mode and HMAC together).
use super::{
    aead_gcm::AeadGcm,
    aes_cm_hmac::AesCmHmac,
    kdf::{SessionKeys, AUTH_KEY_LEN, KEY_LEN, SALT_LEN},
    SrtpSession,
};
use crate::media::dtls::SrtpKeys;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| (b as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

const B3_MASTER_KEY: &str = "E1F97A0D3E018BE0D64FA32C06DE4139";
const B3_MASTER_SALT: &str = "0EC675AD498AFEEBB6960B3AABE6";

#[test]
fn rfc3711_b3_key_derivation() {
    let keys = SessionKeys::derive(&hex(B3_MASTER_KEY), &hex(B3_MASTER_SALT)).expect("derive");
    assert_eq!(
        keys.rtp_key[..],
        hex("C61E7A93744F39EE10734AFE3FF7A087")[..]
    );
    assert_eq!(keys.rtp_salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
    // B.3 lists 94 bytes of auth key; HMAC-SHA1 uses the first 20.
    assert_eq!(
        keys.rtp_auth[..],
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
    );
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let mut keys = SessionKeys::derive(&[0; KEY_LEN], &[0; SALT_LEN]).expect("derive");
    keys.rtp_key
        .copy_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C"));
    keys.rtp_salt
        .copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
    keys.rtp_auth = [0; AUTH_KEY_LEN];
    let cipher = AesCmHmac::new(&keys);
    // SSRC 0, index 0: a zero payload encrypts to the keystream itself.
    let mut packet = [0u8; 12 + 48 + 10];
    packet[0] = 0x80;
    assert_eq!(cipher.protect_rtp(&mut packet, 12, 60, 0, 0), 70);
    let keystream = hex("E03EAD0935C95E80E166B16DD92B4EB4
         D23513162B02D0F72A43A2FE4A5F97AB
         41E95B3BB0A2E8DD477901E4FCA894C0");
    assert_eq!(packet[12..60], keystream[..]);
}

#[test]
fn libsrtp_aes_cm_hmac_sha1_80_packet() {
    // The gateway's sending half is the server key and salt (RFC 5764 4.2).
    let mut material = vec![0u8; 16];
    material.extend_from_slice(&hex(B3_MASTER_KEY));
    material.extend_from_slice(&[0u8; 14]);
    material.extend_from_slice(&hex(B3_MASTER_SALT));
    let mut session = SrtpSession::new(&SrtpKeys {
        profile: P::Srtp_Aes128_Cm_Hmac_Sha1_80,
        material,
    })
    .expect("session");
    let plain = hex("800f1234decafbadcafebabe abababababababababababababababab");
    let expected =
        hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb");
    let mut out = [0u8; 64];
    let n = session.protect_rtp_into(&plain, &mut out).expect("protect");
    assert_eq!(out[..n], expected[..]);
}

const GCM_KEY: &str = "000102030405060708090a0b0c0d0e0f";
const GCM_SALT: &str = "517569642070726f2071756f";

fn rfc7714_cipher() -> AeadGcm {
    let mut key = [0u8; 16];
    key.copy_from_slice(&hex(GCM_KEY));
    let mut salt = [0u8; 12];
    salt.copy_from_slice(&hex(GCM_SALT));
    AeadGcm::from_session(&key, &salt, &key, &salt).expect("AES-128-GCM key")
}

#[test]
fn rfc7714_16_1_rtp() {
    let plain = hex(
        "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
         20646976 69736120 696e2070 61727465 73207472 6573",
    );
    let expected = hex(
        "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca
         be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1
         6a9152cf 765ee439 0cce",
    );
    let cipher = rfc7714_cipher();
    let mut buf = plain.clone();
    buf.resize(plain.len() + 16, 0);
    let n = cipher
        .protect_rtp(&mut buf, 12, plain.len(), 0x5501_a0b2, 0xf17b)
        .expect("protect");
    assert_eq!(buf[..n], expected[..]);
    let n = cipher
        .unprotect_rtp(&mut buf, 12, 0x5501_a0b2, 0xf17b)
        .expect("RFC 7714 packet verifies");
    assert_eq!(buf[..n], plain[..]);
}

#[test]
fn rfc7714_17_1_rtcp() {
    let plain = hex(
        "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
         deadbeef deadbeef deadbeef deadbeef deadbeef",
    );
    let expected = hex(
        "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
         c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
         45d9eade 800005d4",
    );
    let cipher = rfc7714_cipher();
    let mut buf = plain.clone();
    buf.resize(plain.len() + 20, 0);
    let n = cipher
        .protect_rtcp(&mut buf, plain.len(), 0x4d61_7273, 0x5d4)
        .expect("protect");
    assert_eq!(buf[..n], expected[..]);
    assert_eq!(AeadGcm::rtcp_index(&buf), Some((true, 0x5d4)));
    let n = cipher
        .unprotect_rtcp(&mut buf, 0x4d61_7273, true, 0x5d4)
        .expect("RFC 7714 packet verifies");
    assert_eq!(buf[..n], plain[..]);
}
