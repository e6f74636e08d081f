//! SRTP packet index estimation (RFC 3711 3.3.1 and appendix A): the 48-bit index
//! ROC * 2^16 + SEQ of a packet, from its 16-bit sequence number and the highest index
//! seen so far on the same SSRC. Both directions use it: the sender too keeps one ROC per
//! SSRC, since forwarded packets may leave slightly out of order.

/// Indexes are 48 bits; past that the key must be replaced (RFC 3711 9.2).
pub(super) const MAX_INDEX: u64 = (1 << 48) - 1;
const HALF: u16 = 1 << 15;

/// The index of `seq` next to `highest`, or `None` when it would need a 33-bit ROC.
pub(super) fn estimate(highest: u64, seq: u16) -> Option<u64> {
    let roc = highest >> 16;
    let s_l = highest as u16;
    let v = if s_l < HALF {
        // At ROC 0 there is no earlier cycle: a far-ahead sequence number is a jump.
        if seq > s_l && seq - s_l > HALF && roc > 0 {
            roc - 1
        } else {
            roc
        }
    } else if s_l - HALF > seq {
        roc + 1
    } else {
        roc
    };
    let index = (v << 16) | u64::from(seq);
    (index <= MAX_INDEX).then_some(index)
}

/// The ROC half of an index, as used in IVs and the HMAC input.
pub(super) fn roc(index: u64) -> u32 {
    (index >> 16) as u32
}
