//! Entry point for fuzzers: the whole receive path minus the socket.
//!
//! Used by the cargo-fuzz target in `protocol/fuzz/` (nightly) and by the bounded stable
//! fuzz test in `tests/fuzz.rs`, which runs in `cargo test`.

use crate::codec::{decode, encode};
use crate::frame::read_frame;
use crate::message::{ApiReply, ApiRequest, Message, ToLauncher, ToProcess};

/// Reads frames from `data` as from a stream until the first error, decoding each payload
/// as every message type. Returns how many (frame, type) pairs decoded to a message.
///
/// Panics only if the codec breaks its own contract: a payload that decodes must encode
/// back to the very same bytes (the encoding is canonical). Hostile input must never make
/// it panic, hang or allocate more than [`MAX_FRAME`](crate::MAX_FRAME) per frame.
pub fn fuzz_decode(data: &[u8]) -> usize {
    let mut stream = data;
    let mut decoded = 0;
    while let Ok(payload) = read_frame(&mut stream) {
        decoded += usize::from(check::<ToLauncher>(&payload))
            + usize::from(check::<ToProcess>(&payload))
            + usize::from(check::<ApiRequest>(&payload))
            + usize::from(check::<ApiReply>(&payload));
    }
    decoded
}

/// Decodes `payload` as `M`; if that works, checks the round trip.
fn check<M: Message + PartialEq>(payload: &[u8]) -> bool {
    let Ok(msg) = decode::<M>(payload) else {
        return false;
    };
    let again = encode(&msg);
    assert!(
        matches!(&again, Ok(bytes) if bytes == payload),
        "{} decoded from {payload:02x?} re-encodes differently: {again:02x?}",
        msg.name()
    );
    true
}
