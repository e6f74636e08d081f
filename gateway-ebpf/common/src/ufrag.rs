//! Layout of the server's ICE ufrag and the room hash.
//!
//! A STUN USERNAME from a client is `"<server ufrag>:<client ufrag>"` (RFC 8445 7.2.2).
//! roomgate's server ufrag is
//!
//! ```text
//!   <room part: 1..=32 ice-chars><participant part: exactly 8 ALPHA/DIGIT>
//! ```
//!
//! The participant part has a fixed length so that no separator character is needed:
//! the room part is everything before the last [`PARTICIPANT_PART_LEN`] characters
//! preceding the ':'. Only ice-chars (ALPHA / DIGIT / "+" / "/", RFC 8839) are used,
//! and the total length is bounded so the program's scan fits the verifier budget.
//!
//! Room IDs given to the API use the URL-friendly alphabet `[A-Za-z0-9_-]`; the room
//! part maps `-` to `+` and `_` to `/`, a bijection, so the room part *is* the room ID.

/// Length of the participant part that ends every server ufrag.
pub const PARTICIPANT_PART_LEN: usize = 8;
/// Longest room part (and longest room ID).
pub const MAX_ROOM_PART_LEN: usize = 32;
/// Longest server ufrag.
pub const MAX_SERVER_UFRAG_LEN: usize = MAX_ROOM_PART_LEN + PARTICIPANT_PART_LEN;
/// How many USERNAME bytes the program copies to find the ':': the longest server
/// ufrag plus the ':' itself, rounded up to a multiple of 4 (STUN attributes are
/// 4-byte aligned, so reading in 4-byte chunks never runs past the attribute padding).
pub const USERNAME_SCAN_LEN: usize = (MAX_SERVER_UFRAG_LEN + 1).div_ceil(4) * 4;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// ice-char per RFC 8839: ALPHA / DIGIT / "+" / "/".
#[inline(always)]
pub const fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Runs `$body` once per listed index with `$i` bound to it, unrolled in the source.
///
/// Without CAP_PERFMON the verifier refuses pointer arithmetic whose offset differs
/// between its passes over one instruction ("pointer arithmetic with it prohibited for
/// !root"), which is what a loop over a buffer is once the verifier walks it with
/// i = 0, 1, ... Unrolled, every byte is read at a constant offset and no pointer is
/// moved by a register, so CAP_BPF alone is enough to load the program.
macro_rules! unrolled {
    ($i:ident in [$($n:literal)*] $body:block) => {
        $({
            let $i: usize = $n;
            $body
        })*
    };
}

// The index lists below are written out; they must cover exactly these lengths.
const _: () = assert!(USERNAME_SCAN_LEN == 44 && MAX_ROOM_PART_LEN == 32);

/// Given the first `len` bytes of a USERNAME copied into `prefix` (bytes past `len`
/// are ignored), return the length of the room part, or `None` if the USERNAME has
/// no ':' within the scan window or the room part length is out of range.
#[inline(always)]
pub fn room_part_len(prefix: &[u8; USERNAME_SCAN_LEN], len: usize) -> Option<usize> {
    unrolled!(i in [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43] {
        if i >= len {
            return None;
        }
        if prefix[i] == b':' {
            if i <= PARTICIPANT_PART_LEN || i > MAX_SERVER_UFRAG_LEN {
                return None;
            }
            return Some(i - PARTICIPANT_PART_LEN);
        }
    });
    None
}

/// 32-bit FNV-1a over `prefix[..room_len]`; `None` if `room_len` is out of range or a
/// byte is not an ice-char. A room's thread is `room_hash % threads`.
#[inline(always)]
pub fn room_hash(prefix: &[u8; USERNAME_SCAN_LEN], room_len: usize) -> Option<u32> {
    if room_len == 0 || room_len > MAX_ROOM_PART_LEN {
        return None;
    }
    let mut h = FNV_OFFSET;
    unrolled!(i in [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31] {
        if i >= room_len {
            return Some(h);
        }
        let b = prefix[i];
        if !is_ice_char(b) {
            return None;
        }
        h ^= b as u32;
        h = h.wrapping_mul(FNV_PRIME);
    });
    Some(h)
}

/// Userspace convenience: hash an already extracted room part.
pub fn room_hash_of(room_part: &[u8]) -> Option<u32> {
    if room_part.len() > MAX_ROOM_PART_LEN {
        return None;
    }
    let mut buf = [0u8; USERNAME_SCAN_LEN];
    buf[..room_part.len()].copy_from_slice(room_part);
    room_hash(&buf, room_part.len())
}

/// Map a room ID (`[A-Za-z0-9_-]{1,32}`) to its room part. Returns the length written
/// into `out`, or `None` if the ID is empty, too long or has a character outside the
/// room ID alphabet.
pub fn room_part_from_room_id(room_id: &[u8], out: &mut [u8; MAX_ROOM_PART_LEN]) -> Option<usize> {
    if room_id.is_empty() || room_id.len() > MAX_ROOM_PART_LEN {
        return None;
    }
    for (o, &b) in out.iter_mut().zip(room_id) {
        *o = match b {
            b'-' => b'+',
            b'_' => b'/',
            b if b.is_ascii_alphanumeric() => b,
            _ => return None,
        };
    }
    Some(room_id.len())
}

/// Room IDs with known hashes (computed by an independent FNV-1a): the shared test vectors. Userspace unit tests check
/// [`room_hash_of`] against them; the integration tests push each through the
/// kernel program with real packets.
pub const ROOM_HASH_VECTORS: &[(&str, u32)] = &[
    ("a", 0xe40c_292c),
    ("lobby", 0x1c5a_0ed3),
    ("room-1", 0x3a76_8736),
    ("room_2", 0xd180_6f47),
    ("daily-standup", 0x38d4_b75c),
    ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", 0x39d5_880d),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn username(s: &str) -> ([u8; USERNAME_SCAN_LEN], usize) {
        let mut buf = [0u8; USERNAME_SCAN_LEN];
        let n = s.len().min(USERNAME_SCAN_LEN);
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        (buf, s.len())
    }

    fn part(id: &str) -> ([u8; MAX_ROOM_PART_LEN], usize) {
        let mut out = [0u8; MAX_ROOM_PART_LEN];
        let n = room_part_from_room_id(id.as_bytes(), &mut out).expect("valid room id");
        (out, n)
    }

    // The scan window must be 4-byte aligned and reach past the longest ufrag's ':'.
    const _: () =
        assert!(USERNAME_SCAN_LEN.is_multiple_of(4) && USERNAME_SCAN_LEN > MAX_SERVER_UFRAG_LEN);

    #[test]
    fn vectors_match() {
        for (id, want) in ROOM_HASH_VECTORS {
            let (p, n) = part(id);
            assert_eq!(room_hash_of(&p[..n]), Some(*want), "room {id}");
        }
    }

    #[test]
    fn room_part_is_found_before_participant_part() {
        let (buf, len) = username("lobbyAbCd1234:xYz9");
        assert_eq!(room_part_len(&buf, len), Some(5));
        assert_eq!(room_hash(&buf, 5), room_hash_of(b"lobby"));
    }

    #[test]
    fn mapped_characters_are_ice_chars() {
        let (p, n) = part("a-b_c");
        assert_eq!(&p[..n], b"a+b/c");
        assert!(p[..n].iter().all(|b| is_ice_char(*b)));
    }

    #[test]
    fn rejects_bad_usernames() {
        for bad in [
            "no-colon-here",
            ":cli",
            "short:cli",
            "12345678:cli",                                         // room part empty
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgPPPPPPPP:c",          // room part 33
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", // no ':' in window
        ] {
            let (buf, len) = username(bad);
            assert_eq!(room_part_len(&buf, len), None, "{bad}");
        }
        // ':' present but the length claims fewer bytes than where it sits.
        let (buf, _) = username("lobbyAbCd1234:x");
        assert_eq!(room_part_len(&buf, 5), None);
    }

    #[test]
    fn rejects_non_ice_chars_in_room_part() {
        let (buf, len) = username("lo-byAbCd1234:x");
        let n = room_part_len(&buf, len).expect("has colon");
        assert_eq!(room_hash(&buf, n), None);
    }

    #[test]
    fn rejects_bad_room_ids() {
        let mut out = [0u8; MAX_ROOM_PART_LEN];
        for bad in ["", "a b", "ümlaut", "a:b", "a+b", &"x".repeat(33)] {
            assert_eq!(
                room_part_from_room_id(bad.as_bytes(), &mut out),
                None,
                "{bad:?}"
            );
        }
    }
}
