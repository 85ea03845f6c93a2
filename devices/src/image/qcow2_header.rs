//! The qcow2 header checked before imago opens a file: the features bulkhead serves, the
//! tables inside the file, sizes that bound memory.
//!
//! imago checks much of this itself, but late (after a writable open has already rewritten
//! the header to clear autoclear bits), not at all (encryption), or by allocating first (an
//! L1 table of 2^32 entries). Field offsets are those of QEMU's `docs/interop/qcow2.txt`;
//! every number is big-endian.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{Qcow2Error, L2_CACHE_TABLES, REFBLOCK_CACHE_TABLES};
use crate::image::format::QCOW2_MAGIC;

/// Largest L1 table accepted (QEMU's `QCOW_MAX_L1_SIZE`).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (QEMU's `QCOW_MAX_REFTABLE_SIZE`).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Version 2 header length; version 3 adds 32 bytes.
const V2_LEN: usize = 72;
const V3_LEN: usize = 104;

/// What the header says, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The virtual size in bytes.
    pub size: u64,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// L1 entries.
    pub l1_entries: u64,
    /// Refcount table bytes.
    pub reftable_bytes: u64,
    /// The backing file name the header gives, if any.
    pub backing_name: Option<String>,
}

impl HeaderInfo {
    /// The most memory imago's caches and tables take for this file (`top`: the refcount
    /// table and refcount block cache exist only when writable, i.e. for the top image;
    /// counted for it whether or not it is served read-only).
    pub fn metadata_bound(&self, top: bool) -> u64 {
        let mut bytes = L2_CACHE_TABLES * self.cluster_size + 8 * self.l1_entries;
        if top {
            bytes += REFBLOCK_CACHE_TABLES * self.cluster_size + self.reftable_bytes;
        }
        bytes
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Names of the incompatible feature bits qcow2 defines.
const INCOMPATIBLE: [&str; 5] = [
    "the dirty bit (the image was not closed cleanly; repair it with `qemu-img check -r all`)",
    "the corrupt bit (QEMU found it corrupt; repair it with `qemu-img check -r all`)",
    "an external data file",
    "a compression type other than zlib (zstd)",
    "extended L2 entries (subclusters)",
];

/// Reads and checks the qcow2 header of `file` (called `name` in messages).
pub fn check_header(file: &File, name: &str) -> Result<HeaderInfo, Qcow2Error> {
    let read_err = |source| Qcow2Error::Read {
        name: name.to_owned(),
        source,
    };
    let corrupt = |problem: String| Qcow2Error::Corrupt {
        name: name.to_owned(),
        problem,
    };
    let unsupported = |feature: String| Qcow2Error::Unsupported {
        name: name.to_owned(),
        feature,
    };
    let len = file.metadata().map_err(read_err)?.len();
    let truncated = |what, end| Qcow2Error::Truncated {
        name: name.to_owned(),
        what,
        end,
        len,
    };
    let mut h = [0u8; V3_LEN];
    let have = read_up_to(file, &mut h).map_err(read_err)?;
    if have < V2_LEN {
        return Err(truncated("header", V2_LEN as u64));
    }
    if h[..4] != QCOW2_MAGIC {
        return Err(corrupt("no qcow2 magic".into()));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(unsupported(format!("version {version}")));
    }
    if version == 3 && have < V3_LEN {
        return Err(truncated("header", V3_LEN as u64));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!(
            "cluster size 2^{cluster_bits} (qcow2 allows 2^9 to 2^21)"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    if be32(&h, 32) != 0 {
        return Err(unsupported("encryption".into()));
    }
    if version == 3 {
        let incompatible = be64(&h, 72);
        for bit in 0..64 {
            if incompatible & (1 << bit) != 0 {
                let what = INCOMPATIBLE.get(bit).map_or_else(
                    || format!("unknown incompatible feature bit {bit}"),
                    |s| (*s).to_owned(),
                );
                return Err(unsupported(what));
            }
        }
        let header_length = u64::from(be32(&h, 100));
        if header_length < V3_LEN as u64 || header_length > cluster_size {
            return Err(corrupt(format!("header length {header_length}")));
        }
        let refcount_order = be32(&h, 96);
        if refcount_order > 6 {
            return Err(corrupt(format!("refcount width 2^{refcount_order} bits")));
        }
    }
    let size = be64(&h, 24);
    // Entries one L2 table holds, and the bytes one L1 entry maps.
    let l2_entries = cluster_size / 8;
    let per_l1 = cluster_size * l2_entries;
    let needed_l1 = size.div_ceil(per_l1);
    let l1_entries = u64::from(be32(&h, 36));
    if l1_entries < needed_l1 {
        return Err(corrupt(format!(
            "an L1 table of {l1_entries} entries is too small for a virtual size of {size} \
             bytes ({needed_l1} needed)"
        )));
    }
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(unsupported(format!(
            "an L1 table of {} bytes (at most {MAX_L1_BYTES})",
            l1_entries * 8
        )));
    }
    let l1_offset = be64(&h, 40);
    table_in_file(l1_offset, l1_entries * 8, cluster_size, len, "L1 table")
        .map_err(|e| e.into_error(name, len))?;
    let reftable_offset = be64(&h, 48);
    let reftable_bytes = u64::from(be32(&h, 56)) * cluster_size;
    if reftable_bytes == 0 {
        return Err(corrupt("an empty refcount table".into()));
    }
    if reftable_bytes > MAX_REFTABLE_BYTES {
        return Err(unsupported(format!(
            "a refcount table of {reftable_bytes} bytes (at most {MAX_REFTABLE_BYTES})"
        )));
    }
    table_in_file(
        reftable_offset,
        reftable_bytes,
        cluster_size,
        len,
        "refcount table",
    )
    .map_err(|e| e.into_error(name, len))?;
    let backing_name = backing_name(file, &h, cluster_size).map_err(|e| match e {
        BackingName::Io(source) => Qcow2Error::Read {
            name: name.to_owned(),
            source,
        },
        BackingName::Bad(problem) => corrupt(problem),
    })?;
    Ok(HeaderInfo {
        size,
        cluster_size,
        l1_entries,
        reftable_bytes,
        backing_name,
    })
}

/// A table that is not where it should be.
enum TableError {
    Unaligned(&'static str, u64),
    Past(&'static str, u64),
}

impl TableError {
    fn into_error(self, name: &str, len: u64) -> Qcow2Error {
        match self {
            TableError::Unaligned(what, offset) => Qcow2Error::Corrupt {
                name: name.to_owned(),
                problem: format!("its {what} offset {offset} is not cluster aligned"),
            },
            TableError::Past(what, end) => Qcow2Error::Truncated {
                name: name.to_owned(),
                what,
                end,
                len,
            },
        }
    }
}

/// `[offset, offset + bytes)` is cluster aligned and inside a file of `len` bytes.
fn table_in_file(
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    len: u64,
    what: &'static str,
) -> Result<(), TableError> {
    if offset % cluster_size != 0 {
        return Err(TableError::Unaligned(what, offset));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= len => Ok(()),
        Some(end) => Err(TableError::Past(what, end)),
        None => Err(TableError::Past(what, u64::MAX)),
    }
}

enum BackingName {
    Io(io::Error),
    Bad(String),
}

/// The backing file name, when the header gives one.
fn backing_name(file: &File, h: &[u8], cluster_size: u64) -> Result<Option<String>, BackingName> {
    let offset = be64(h, 8);
    let len = u64::from(be32(h, 16));
    if offset == 0 {
        return Ok(None);
    }
    if len == 0 || len > 1023 || offset.saturating_add(len) > cluster_size {
        return Err(BackingName::Bad(format!(
            "a backing file name of {len} bytes at offset {offset}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    let got = read_up_to_at(file, &mut buf, offset).map_err(BackingName::Io)?;
    if got < buf.len() {
        return Err(BackingName::Bad(
            "the backing file name is past the end of the file".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    read_up_to_at(file, buf, 0)
}

/// Reads as much of `buf` as the file has from `offset`; how much that was.
fn read_up_to_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
