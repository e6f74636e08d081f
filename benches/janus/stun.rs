//! The load generator's side of ICE against an ICE-lite Janus, beyond the checks it sends:
//! libnice still sends its own connectivity checks in lite mode and drops the pair when
//! they go unanswered, so every Binding Request is answered as a browser does (verified
//! MESSAGE-INTEGRITY, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT).
use std::net::SocketAddr;

use stun_rs::{
    attributes::stun::{Fingerprint, MessageIntegrity, UserName, XorMappedAddress},
    methods::BINDING,
    DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
    StunMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error("not a valid STUN message for our credentials: {0}")]
    Decode(String),
    #[error("not a Binding Request")]
    NotBindingRequest,
    #[error("USERNAME {0:?} is not for us")]
    WrongUser(String),
    #[error("encode: {0}")]
    Encode(String),
}

fn key(pwd: &str) -> Result<HMACKey, StunError> {
    HMACKey::new_short_term(pwd).map_err(|e| StunError::Encode(e.to_string()))
}

/// The success response to a peer's Binding Request sent to us (`local_ufrag`/`local_pwd`
/// are ours, as the request's USERNAME `ours:theirs` and integrity key require).
pub fn answer_binding_request(
    request: &[u8],
    local_ufrag: &str,
    local_pwd: &str,
    from: SocketAddr,
) -> Result<Vec<u8>, StunError> {
    let ctx = DecoderContextBuilder::default()
        .with_key(key(local_pwd)?)
        .with_validation()
        .build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    let (msg, _) = decoder
        .decode(request)
        .map_err(|e| StunError::Decode(e.to_string()))?;
    if msg.method() != BINDING || msg.class() != MessageClass::Request {
        return Err(StunError::NotBindingRequest);
    }
    let user = msg
        .get::<UserName>()
        .and_then(|a| a.as_user_name().ok())
        .map(|u| u.as_str().to_owned())
        .unwrap_or_default();
    if user.split(':').next() != Some(local_ufrag) {
        return Err(StunError::WrongUser(user));
    }
    let reply = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*msg.transaction_id())
        .with_attribute(XorMappedAddress::from(from))
        .with_attribute(MessageIntegrity::new(key(local_pwd)?))
        .with_attribute(Fingerprint::default())
        .build();
    let mut buf = vec![0u8; 256];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &reply)
        .map_err(|e| StunError::Encode(e.to_string()))?;
    buf.truncate(n);
    Ok(buf)
}

/// Whether `reply` is a success response to our check `txid`, integrity-protected with the
/// remote password.
pub fn is_success_for(reply: &[u8], txid: &[u8], remote_pwd: &str) -> bool {
    if reply.len() < 20 || reply[8..20] != *txid {
        return false;
    }
    let Ok(k) = key(remote_pwd) else {
        return false;
    };
    let ctx = DecoderContextBuilder::default()
        .with_key(k)
        .with_validation()
        .build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    matches!(decoder.decode(reply), Ok((msg, _)) if msg.class() == MessageClass::SuccessResponse)
}
