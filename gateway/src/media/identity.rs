//! The gateway's DTLS identity: one self-signed certificate per process.
//!
//! WebRTC authenticates DTLS by the certificate fingerprint carried in the SDP, not by a
//! CA chain, so a fresh self-signed certificate at start-up is what browsers expect.
use sha2::{Digest, Sha256};
use webrtc_dtls::crypto::Certificate;

#[derive(Debug, thiserror::Error)]
#[error("cannot generate the DTLS certificate: {0}")]
pub struct IdentityError(String);

pub struct Identity {
    pub certificate: Certificate,
    /// SHA-256 fingerprint, uppercase hex with colons, as written in `a=fingerprint`.
    pub fingerprint: String,
}

impl Identity {
    pub fn generate() -> Result<Self, IdentityError> {
        let certificate = Certificate::generate_self_signed(vec!["roomgate".to_owned()])
            .map_err(|e| IdentityError(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| IdentityError("no certificate in chain".into()))?;
        let fingerprint = sha256_fingerprint(der.as_ref());
        Ok(Identity {
            certificate,
            fingerprint,
        })
    }
}

/// `AB:CD:..` of SHA-256 over DER, the form RFC 8122 uses in SDP.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let id = Identity::generate().unwrap();
        assert_eq!(id.fingerprint.len(), 32 * 3 - 1);
        assert!(id.fingerprint.split(':').all(|h| h.len() == 2
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())));
        assert_eq!(sha256_fingerprint(b"").len(), 95);
    }
}
