//! The frames of the `net-macswap` scenario (`scenarios/net/macswap.rs`): built here,
//! checked when they come back from a backend that swaps their MAC addresses.
//!
//! A frame: Ethernet header (to [`PEER`], from our MAC, ethertype [`ETHERTYPE`]), then
//! `BHMS`, the sequence number (u32 LE), the payload length (u16 LE), the `net-send` pattern,
//! and an FNV-1a checksum (u32 LE) of everything after the Ethernet header before it.

use crate::net::{self, Mac, ETH_HDR, MIN_FRAME};
use core::fmt;

/// Frames sent.
pub const FRAMES: u32 = 64;
/// Frames in flight at most.
pub const WINDOW: u32 = 8;
/// The made-up destination (locally administered).
pub const PEER: Mac = [0x02, 0x42, 0x48, 0x4d, 0x53, 0x57];
/// IEEE 802 local experimental ethertype.
pub const ETHERTYPE: u16 = 0x88b5;
/// How long a frame may take to come back.
pub const RETURN_TIMEOUT_MS: u64 = 3000;
const MAGIC: &[u8; 4] = b"BHMS";
/// Bytes before the pattern: magic, seq, length.
const HEAD: usize = 10;

/// What went wrong with the frames coming back.
#[derive(Debug)]
pub enum Mismatch {
    /// Frame `seq` did not come back in time.
    Lost(u32),
    /// A frame came back twice.
    Duplicate(u32),
    /// A frame came back altered (what differs).
    Corrupt(u32, &'static str),
    /// A frame that was never sent (or not ours) came back.
    Unexpected(&'static str),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost(seq) => write!(
                f,
                "frame {seq} did not come back within {RETURN_TIMEOUT_MS} ms"
            ),
            Self::Duplicate(seq) => write!(f, "frame {seq} came back twice"),
            Self::Corrupt(seq, what) => write!(f, "frame {seq} came back altered: {what}"),
            Self::Unexpected(what) => write!(f, "an unexpected frame came back: {what}"),
        }
    }
}

/// FNV-1a, 32 bits.
fn fnv(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Payload bytes of frame `seq` (between header and checksum), at least enough for a
/// minimum frame.
pub fn payload_len(sizes: &[u16], seq: u32) -> usize {
    let size = sizes
        .get(seq as usize % sizes.len().max(1))
        .copied()
        .unwrap_or(64);
    usize::from(size).clamp(MIN_FRAME - ETH_HDR - HEAD - 4, net::MTU - HEAD - 4)
}

/// Builds frame `seq` into `out`; returns its length.
pub fn build(out: &mut [u8], src: Mac, seq: u32, len: usize) -> usize {
    let total = ETH_HDR + HEAD + len + 4;
    let Some(frame) = out.get_mut(..total) else {
        return 0;
    };
    frame[..6].copy_from_slice(&PEER);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let body = &mut frame[ETH_HDR..];
    body[..4].copy_from_slice(MAGIC);
    body[4..8].copy_from_slice(&seq.to_le_bytes());
    body[8..10].copy_from_slice(&(len as u16).to_le_bytes());
    net::fill_pattern(&mut body[HEAD..HEAD + len]);
    let sum = fnv(&body[..HEAD + len]);
    body[HEAD + len..HEAD + len + 4].copy_from_slice(&sum.to_le_bytes());
    total
}

/// Checks a frame that came back to `ours`; returns its sequence number.
pub fn check(frame: &[u8], ours: Mac) -> Result<u32, Mismatch> {
    if frame.len() < ETH_HDR + HEAD + 4 {
        return Err(Mismatch::Unexpected("too short"));
    }
    if frame[12..14] != ETHERTYPE.to_be_bytes() || &frame[ETH_HDR..ETH_HDR + 4] != MAGIC {
        return Err(Mismatch::Unexpected("not a net-macswap frame"));
    }
    let body = &frame[ETH_HDR..];
    let seq = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let len = usize::from(u16::from_le_bytes([body[8], body[9]]));
    if body.len() != HEAD + len + 4 {
        return Err(Mismatch::Corrupt(seq, "length"));
    }
    if frame[..6] != ours || frame[6..12] != PEER {
        return Err(Mismatch::Corrupt(seq, "MAC addresses not swapped"));
    }
    let sum = u32::from_le_bytes([
        body[HEAD + len],
        body[HEAD + len + 1],
        body[HEAD + len + 2],
        body[HEAD + len + 3],
    ]);
    if fnv(&body[..HEAD + len]) != sum {
        return Err(Mismatch::Corrupt(seq, "checksum"));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn swapped(frame: &mut [u8]) {
        let (dst, src) = (
            [0, 1, 2, 3, 4, 5].map(|i| frame[i]),
            [6, 7, 8, 9, 10, 11].map(|i| frame[i]),
        );
        frame[..6].copy_from_slice(&src);
        frame[6..12].copy_from_slice(&dst);
    }

    #[test]
    fn a_swapped_frame_passes_and_any_change_fails() {
        let mut buf = [0u8; 1600];
        for (seq, len) in [(0, 1), (7, 64), (63, 1472)] {
            let n = build(&mut buf, OURS, seq, payload_len(&[len], seq));
            assert!(n >= MIN_FRAME);
            let frame = &mut buf[..n];
            assert!(check(frame, OURS).is_err(), "not swapped yet");
            swapped(frame);
            assert_eq!(check(frame, OURS).ok(), Some(seq));
            for at in [ETH_HDR + HEAD, n - 5, n - 1] {
                frame[at] ^= 0x40;
                assert!(matches!(check(frame, OURS), Err(Mismatch::Corrupt(..))));
                frame[at] ^= 0x40;
            }
            assert!(check(&frame[..n - 1], OURS).is_err());
        }
    }
}
