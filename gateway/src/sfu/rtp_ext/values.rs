//! Wire encodings of the two values roomgate writes itself rather than passing through:
//! the transport-wide sequence number and abs-send-time.

use std::time::Duration;

/// Bytes of a transport-wide-cc element: a big-endian sequence number.
pub const TRANSPORT_SEQ_LEN: usize = 2;
/// Bytes of an abs-send-time element: 24-bit 6.18 fixed-point seconds.
pub const ABS_SEND_TIME_LEN: usize = 3;

// 18 fractional bits, 24 bits in all: the value wraps every 64 s.
const FRACTION_BITS: u32 = 18;
const MASK_24: u128 = 0x00ff_ffff;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The element data for transport-wide sequence number `seq`.
pub fn encode_transport_seq(seq: u16) -> [u8; TRANSPORT_SEQ_LEN] {
    seq.to_be_bytes()
}

/// The element data for abs-send-time `t`, measured from any fixed epoch: only the
/// value modulo 64 s is sent, rounded to the nearest 1/2^18 s (about 3.8 µs) as the
/// receiving estimator expects.
pub fn encode_abs_send_time(t: Duration) -> [u8; ABS_SEND_TIME_LEN] {
    let units = ((t.as_nanos() << FRACTION_BITS) + NANOS_PER_SEC / 2) / NANOS_PER_SEC;
    let v = (units & MASK_24) as u32;
    let [_, a, b, c] = v.to_be_bytes();
    [a, b, c]
}

/// The time a 24-bit abs-send-time value stands for, in `[0, 64 s)`; bits above the
/// 24th are ignored.
pub fn abs_send_time_to_duration(value: u32) -> Duration {
    let units = u128::from(value) & MASK_24;
    let nanos = ((units * NANOS_PER_SEC) + (1 << (FRACTION_BITS - 1))) >> FRACTION_BITS;
    // Below 64 s in nanoseconds, so it fits a u64.
    Duration::from_nanos(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_seq_is_big_endian() {
        assert_eq!(encode_transport_seq(0x1234), [0x12, 0x34]);
        assert_eq!(encode_transport_seq(0xffff), [0xff, 0xff]);
    }

    #[test]
    fn abs_send_time_is_six_dot_eighteen() {
        assert_eq!(encode_abs_send_time(Duration::ZERO), [0, 0, 0]);
        // 1 s is 1 << 18.
        assert_eq!(encode_abs_send_time(Duration::from_secs(1)), [0x04, 0, 0]);
        assert_eq!(
            encode_abs_send_time(Duration::from_millis(1500)),
            [0x06, 0, 0]
        );
        // One unit below 64 s is the largest value; 64 s wraps to 0.
        assert_eq!(
            encode_abs_send_time(Duration::from_secs(64) - Duration::from_micros(4)),
            [0xff, 0xff, 0xff]
        );
        assert_eq!(encode_abs_send_time(Duration::from_secs(64)), [0, 0, 0]);
        assert_eq!(
            encode_abs_send_time(Duration::from_secs(65)),
            encode_abs_send_time(Duration::from_secs(1))
        );
        // One unit is 1e9 / 2^18 = 3814.7 ns: 1.9 µs rounds down, 2 µs up.
        assert_eq!(encode_abs_send_time(Duration::from_nanos(1900)), [0, 0, 0]);
        assert_eq!(encode_abs_send_time(Duration::from_nanos(2000)), [0, 0, 1]);
    }

    #[test]
    fn abs_send_time_decodes_within_a_unit() {
        for micros in [0u64, 1, 3_815, 999_999, 12_345_678, 63_999_990] {
            let t = Duration::from_micros(micros);
            let [a, b, c] = encode_abs_send_time(t);
            let back = abs_send_time_to_duration(u32::from_be_bytes([0, a, b, c]));
            let err = back.abs_diff(t);
            assert!(err <= Duration::from_nanos(1908), "{t:?} -> {back:?}");
        }
        assert_eq!(abs_send_time_to_duration(0x0100_0000), Duration::ZERO);
    }
}
