//! `cargo xtask bench srtp`: roomgate's SRTP against webrtc-srtp (the implementation it
//! replaced), per 1,100-byte RTP packet, both profiles, in one run on one core.
//!
//! Protect: the gateway's side (`protect_rtp_into` a reused buffer) against
//! `Context::encrypt_rtp` (a new `Bytes` per packet). Unprotect: packets a client
//! protected, decrypted in place against `Context::decrypt_rtp`, both with replay
//! protection and a fresh receiver per round (the same packets again would be replays).
mod util;

use std::{fmt::Write as _, time::Instant};

use gateway::media::{srtp::material_len, SrtpKeys, SrtpSession};
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
use webrtc_srtp::{
    context::Context,
    option::{srtcp_replay_protection, srtp_replay_protection},
    protection_profile::ProtectionProfile,
};

const PAYLOAD: usize = 1100;
const STREAM: u16 = 4096;
const ROUNDS: usize = 25;

fn keys(profile: P) -> SrtpKeys {
    let len = material_len(profile).expect("supported profile");
    SrtpKeys {
        profile,
        material: (0..len).map(|i| i as u8).collect(),
    }
}

/// webrtc-srtp contexts keyed like the DTLS exporter's output (RFC 5764 4.2: client key,
/// server key, client salt, server salt): (client side, server side).
fn reference(profile: P, replay: bool) -> (Context, Context) {
    let theirs = match profile {
        P::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        _ => ProtectionProfile::Aes128CmHmacSha1_80,
    };
    let m = keys(profile).material;
    let (k, s) = (theirs.key_len(), theirs.salt_len());
    let ctx = |key: &[u8], salt: &[u8]| {
        let (rtp, rtcp) = if replay {
            (
                Some(srtp_replay_protection(1024)),
                Some(srtcp_replay_protection(1024)),
            )
        } else {
            (None, None)
        };
        Context::new(key, salt, theirs, rtp, rtcp).expect("webrtc-srtp context")
    };
    (
        ctx(&m[..k], &m[2 * k..2 * k + s]),
        ctx(&m[k..2 * k], &m[2 * k + s..]),
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.resize(12 + PAYLOAD, 0x5a);
    p
}

fn ns_per(start: Instant, n: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut r = String::new();
    let _ = writeln!(r, "## SRTP per packet (`cargo xtask bench srtp`)\n");
    let _ = writeln!(
        r,
        "Machine: {}. Command: `cargo xtask bench srtp` (release build). {STREAM} packets of \
         {PAYLOAD}-byte RTP payload, {ROUNDS} rounds, one thread.\n",
        util::machine()
    );
    let _ = writeln!(
        r,
        "| profile | protect: roomgate | protect: webrtc-srtp | unprotect: roomgate | unprotect: webrtc-srtp |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|");
    let plains: Vec<Vec<u8>> = (0..STREAM).map(rtp).collect();
    let n = usize::from(STREAM) * ROUNDS;
    for profile in [P::Srtp_Aes128_Cm_Hmac_Sha1_80, P::Srtp_Aead_Aes_128_Gcm] {
        let mut ours = SrtpSession::new(&keys(profile)).expect("session");
        let mut out = vec![0u8; 1500];
        let start = Instant::now();
        for _ in 0..ROUNDS {
            for plain in &plains {
                let len = ours.protect_rtp_into(plain, &mut out).expect("protect");
                std::hint::black_box(&out[..len]);
            }
        }
        let our_protect = ns_per(start, n);

        let (_, mut server) = reference(profile, false);
        let start = Instant::now();
        for _ in 0..ROUNDS {
            for plain in &plains {
                std::hint::black_box(server.encrypt_rtp(plain).expect("protect"));
            }
        }
        let their_protect = ns_per(start, n);

        let (mut client, _) = reference(profile, false);
        let wires: Vec<Vec<u8>> = plains
            .iter()
            .map(|p| client.encrypt_rtp(p).expect("client protect").to_vec())
            .collect();
        let (mut ours_ns, mut theirs_ns) = (0f64, 0f64);
        for _ in 0..ROUNDS {
            let mut ours = SrtpSession::new(&keys(profile)).expect("session");
            let start = Instant::now();
            for wire in &wires {
                let buf = &mut out[..wire.len()];
                buf.copy_from_slice(wire);
                std::hint::black_box(ours.unprotect_rtp_in_place(buf).expect("unprotect"));
            }
            ours_ns += start.elapsed().as_nanos() as f64;
            let (mut client_side, _) = reference(profile, true);
            let start = Instant::now();
            for wire in &wires {
                std::hint::black_box(client_side.decrypt_rtp(wire).expect("unprotect"));
            }
            theirs_ns += start.elapsed().as_nanos() as f64;
        }
        let _ = writeln!(
            r,
            "| {profile:?} | {our_protect:.0} ns | {their_protect:.0} ns | {:.0} ns | {:.0} ns |",
            ours_ns / n as f64,
            theirs_ns / n as f64
        );
    }
    let _ = writeln!(
        r,
        "\nThe unprotect columns include copying each packet into the reused buffer for \
         roomgate (it decrypts in place) and a new allocation per packet for webrtc-srtp. \
         `gateway/src/media/srtp/compat_tests.rs` proves the two byte for byte."
    );
    println!("{r}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-srtp.md");
    std::fs::write(&path, &r).expect("write target/bench-srtp.md");
}
