//! A bulkhead-blk queue thread (`blk-q<n>`): waits for kicks, reads and writes the image
//! at guest-chosen offsets (bounds-checked before the call), signals completions.

use libc::*;

use super::Rule;

/// The block worker's own rules.
pub const RULES: &[Rule] = &[
    Rule::any(
        SYS_epoll_wait,
        "the queue thread waits for kicks and its exit event",
    ),
    Rule::any(SYS_read, "consuming the kick eventfd and the exit event"),
    Rule::any(SYS_preadv, "guest reads: the image into guest buffers"),
    Rule::any(SYS_pwritev, "guest writes: guest buffers into the image"),
    Rule::any(SYS_fdatasync, "VIRTIO_BLK_T_FLUSH"),
    Rule::any(
        SYS_fallocate,
        "DISCARD (punch hole) and WRITE_ZEROES (zero range)",
    ),
];
