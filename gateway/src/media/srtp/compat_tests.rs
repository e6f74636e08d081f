//! Byte-for-byte agreement with webrtc-srtp 0.17 (the implementation this one replaces),
//! in both profiles and both directions (`cargo xtask bench srtp` compares their speed).
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
use webrtc_srtp::{
    context::Context,
    option::{srtcp_replay_protection, srtp_replay_protection},
    protection_profile::ProtectionProfile,
};

use super::{
    tests::{client, gateway, material, rtcp, rtp, rtp_with_extension, PROFILES},
    Profile, SrtpSession,
};

fn theirs(profile: P) -> ProtectionProfile {
    match profile {
        P::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        _ => ProtectionProfile::Aes128CmHmacSha1_80,
    }
}

/// webrtc-srtp contexts for the client's keys and for the gateway's keys.
fn contexts(profile: P, replay: bool) -> (Context, Context) {
    let m = material(profile);
    let p = Profile::of(profile).expect("profile");
    let (k, s) = (p.key_len(), p.salt_len());
    let ctx = |key: &[u8], salt: &[u8]| {
        let (rtp, rtcp) = if replay {
            (
                Some(srtp_replay_protection(1024)),
                Some(srtcp_replay_protection(1024)),
            )
        } else {
            (None, None)
        };
        Context::new(key, salt, theirs(profile), rtp, rtcp).expect("webrtc-srtp context")
    };
    (
        ctx(&m[..k], &m[2 * k..2 * k + s]),
        ctx(&m[k..2 * k], &m[2 * k + s..]),
    )
}

/// RTP packets across a sequence wrap (ROC 0 -> 1), of several sizes and header shapes,
/// with a little reordering; and RTCP from two senders.
fn rtp_stream() -> Vec<Vec<u8>> {
    let seqs = [
        65_530u16, 65_531, 65_533, 65_532, 65_534, 65_535, 0, 2, 1, 3, 4, 5, 300,
    ];
    let sizes = [0usize, 1, 15, 16, 17, 160, 1100];
    seqs.iter()
        .enumerate()
        .flat_map(|(i, &seq)| {
            let len = sizes[i % sizes.len()];
            [
                rtp(seq, 0x1234_5678, len),
                rtp_with_extension(seq, 0x0bad_cafe, len + 3),
            ]
        })
        .collect()
}

fn rtcp_stream() -> Vec<Vec<u8>> {
    (0..6u8)
        .map(|i| rtcp(0x1000 + u32::from(i % 2), i))
        .collect()
}

fn protect(s: &mut SrtpSession, plain: &[u8], rtcp: bool) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + 32];
    let n = if rtcp {
        s.protect_rtcp_into(plain, &mut out)
    } else {
        s.protect_rtp_into(plain, &mut out)
    }
    .expect("protect");
    out.truncate(n);
    out
}

#[test]
fn protected_bytes_equal_webrtc_srtp() {
    for profile in PROFILES {
        let mut ours = gateway(profile);
        let (_, mut reference) = contexts(profile, false);
        for plain in rtp_stream() {
            let expected = reference.encrypt_rtp(&plain).expect("webrtc-srtp");
            assert_eq!(
                protect(&mut ours, &plain, false),
                expected[..],
                "{profile:?} RTP"
            );
        }
        for plain in rtcp_stream() {
            let expected = reference.encrypt_rtcp(&plain).expect("webrtc-srtp");
            assert_eq!(
                protect(&mut ours, &plain, true),
                expected[..],
                "{profile:?} RTCP"
            );
        }
    }
}

#[test]
fn webrtc_srtp_output_unprotects_here() {
    for profile in PROFILES {
        let mut ours = gateway(profile);
        let (mut sender, _) = contexts(profile, false);
        for plain in rtp_stream() {
            let mut wire = sender.encrypt_rtp(&plain).expect("webrtc-srtp").to_vec();
            let n = ours.unprotect_rtp_in_place(&mut wire).expect("unprotect");
            assert_eq!(wire[..n], plain[..], "{profile:?}");
        }
        for plain in rtcp_stream() {
            let mut wire = sender.encrypt_rtcp(&plain).expect("webrtc-srtp").to_vec();
            let n = ours.unprotect_rtcp_in_place(&mut wire).expect("unprotect");
            assert_eq!(wire[..n], plain[..], "{profile:?}");
        }
    }
}

#[test]
fn our_output_unprotects_in_webrtc_srtp() {
    for profile in PROFILES {
        let mut ours = gateway(profile);
        let mut mirror = client(profile);
        let (mut client_side, mut gateway_side) = contexts(profile, true);
        for plain in rtp_stream() {
            let wire = protect(&mut ours, &plain, false);
            assert_eq!(
                gateway_side.decrypt_rtp(&wire).expect("webrtc-srtp")[..],
                plain[..]
            );
            let wire = protect(&mut mirror, &plain, false);
            assert_eq!(
                client_side.decrypt_rtp(&wire).expect("webrtc-srtp")[..],
                plain[..]
            );
        }
        for plain in rtcp_stream() {
            let wire = protect(&mut ours, &plain, true);
            assert_eq!(
                gateway_side.decrypt_rtcp(&wire).expect("webrtc-srtp")[..],
                plain[..]
            );
        }
    }
}
