//! Block request chains: a queue from the input served by the block device's own worker
//! against an in-memory image.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use super::input::Input;
use super::ring::Ring;
use crate::block::{Disk, DiskOptions, QueueWorker};

/// Every byte of a fresh image (so a write that should have been refused shows).
const FILL: u8 = 0xa5;

/// An anonymous in-memory file of `size` bytes of [`FILL`].
pub(crate) fn memfd(name: &std::ffi::CStr, size: usize) -> File {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let file = File::from(fd);
    file.write_all_at(&vec![FILL; size], 0)
        .expect("filling the image");
    file
}

/// Serves the queue the input describes with a block device on a memfd image. Panics if
/// the device breaks a rule of [`Ring::check`], writes a read-only image, or changes the
/// image's size. Returns the number of completed requests.
pub fn fuzz_block(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let read_only = input.bool();
    let block = if input.bool() { 4096 } else { 512 };
    let size = (usize::from(input.u8() % 64) + 1) * block;
    let image = memfd(c"fuzz-disk", size);
    let keep = image.try_clone().expect("dup of the image");
    let options = DiskOptions {
        read_only,
        direct: false,
        logical_block_size: block as u32,
    };
    let disk = Disk::from_fd(OwnedFd::from(image), "fuzz image".into(), options)
        .expect("a memfd image of whole blocks opens");
    let mut serial = [0u8; 20];
    serial[..9].copy_from_slice(b"fuzz-disk");
    let mut worker = QueueWorker::new(Arc::new(disk.into()), serial, Duration::ZERO);

    let mut ring = Ring::build(&mut input);
    let mut rounds = 0;
    while worker.serve_round(&mut ring.queue, &ring.mem).again {
        rounds += 1;
        assert!(
            rounds < 4,
            "the worker keeps asking for rounds on a static ring"
        );
    }
    let used = ring.check();

    let mut after = vec![0u8; size + 1];
    let n = keep.read_at(&mut after, 0).expect("reading the image back");
    assert_eq!(
        n,
        size,
        "the guest changed the image's size (fd {})",
        keep.as_raw_fd()
    );
    if read_only {
        assert!(
            after[..size].iter().all(|&b| b == FILL),
            "a read-only image was written"
        );
    }
    used.len()
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;
    use crate::fuzz::ring::encode;

    /// A well-formed queue: one chain per request type, headers in the data area.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        // Read-write, 512-byte blocks, a 4 KiB image; a queue of 256.
        let mut out = vec![0, 0, 7];
        encode::header(&mut out, 8, rng.below(2) == 1);
        let kinds = [0u32, 1, 4, 8, 11, 13];
        let n = 1 + rng.below(kinds.len());
        out.push((3 * n) as u8);
        for (i, &kind) in kinds.iter().take(n).enumerate() {
            let (base, next) = (0x100 * i as u64, (3 * i) as u8);
            // header (readable), data (direction by type), status (writable)
            encode::desc(&mut out, base, 16, 1, next + 1);
            let data_flags = if kind == 0 || kind == 8 { 3 } else { 1 };
            encode::desc(
                &mut out,
                0x2000 + 0x400 * i as u64,
                0x40,
                data_flags,
                next + 2,
            );
            encode::desc(&mut out, base + 0x80, 1, 2, 0);
        }
        encode::available(&mut out, &(0..n).map(|i| (3 * i) as u8).collect::<Vec<_>>());
        let mut area = vec![0u8; 0x100 * n];
        for (i, kind) in kinds.iter().take(n).enumerate() {
            area[0x100 * i..0x100 * i + 4].copy_from_slice(&kind.to_le_bytes());
            area[0x100 * i + 8] = rng.below(8) as u8; // sector
        }
        out.extend(area);
        out
    }

    #[test]
    fn valid_requests_complete() {
        let mut rng = Rng::new(7);
        let input = valid(&mut rng);
        assert!(fuzz_block(&input) >= 1, "the generator makes requests");
    }

    /// Inputs libFuzzer found (each once a crash; see the notes).
    const REGRESSIONS: &[&[u8]] = &[
        // A used ring at u64::MAX: the harness read its index wrapped around to address 1.
        &[
            0xf5, 0xf5, 0x0a, 0x31, 0xce, 0xce, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xce, 0xff,
        ],
        // Descriptor table and used ring at 0xb (misaligned): the queue kept its default
        // addresses, so the harness looked for the used ring where the device did not.
        &[
            0xef, 0, 0, 0, 0xff, 0xb, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xb, 0, 0, 0, 0, 0, 0, 0, 0x1,
            0x1a, 0, 0, 0x1, 0x1a, 0, 0, 0xa3, 0xa2, 0x48,
        ],
    ];

    #[test]
    fn regressions() {
        for input in REGRESSIONS {
            fuzz_block(input);
        }
    }

    #[test]
    fn bounded_fuzz_of_block_chains() {
        run_bounded("block", valid, fuzz_block);
    }
}
