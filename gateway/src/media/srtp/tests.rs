use super::*;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;

pub(super) const PROFILES: [P; 2] = [P::Srtp_Aes128_Cm_Hmac_Sha1_80, P::Srtp_Aead_Aes_128_Gcm];

/// Keying material as the exporter lays it out; distinct bytes so that a swapped key or
/// salt would show.
pub(super) fn material(profile: P) -> Vec<u8> {
    let len = material_len(profile).expect("supported profile");
    (0..len as u8)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect()
}

/// The gateway side (DTLS server) of a session.
pub(super) fn gateway(profile: P) -> SrtpSession {
    SrtpSession::new(&SrtpKeys {
        profile,
        material: material(profile),
    })
    .expect("session")
}

/// A session whose sending direction uses the client's keys: what it protects, the
/// gateway side unprotects.
pub(super) fn client(profile: P) -> SrtpSession {
    let m = material(profile);
    let p = Profile::of(profile).expect("supported profile");
    let (k, s) = (p.key_len(), p.salt_len());
    let mut swapped = Vec::with_capacity(m.len());
    swapped.extend_from_slice(&m[k..2 * k]);
    swapped.extend_from_slice(&m[..k]);
    swapped.extend_from_slice(&m[2 * k + s..]);
    swapped.extend_from_slice(&m[2 * k..2 * k + s]);
    SrtpSession::new(&SrtpKeys {
        profile,
        material: swapped,
    })
    .expect("session")
}

pub(super) fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// RTP with two CSRCs and an RFC 8285 one-byte header extension (one element + padding).
pub(super) fn rtp_with_extension(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x92, 0xe0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0x1111_1111u32.to_be_bytes());
    p.extend_from_slice(&0x2222_2222u32.to_be_bytes());
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xab, 0, 0]);
    p.extend((0..payload_len).map(|i| i as u8));
    p
}

/// A receiver report with one report block.
pub(super) fn rtcp(ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[fill; 24]);
    p
}

fn protect_rtp(s: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0; plain.len() + s.profile.rtp_overhead()];
    let n = s.protect_rtp_into(plain, &mut out).expect("protect");
    assert_eq!(n, out.len());
    out
}

fn protect_rtcp(s: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0; plain.len() + s.profile.rtcp_overhead()];
    let n = s.protect_rtcp_into(plain, &mut out).expect("protect");
    assert_eq!(n, out.len());
    out
}

fn unprotect_rtp(s: &mut SrtpSession, packet: &[u8]) -> Result<Vec<u8>, UnprotectFailure> {
    let mut buf = packet.to_vec();
    let n = s.unprotect_rtp_in_place(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn unprotect_rtcp(s: &mut SrtpSession, packet: &[u8]) -> Result<Vec<u8>, UnprotectFailure> {
    let mut buf = packet.to_vec();
    let n = s.unprotect_rtcp_in_place(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn rtp_and_rtcp_round_trip_in_both_profiles() {
    for profile in PROFILES {
        let (mut c, mut g) = (client(profile), gateway(profile));
        for (seq, len) in [(1u16, 0usize), (2, 1), (3, 16), (4, 17), (5, 1100)] {
            for plain in [rtp(seq, 0xabc, len), rtp_with_extension(seq, 0xdef, len)] {
                let wire = protect_rtp(&mut c, &plain);
                if len > 0 {
                    assert_ne!(wire[12..plain.len()], plain[12..], "{profile:?} encrypts");
                }
                assert_eq!(unprotect_rtp(&mut g, &wire), Ok(plain));
            }
            let plain = rtcp(0xabc, seq as u8);
            let wire = protect_rtcp(&mut c, &plain);
            assert_ne!(
                wire[8..plain.len()],
                plain[8..],
                "{profile:?} encrypts RTCP"
            );
            assert_eq!(unprotect_rtcp(&mut g, &wire), Ok(plain));
        }
    }
}

#[test]
fn in_place_and_into_give_the_same_bytes() {
    for profile in PROFILES {
        let (mut a, mut b) = (gateway(profile), gateway(profile));
        let plain = rtp_with_extension(9, 5, 300);
        let into = protect_rtp(&mut a, &plain);
        let mut buf = plain.clone();
        buf.resize(plain.len() + b.profile.rtp_overhead() + 7, 0xee);
        let n = b
            .protect_rtp_in_place(&mut buf, plain.len())
            .expect("in place");
        assert_eq!(&buf[..n], &into[..]);

        let plain = rtcp(5, 1);
        let into = protect_rtcp(&mut a, &plain);
        let mut buf = plain.clone();
        buf.resize(plain.len() + b.profile.rtcp_overhead(), 0);
        let n = b
            .protect_rtcp_in_place(&mut buf, plain.len())
            .expect("in place");
        assert_eq!(&buf[..n], &into[..]);
    }
}

#[test]
fn sequence_wrap_carries_the_rollover_counter() {
    for profile in PROFILES {
        let (mut c, mut g) = (client(profile), gateway(profile));
        let mut seq = 65_530u16;
        for _ in 0..12 {
            let plain = rtp(seq, 1, 40);
            assert_eq!(
                unprotect_rtp(&mut g, &protect_rtp(&mut c, &plain)),
                Ok(plain)
            );
            seq = seq.wrapping_add(1);
        }
        // Both sides now at ROC 1; a late packet from before the wrap is still ROC 0.
        let late = rtp(65_529, 1, 40);
        let mut sender = client(profile);
        protect_rtp(&mut sender, &rtp(65_528, 1, 1));
        let late_wire = protect_rtp(&mut sender, &late);
        assert_eq!(unprotect_rtp(&mut g, &late_wire), Ok(late));
        assert_eq!(c.rtp_out.get(0).map(|s| s.highest >> 16), Some(1));
        assert_eq!(g.rtp_in.get(0).map(|w| w.top()), Some((1 << 16) + 5));
    }
}

#[test]
fn replays_are_refused_and_reordering_inside_the_window_is_not() {
    for profile in PROFILES {
        let (mut c, mut g) = (client(profile), gateway(profile));
        let wires: Vec<_> = (0..1200u16)
            .map(|seq| protect_rtp(&mut c, &rtp(seq, 7, 20)))
            .collect();
        for (seq, wire) in wires.iter().enumerate() {
            if seq != 600 {
                assert!(unprotect_rtp(&mut g, wire).is_ok());
            }
        }
        assert_eq!(
            unprotect_rtp(&mut g, &wires[1199]),
            Err(UnprotectFailure::Replay)
        );
        assert_eq!(
            unprotect_rtp(&mut g, &wires[700]),
            Err(UnprotectFailure::Replay)
        );
        // 1199 - 100 >= 1024 behind the newest: outside the window.
        assert_eq!(
            unprotect_rtp(&mut g, &wires[100]),
            Err(UnprotectFailure::Replay)
        );
        assert!(
            unprotect_rtp(&mut g, &wires[600]).is_ok(),
            "late but in the window"
        );
        assert_eq!(
            unprotect_rtp(&mut g, &wires[600]),
            Err(UnprotectFailure::Replay)
        );

        let first = protect_rtcp(&mut c, &rtcp(7, 1));
        let second = protect_rtcp(&mut c, &rtcp(7, 2));
        assert!(unprotect_rtcp(&mut g, &second).is_ok());
        assert!(unprotect_rtcp(&mut g, &first).is_ok(), "reordered");
        assert_eq!(
            unprotect_rtcp(&mut g, &first),
            Err(UnprotectFailure::Replay)
        );
        assert_eq!(
            unprotect_rtcp(&mut g, &second),
            Err(UnprotectFailure::Replay)
        );
    }
}

#[test]
fn tampering_anywhere_fails_authentication() {
    for profile in PROFILES {
        let mut c = client(profile);
        let wire = protect_rtp(&mut c, &rtp_with_extension(3, 9, 50));
        for at in 0..wire.len() {
            // Byte 0 carries the header layout; changing it may make the packet
            // unparseable, which is Malformed rather than Auth.
            let mut bad = wire.clone();
            bad[at] ^= 0x04;
            let mut g = gateway(profile);
            let got = unprotect_rtp(&mut g, &bad);
            assert!(
                matches!(
                    got,
                    Err(UnprotectFailure::Auth | UnprotectFailure::Malformed)
                ),
                "{profile:?} byte {at}: {got:?}"
            );
            assert!(
                g.rtp_in.states().is_empty(),
                "no state from a failed packet"
            );
        }
        let wire = protect_rtcp(&mut c, &rtcp(9, 3));
        for at in 0..wire.len() {
            let mut bad = wire.clone();
            bad[at] ^= 0x01;
            let mut g = gateway(profile);
            assert_eq!(
                unprotect_rtcp(&mut g, &bad),
                Err(UnprotectFailure::Auth),
                "byte {at}"
            );
            assert!(g.rtcp_in.states().is_empty());
        }
        // The wrong direction's keys do not verify either.
        let mut other = gateway(profile);
        let own = protect_rtp(&mut other, &rtp(1, 1, 10));
        assert_eq!(
            unprotect_rtp(&mut gateway(profile), &own),
            Err(UnprotectFailure::Auth)
        );
    }
}

/// xorshift64: deterministic arbitrary bytes without a dependency.
fn arbitrary(state: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = *state as u8;
    }
}

#[test]
fn short_and_arbitrary_packets_are_refused_without_panic() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for profile in PROFILES {
        let mut g = gateway(profile);
        let p = g.profile;
        for len in 0..=64usize {
            for round in 0..64 {
                let mut buf = vec![0u8; len];
                arbitrary(&mut rng, &mut buf);
                if round % 2 == 0 && len > 0 {
                    buf[0] = 0x80 | (buf[0] & 0x3f);
                }
                let got = g.unprotect_rtp_in_place(&mut buf.clone());
                assert!(got.is_err(), "{profile:?} len {len}");
                if len < 12 + p.rtp_overhead() {
                    assert_eq!(got, Err(UnprotectFailure::Malformed), "len {len}");
                }
                let got = g.unprotect_rtcp_in_place(&mut buf.clone());
                assert!(got.is_err(), "{profile:?} rtcp len {len}");
                if len < 8 + p.rtcp_overhead() {
                    assert_eq!(got, Err(UnprotectFailure::Malformed), "rtcp len {len}");
                }
                // Protecting arbitrary input either works or reports why; it never panics.
                let mut out = vec![0u8; len + 20];
                let _ = g.protect_rtp_into(&buf, &mut out);
                let _ = g.protect_rtcp_into(&buf, &mut out);
                let _ = g.protect_rtp_in_place(&mut out, len + round);
                let _ = g.protect_rtcp_in_place(&mut out, len + round);
            }
        }
        assert!(g.rtp_in.states().is_empty() && g.rtcp_in.states().is_empty());
    }
}

#[test]
fn protect_reports_what_is_wrong() {
    let mut g = gateway(P::Srtp_Aead_Aes_128_Gcm);
    let plain = rtp(1, 1, 10);
    let mut small = vec![0u8; plain.len() + 15];
    assert_eq!(
        g.protect_rtp_into(&plain, &mut small),
        Err(ProtectError::BufferTooSmall {
            need: plain.len() + 16,
            have: plain.len() + 15
        })
    );
    let mut out = vec![0u8; 64];
    assert_eq!(
        g.protect_rtp_into(&plain[..11], &mut out),
        Err(ProtectError::MalformedRtp(11))
    );
    assert_eq!(
        g.protect_rtcp_into(&[0x80, 201, 0, 1], &mut out),
        Err(ProtectError::MalformedRtcp(4))
    );
    // An extension header claiming more than the packet holds.
    let mut ext = rtp_with_extension(1, 1, 0);
    ext[22] = 0xff;
    assert_eq!(
        g.protect_rtp_into(&ext, &mut out),
        Err(ProtectError::MalformedRtp(ext.len()))
    );
    assert!(g.rtp_out.states().is_empty() && g.rtcp_out.states().is_empty());
}

#[test]
fn forged_ssrcs_take_no_slot_and_real_ones_are_bounded() {
    for profile in PROFILES {
        let (mut c, mut g) = (client(profile), gateway(profile));
        let mut rng = 7u64;
        for ssrc in 0..200u32 {
            let mut forged = rtp(1, 0x1000 + ssrc, 40);
            let mut junk = [0u8; 16];
            arbitrary(&mut rng, &mut junk);
            forged.extend_from_slice(&junk);
            assert_eq!(unprotect_rtp(&mut g, &forged), Err(UnprotectFailure::Auth));
            let mut forged = rtcp(0x1000 + ssrc, 1);
            forged.extend_from_slice(&[0x80, 0, 0, 1]);
            forged.extend_from_slice(&junk);
            assert_eq!(unprotect_rtcp(&mut g, &forged), Err(UnprotectFailure::Auth));
        }
        assert!(g.rtp_in.states().is_empty() && g.rtcp_in.states().is_empty());

        for ssrc in 0..MAX_SSRCS as u32 {
            assert!(unprotect_rtp(&mut g, &protect_rtp(&mut c, &rtp(1, ssrc, 5))).is_ok());
            assert!(unprotect_rtcp(&mut g, &protect_rtcp(&mut c, &rtcp(ssrc, 1))).is_ok());
        }
        let extra = MAX_SSRCS as u32;
        assert_eq!(
            unprotect_rtp(&mut g, &protect_rtp(&mut c, &rtp(1, extra, 5))),
            Err(UnprotectFailure::SsrcLimit)
        );
        assert_eq!(
            unprotect_rtcp(&mut g, &protect_rtcp(&mut c, &rtcp(extra, 1))),
            Err(UnprotectFailure::SsrcLimit)
        );
        // Known SSRCs keep working.
        assert!(unprotect_rtp(&mut g, &protect_rtp(&mut c, &rtp(2, 3, 5))).is_ok());
        assert!(unprotect_rtcp(&mut g, &protect_rtcp(&mut c, &rtcp(3, 2))).is_ok());
    }
}

#[test]
fn send_state_is_bounded_and_forgets_the_least_recent_ssrc() {
    let mut g = gateway(P::Srtp_Aes128_Cm_Hmac_Sha1_80);
    for ssrc in 0..MAX_SEND_SSRCS as u32 {
        protect_rtp(&mut g, &rtp(1, ssrc, 1));
    }
    protect_rtp(&mut g, &rtp(2, 0, 1));
    protect_rtp(&mut g, &rtp(1, 9999, 1));
    assert_eq!(g.rtp_out.states().len(), MAX_SEND_SSRCS);
    assert!(g.rtp_out.find(0).is_some(), "recently used stays");
    assert!(g.rtp_out.find(1).is_none(), "least recent went");
    assert!(g.rtp_out.find(9999).is_some());
}

/// Packets with the E flag clear are authenticated but not encrypted (RFC 3711 3.4,
/// RFC 7714 9.2); built here with the RustCrypto primitives directly.
#[test]
fn unencrypted_srtcp_is_authenticated() {
    use aes_gcm::{aead::AeadInPlace, Aes128Gcm, KeyInit};
    use hmac::{Hmac, Mac};

    for profile in PROFILES {
        let p = Profile::of(profile).expect("profile");
        let m = material(profile);
        let (k, s) = (p.key_len(), p.salt_len());
        let keys = kdf::SessionKeys::derive(&m[..k], &m[2 * k..2 * k + s]).expect("keys");
        let ssrc = 0x0102_0304u32;
        let plain = rtcp(ssrc, 0x55);
        let word = 77u32.to_be_bytes();
        let mut wire = plain.clone();
        match p {
            Profile::Aes128CmHmacSha1_80 => {
                let mut mac =
                    <Hmac<sha1::Sha1> as Mac>::new_from_slice(&keys.rtcp_auth).expect("key");
                mac.update(&plain);
                mac.update(&word);
                wire.extend_from_slice(&word);
                wire.extend_from_slice(&mac.finalize().into_bytes()[..10]);
            }
            Profile::AeadAes128Gcm => {
                let mut nonce = [0u8; 12];
                nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
                nonce[8..12].copy_from_slice(&word);
                for (n, s) in nonce.iter_mut().zip(&keys.rtcp_salt) {
                    *n ^= s;
                }
                let mut aad = plain.clone();
                aad.extend_from_slice(&word);
                let gcm = Aes128Gcm::new_from_slice(&keys.rtcp_key).expect("key");
                let tag = gcm
                    .encrypt_in_place_detached((&nonce).into(), &aad, &mut [])
                    .expect("tag");
                wire.extend_from_slice(&tag);
                wire.extend_from_slice(&word);
            }
        }
        let mut g = gateway(profile);
        let mut bad = wire.clone();
        bad[12] ^= 1;
        assert_eq!(
            unprotect_rtcp(&mut g, &bad),
            Err(UnprotectFailure::Auth),
            "{p:?}"
        );
        assert_eq!(unprotect_rtcp(&mut g, &wire), Ok(plain), "{p:?}");
        assert_eq!(unprotect_rtcp(&mut g, &wire), Err(UnprotectFailure::Replay));
    }
}

#[test]
fn index_estimation_follows_rfc_3711_appendix_a() {
    use rtp_index::estimate;
    let at = |roc: u64, seq: u64| (roc << 16) | seq;
    assert_eq!(estimate(at(0, 100), 101), Some(at(0, 101)));
    assert_eq!(estimate(at(0, 100), 50), Some(at(0, 50)));
    // No cycle before ROC 0: far ahead is a jump forward.
    assert_eq!(estimate(at(0, 100), 60_000), Some(at(0, 60_000)));
    assert_eq!(estimate(at(0, 65_535), 0), Some(at(1, 0)));
    assert_eq!(estimate(at(0, 65_000), 10), Some(at(1, 10)));
    assert_eq!(estimate(at(1, 10), 65_000), Some(at(0, 65_000)));
    assert_eq!(estimate(at(1, 10), 20_000), Some(at(1, 20_000)));
    assert_eq!(estimate(at(3, 40_000), 7_232), Some(at(3, 7_232)));
    assert_eq!(estimate(at(3, 40_000), 7_231), Some(at(4, 7_231)));
    assert_eq!(estimate(at(u32::MAX as u64, 65_535), 0), None);
}

#[test]
fn replay_window_remembers_exactly_1024_packets() {
    use replay::{ReplayWindow, WINDOW};
    for step in [
        1u64, 2, 63, 64, 65, 127, 128, 129, 700, 1023, 1024, 1025, 5000,
    ] {
        let mut w = ReplayWindow::new(10_000);
        w.accept(9_990);
        w.accept(10_000 + step);
        let top = 10_000 + step;
        assert_eq!(w.top(), top);
        assert!(!w.is_fresh(top));
        for (index, seen) in [
            (10_000, true),
            (9_990, true),
            (9_991, false),
            (top - 1, step == 1),
        ] {
            let in_window = top - index < WINDOW;
            assert_eq!(
                w.is_fresh(index),
                in_window && !seen,
                "step {step} index {index}"
            );
        }
        assert!(
            !w.is_fresh(top - WINDOW),
            "step {step}: the oldest slot is outside"
        );
        assert!(w.is_fresh(top + 1));
    }
}
