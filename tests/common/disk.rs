//! Disk images for the block tests: filled with known bytes, checked after the guest ran.

use std::path::{Path, PathBuf};

/// Sector size.
pub const SECTOR: u64 = 512;

/// A scratch image that deletes itself.
pub struct Image {
    /// Its path.
    pub path: PathBuf,
    /// What it held before the guest ran.
    pub original: Vec<u8>,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Image {
    /// Creates `size` bytes of deterministic noise at a fresh temporary path named `tag`
    /// (and numbered: a test run as `mmio::` and `pci::` at once makes two images of one
    /// tag, which must not be one file, now that a served image is locked).
    pub fn new(tag: &str, size: usize) -> Image {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("bulkhead-{tag}-{}-{n}.img", std::process::id()));
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
        let original: Vec<u8> = (0..size)
            .map(|_| {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(&path, &original).expect("writing the scratch image");
        Image { path, original }
    }

    /// The image's path as a `--disk` value.
    pub fn disk_arg(&self, extra: &str) -> String {
        format!("path={}{extra}", self.path.display())
    }

    /// Its current bytes.
    pub fn read(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("reading the image back")
    }
}

/// The byte the test guest writes at absolute disk offset `o` (tests/guest/README.md).
pub fn pattern_byte(o: u64) -> u8 {
    ((o / SECTOR) * 131 + (o % SECTOR) * 7 + 0x5a) as u8
}

/// Checks that sectors `first..first+count` of `now` hold the pattern and every other byte
/// is as it was in `before`; panics naming the first difference.
pub fn assert_pattern_only(path: &Path, before: &[u8], now: &[u8], first: u64, count: u64) {
    assert_only(path, before, now, first, count, "the pattern", pattern_byte);
}

/// Checks that sectors `first..first+count` of `now` are zero and every other byte is as
/// it was in `before`; panics naming the first difference.
pub fn assert_zeroes_only(path: &Path, before: &[u8], now: &[u8], first: u64, count: u64) {
    assert_only(path, before, now, first, count, "zero", |_| 0);
}

/// Checks that sectors `first..first+count` of `now` hold `expected(offset)` (`what`) and
/// every other byte is as it was in `before`.
fn assert_only(
    path: &Path,
    before: &[u8],
    now: &[u8],
    first: u64,
    count: u64,
    what: &str,
    expected: impl Fn(u64) -> u8,
) {
    assert_eq!(before.len(), now.len(), "{} changed size", path.display());
    let (lo, hi) = (
        (first * SECTOR) as usize,
        ((first + count) * SECTOR) as usize,
    );
    for (o, b) in now.iter().enumerate().take(hi).skip(lo) {
        assert_eq!(
            *b,
            expected(o as u64),
            "{}: byte {o} (sector {}) is not {what}",
            path.display(),
            o / 512
        );
    }
    if let Some(o) = (0..lo).chain(hi..now.len()).find(|&o| now[o] != before[o]) {
        panic!(
            "{}: byte {o} (sector {}) outside sectors {first}..{} changed",
            path.display(),
            o / 512,
            first + count
        );
    }
}
