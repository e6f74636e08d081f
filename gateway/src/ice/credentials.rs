//! Server-side ICE credentials (RFC 8445 §5.3, RFC 8839 §5.4).

use std::fmt;

/// The ICE credentials the server advertises for one session. The client's checks carry
/// USERNAME "`ufrag`:client-ufrag" and are integrity-protected with `pwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

// The password is the only secret protecting a session's flow pinning; keep it out of logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

/// The OS random source failed; no credentials can be generated safely.
#[derive(Debug, thiserror::Error)]
#[error("OS random source failed: {0}")]
pub struct RandomError(getrandom::Error);

const ALPHANUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random characters from ALPHA / DIGIT, a subset of RFC 8839 ice-char. "+" and "/"
/// are left out so the result is safe in URLs, map keys and log lines without escaping.
/// Each character carries log2(62) ≈ 5.95 bits; a 24-char pwd (RFC 8839 asks for >= 22)
/// carries ≈ 143 bits.
pub fn random_ice_chars(n: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(RandomError)?;
        for &b in &buf {
            // Rejection sampling: 248 = 4 * 62, so accepting only b < 248 makes every
            // character exactly equally likely (plain `b % 62` would favour the first 8).
            if b < 248 {
                out.push(char::from(ALPHANUM[usize::from(b) % ALPHANUM.len()]));
                if out.len() == n {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Compare secrets without an early exit, so response timing does not reveal how much of
/// a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ice_chars_has_requested_length_and_alphabet() {
        for n in [0, 1, 8, 24, 200] {
            let s = random_ice_chars(n).unwrap();
            assert_eq!(s.len(), n);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
        }
        // Two 24-char draws colliding would mean the generator is broken.
        assert_ne!(random_ice_chars(24).unwrap(), random_ice_chars(24).unwrap());
    }

    #[test]
    fn debug_redacts_pwd() {
        let c = Credentials {
            ufrag: "abcd".into(),
            pwd: "secretsecretsecretsecret".into(),
        };
        let s = format!("{c:?}");
        assert!(s.contains("abcd") && !s.contains("secret"), "{s}");
    }
}
