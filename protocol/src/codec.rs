//! Message ⇄ bytes. The only module that uses bincode (RUSTSEC-2025-0141 marks it
//! unmaintained): replacing the serialisation format means replacing this file alone.
//!
//! Configuration, fixed for the life of a [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION):
//! - **little-endian**, the byte order of every host bulkhead runs on;
//! - **fixed-width integers** (a `u32` is 4 bytes, a length or `u64` 8): control messages are
//!   few and small, so varint's savings do not matter, while a fixed layout makes frames
//!   readable in a hex dump and hand-built test frames simple to write;
//! - **a size limit** of [`MAX_FRAME`] bytes: a hostile length prefix inside a payload
//!   (a string claiming 2^60 bytes) is refused before anything is allocated for it.

use crate::frame::MAX_FRAME;
use crate::message::Message;
use bincode::config::{Configuration, Fixint, Limit, LittleEndian};

/// Errors turning a message into bytes or bytes into a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The serialiser refused the message.
    #[error("encoding {message}")]
    Encode {
        /// Variant name of the message.
        message: &'static str,
        /// The serialiser's error.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The encoded message does not fit in a frame.
    #[error("encoding {message}: {len} bytes, more than the {max}-byte frame limit")]
    TooLarge {
        /// Variant name of the message.
        message: &'static str,
        /// Its encoded size.
        len: usize,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// The payload is not a valid message of the expected type.
    #[error("decoding a {len}-byte payload as {expected}")]
    Decode {
        /// Rust type the payload should have been.
        expected: &'static str,
        /// Payload size.
        len: usize,
        /// The deserialiser's error.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A valid message followed by bytes that belong to nothing.
    #[error("decoding a {len}-byte payload as {expected}: {extra} bytes left after the message")]
    Trailing {
        /// Rust type the payload was decoded as.
        expected: &'static str,
        /// Payload size.
        len: usize,
        /// Bytes after the message.
        extra: usize,
    },
}

/// The one configuration every encode and decode uses.
const CONFIG: Configuration<LittleEndian, Fixint, Limit<MAX_FRAME>> = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_FRAME>();

/// Encodes `msg` into a payload of at most [`MAX_FRAME`] bytes.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let bytes =
        bincode::serde::encode_to_vec(msg, CONFIG).map_err(|source| CodecError::Encode {
            message: msg.name(),
            source,
        })?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            message: msg.name(),
            len: bytes.len(),
            max: MAX_FRAME,
        });
    }
    Ok(bytes)
}

/// Decodes exactly one message of type `M` from `payload`; trailing bytes are an error.
/// Never panics, whatever `payload` holds.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M, CodecError> {
    let expected = std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    let (msg, used) =
        bincode::serde::decode_from_slice::<M, _>(payload, CONFIG).map_err(|source| {
            CodecError::Decode {
                expected,
                len: payload.len(),
                source,
            }
        })?;
    if used != payload.len() {
        return Err(CodecError::Trailing {
            expected,
            len: payload.len(),
            extra: payload.len().saturating_sub(used),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ApiReply, ToLauncher, ToProcess};

    #[test]
    fn layout_is_fixint_little_endian() {
        // Variant index 4 (Exited) as u32 LE, then the i32 code LE.
        let bytes = encode(&ToLauncher::Exited { code: -2 }).unwrap();
        assert_eq!(bytes, [4, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
        let bytes = encode(&ToProcess::Hello { version: 1 }).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn hostile_string_length_is_refused_without_allocating() {
        // ApiReply::Error (index 3) with a string length of 2^62.
        let mut payload = vec![3, 0, 0, 0];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let err = decode::<ApiReply>(&payload).unwrap_err();
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_errors() {
        let err = decode::<ToProcess>(&[99, 0, 0, 0]).unwrap_err();
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
        let mut bytes = encode(&ToProcess::Shutdown).unwrap();
        bytes.push(0);
        let err = decode::<ToProcess>(&bytes).unwrap_err();
        assert!(
            matches!(err, CodecError::Trailing { extra: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn oversize_message_is_refused_on_encode() {
        let err = encode(&ApiReply::Error("x".repeat(MAX_FRAME))).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }
}
