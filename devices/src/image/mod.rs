//! Disk image files as users have them: their format (raw or qcow2), the chain of backing
//! files a qcow2 names, and the QEMU-compatible locks held on every file of a chain.
//!
//! | file | what |
//! | --- | --- |
//! | `format.rs` | raw or qcow2: the user's word, else a probe that never guesses qcow2 |
//! | `chain.rs` | a top image and the backing files it names, opened by a caller's opener |
//! | `lock.rs` | QEMU's OFD byte-range locks (100+n held, 200+n not shared) |
//! | `qcow2.rs` | a qcow2 chain served through `imago`, with bounded caches |
//! | `qcow2_header.rs` | the qcow2 header, parsed and checked once for the launcher, the chain and the backend |
//! | `qcow2_error.rs` | why a qcow2 chain can't be served |
//! | `test_file.rs` | unit tests' scratch files |
//!
//! The launcher opens and locks every file of a chain (`chain`, `lock`) and hands the
//! descriptors to `bulkhead-blk`, which opens nothing; a standalone `bulkhead-blk
//! --blk-file` does the same itself before it confines itself.

pub mod chain;
pub mod format;
pub mod lock;
pub mod qcow2;
pub mod qcow2_header;
mod qcow2_refcounts;
#[cfg(test)]
mod test_file;

pub use format::{FormatError, ImageFormat};
