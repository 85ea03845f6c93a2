//! Frames on a byte stream: an 8-byte header, then the payload (one encoded message).
//!
//! ```text
//!  0        4                8
//!  +--------+----------------+------------------------+
//!  | "BKHD" | payload length | payload (length bytes) |
//!  | magic  | u32 LE         | 1 ..= MAX_FRAME bytes  |
//!  +--------+----------------+------------------------+
//! ```
//! The magic catches a peer that is not speaking this protocol at all (or a stream that lost
//! its place); the length is checked against [`MAX_FRAME`] before anything is allocated.
//! A zero length is refused: every message encodes to at least its 4-byte variant index.

use std::io::{ErrorKind, Read};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"BKHD";
/// Header size: magic and length.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry (64 KiB: a status with hundreds of devices fits).
pub const MAX_FRAME: usize = 64 * 1024;

/// Errors reading or building a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly between frames: the peer closed the connection.
    #[error("peer closed the connection")]
    Closed,
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {got} of {wanted} bytes")]
    Truncated {
        /// Bytes of this frame received.
        got: usize,
        /// Bytes the frame should have had (header only, until the header is complete).
        wanted: usize,
    },
    /// The header does not start with [`MAGIC`].
    #[error("bad frame magic {found:02x?} (expected {MAGIC:02x?}): the peer does not speak this protocol")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The header announces a payload larger than [`MAX_FRAME`].
    #[error("oversize frame: {len} bytes announced, at most {max} allowed")]
    Oversize {
        /// Announced payload length.
        len: u64,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// The header announces an empty payload.
    #[error("empty frame: zero-length payload")]
    Empty,
    /// Reading the stream failed after `got` bytes of this frame.
    #[error("reading a frame (after {got} bytes of it)")]
    Io {
        /// Bytes of this frame already received (0: failed before the frame began).
        got: usize,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

impl FrameError {
    /// True if the read timed out before a single byte of a frame arrived: nothing was lost
    /// and the stream is still in step, so the caller may try again.
    pub fn is_idle_timeout(&self) -> bool {
        matches!(self, Self::Io { got: 0, source }
            if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }
}

/// Header followed by `payload`, ready to write. The caller guarantees
/// `1 <= payload.len() <= MAX_FRAME` (the codec never produces anything else).
pub fn frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or(FrameError::Oversize {
            len: payload.len() as u64,
            max: MAX_FRAME,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks a header and returns the payload length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let [m0, m1, m2, m3, l0, l1, l2, l3] = *header;
    let found = [m0, m1, m2, m3];
    if found != MAGIC {
        return Err(FrameError::BadMagic { found });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME => Ok(len),
        _ => Err(FrameError::Oversize {
            len: len.into(),
            max: MAX_FRAME,
        }),
    }
}

/// Reads one frame's payload from `stream`, coping with short reads and `EINTR`.
/// The payload buffer is allocated only after the header passed [`parse_header`].
pub fn read_frame<R: Read>(stream: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    fill(stream, &mut header, 0, HEADER_LEN)?;
    let len = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    fill(stream, &mut payload, HEADER_LEN, HEADER_LEN + len)?;
    Ok(payload)
}

/// Fills `buf` from `stream`; `before` bytes of the frame were read earlier and `wanted` is
/// the frame size known so far, both for error reports.
fn fill<R: Read>(
    stream: &mut R,
    buf: &mut [u8],
    before: usize,
    wanted: usize,
) -> Result<(), FrameError> {
    let mut done = 0;
    while done < buf.len() {
        // In bounds: the loop runs only while done < buf.len().
        let rest = &mut buf[done..];
        match stream.read(rest) {
            Ok(0) if before + done == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: before + done,
                    wanted,
                })
            }
            Ok(n) => done += n.min(rest.len()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FrameError::Io {
                    got: before + done,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out one byte per call, to exercise short reads.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn frame_then_read_back_through_short_reads() {
        let bytes = frame(b"hello").unwrap();
        assert_eq!(&bytes[..8], b"BKHD\x05\0\0\0");
        let mut two = bytes.clone();
        two.extend_from_slice(&frame(b"x").unwrap());
        let mut r = Trickle(&two);
        assert_eq!(read_frame(&mut r).unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap(), b"x");
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            parse_header(b"XKHD\x01\0\0\0"),
            Err(FrameError::BadMagic { found }) if &found == b"XKHD"
        ));
        assert!(matches!(
            parse_header(b"BKHD\0\0\0\0"),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            parse_header(b"BKHD\xff\xff\xff\xff"),
            Err(FrameError::Oversize {
                len: 0xffff_ffff,
                ..
            })
        ));
        assert!(matches!(
            parse_header(b"BKHD\x01\x00\x01\x00"),
            Err(FrameError::Oversize { len: 65537, .. })
        ));
        assert_eq!(parse_header(b"BKHD\x00\x00\x01\x00").unwrap(), MAX_FRAME);
    }

    #[test]
    fn eof_inside_header_or_payload_is_truncated() {
        let bytes = frame(b"hello").unwrap();
        let err = read_frame(&mut &bytes[..3]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { got: 3, wanted: 8 }));
        let err = read_frame(&mut &bytes[..10]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 10,
                wanted: 13
            }
        ));
        assert_eq!(
            err.to_string(),
            "truncated frame: the stream ended after 10 of 13 bytes"
        );
    }

    #[test]
    fn building_refuses_empty_and_oversize_payloads() {
        assert!(matches!(frame(b""), Err(FrameError::Empty)));
        assert!(matches!(
            frame(&vec![0; MAX_FRAME + 1]),
            Err(FrameError::Oversize { .. })
        ));
        assert!(frame(&vec![0; MAX_FRAME]).is_ok());
    }
}
