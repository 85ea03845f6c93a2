//! A bulkhead-blk queue thread (`blk-q<n>`): waits for kicks, reads and writes the image
//! at guest-chosen offsets (bounds-checked before the call), signals completions. A qcow2
//! image (imago) also needs `fsync`, `ftruncate` and `sched_yield`, each said why below.

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
    Rule::any(
        SYS_fsync,
        "qcow2 FLUSH: imago's sync makes the metadata (L2 tables, refcounts, header) durable \
         after the data was (fdatasync)",
    ),
    Rule::any(
        SYS_ftruncate,
        "qcow2 WRITE_ZEROES reaching past the end of the file: imago grows the file to it",
    ),
    Rule::any(
        SYS_sched_yield,
        "qcow2: imago's parking_lot locks yield the CPU while spinning on a contended lock",
    ),
];
