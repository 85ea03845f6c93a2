//! The qcow2 header, parsed once for everyone who needs it: the launcher (backing file name
//! and format, virtual size, the bound of the file's size), the chain opener, and the
//! serving backend (checks made before imago sees the file).
//!
//! Parsed here rather than through `imago`: the launcher, which opens files as root, wants
//! a few fields each bounds-checked before use, not imago's reading of the L1 and refcount
//! tables; and imago checks some things late (after a writable open has already rewritten
//! the header to clear autoclear bits), not at all (encryption), or by allocating first (an
//! L1 table of 2^32 entries).
//!
//! Two steps: [`Qcow2Header::read`] parses the header and refuses what makes it unreadable
//! (magic, version, cluster size, header length, refcount width, header extensions, backing
//! file name); [`Qcow2Header::check_servable`] refuses what bulkhead does not serve or what
//! would take unbounded memory (encryption, incompatible features, L1 and refcount tables
//! too large or outside the file). Every error names the field or the part of the file;
//! callers add the file's name. The layout is QEMU's `docs/interop/qcow2.txt` (all numbers
//! big-endian): version 2 has a 72-byte header, version 3 says its length; header
//! extensions (type, length, data padded to 8 bytes) follow it, up to the backing file name
//! or the end of the first cluster.
//!
//! | file | what |
//! | --- | --- |
//! | `qcow2_header/extensions.rs` | the header extensions (backing format, data file) |
//! | `qcow2_header/tests.rs` | headers built by hand, each field broken in turn |

mod extensions;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::image::format::QCOW2_MAGIC;

/// QEMU's bounds on `cluster_bits`.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's longest backing file name.
const MAX_BACKING_NAME: u32 = 1023;
/// Largest `refcount_order` (64-bit refcounts).
const MAX_REFCOUNT_ORDER: u32 = 6;
/// Version 2's header length (and the fixed part of version 3's).
const V2_HEADER_LEN: u32 = 72;
/// Version 3's shortest header.
const V3_HEADER_LEN: u32 = 104;
/// Incompatible feature bit: the data lives in an external file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit: extended L2 entries (16 bytes instead of 8).
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Largest L1 table served (QEMU's `QCOW_MAX_L1_SIZE`).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table served (QEMU's `QCOW_MAX_REFTABLE_SIZE`).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Names of the incompatible feature bits qcow2 defines, by bit.
const INCOMPATIBLE: [&str; 5] = [
    "the dirty bit (the image was not closed cleanly; repair it with `qemu-img check -r all`)",
    "the corrupt bit (QEMU found it corrupt; repair it with `qemu-img check -r all`)",
    "an external data file",
    "a compression type other than zlib (zstd)",
    "extended L2 entries (subclusters)",
];

/// The header fields bulkhead reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The disk's size, in bytes, as the guest sees it.
    pub virtual_size: u64,
    /// Entries of the L1 table.
    pub l1_size: u32,
    /// Where the L1 table starts.
    pub l1_table_offset: u64,
    /// Where the refcount table starts.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// 0: not encrypted.
    pub crypt_method: u32,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// The backing file's name as written (no backing file: `None`).
    pub backing_file: Option<Vec<u8>>,
    /// The backing file's format as recorded in the header extension.
    pub backing_format: Option<String>,
    /// Whether the data lives in an external data file (feature bit or extension).
    pub external_data_file: bool,
    /// The file's length when the header was read.
    pub file_len: u64,
}

/// Why a qcow2 header can't be used (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Reading failed.
    #[error("reading its qcow2 header: {0}")]
    Read(#[source] io::Error),
    /// The file ends inside the header, or inside a part the header points at.
    #[error(
        "the file is truncated or corrupt: its {what} ends at byte {end}, past the end of the \
         file ({len} bytes)"
    )]
    Truncated {
        /// What the file ends inside.
        what: &'static str,
        /// Where that ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// Not a qcow2 at all.
    #[error("not a qcow2 image (no qcow2 magic)")]
    Magic,
    /// A field holds a value QEMU would refuse too.
    #[error("invalid qcow2 header: {field} is {value} ({why})")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it should be.
        why: &'static str,
    },
    /// A table does not start on a cluster boundary.
    #[error("corrupt qcow2 header: its {what} offset {offset} is not cluster aligned")]
    Unaligned {
        /// Which table.
        what: &'static str,
        /// Where the header says it starts.
        offset: u64,
    },
    /// The L1 table can't map the whole disk.
    #[error(
        "corrupt qcow2 header: an L1 table of {entries} entries is too small for a virtual \
         size of {size} bytes ({needed} needed)"
    )]
    L1TooSmall {
        /// Entries the header gives.
        entries: u32,
        /// The virtual size.
        size: u64,
        /// Entries that size needs.
        needed: u64,
    },
    /// No refcount table.
    #[error("corrupt qcow2 header: an empty refcount table")]
    EmptyRefcountTable,
    /// A feature bulkhead does not serve.
    #[error("it uses a qcow2 feature bulkhead does not support: {0}")]
    Feature(&'static str),
    /// An incompatible feature bit qcow2 does not define (yet).
    #[error(
        "it uses a qcow2 feature bulkhead does not support: unknown incompatible feature bit {0}"
    )]
    UnknownFeature(u32),
    /// A table larger than bulkhead holds in memory.
    #[error("it uses a qcow2 feature bulkhead does not support: {what} of {bytes} bytes (at most {max})")]
    TableTooLarge {
        /// Which table ("an L1 table", "a refcount table").
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The most served.
        max: u64,
    },
}

impl Qcow2Header {
    /// Reads the header of `file`, refusing what makes it unreadable (module docs).
    pub fn read(file: &File) -> Result<Qcow2Header, HeaderError> {
        let file_len = file.metadata().map_err(HeaderError::Read)?.len();
        let truncated = |what, end| HeaderError::Truncated {
            what,
            end,
            len: file_len,
        };
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        let got = read_upto(file, &mut fixed, 0)?;
        if got < V2_HEADER_LEN as usize {
            return Err(if got >= 4 && fixed[..4] != QCOW2_MAGIC {
                HeaderError::Magic
            } else {
                truncated("header", V2_HEADER_LEN.into())
            });
        }
        if fixed[..4] != QCOW2_MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = be32(&fixed, 4);
        let field = |field, value: u64, why| HeaderError::Field { field, value, why };
        if version != 2 && version != 3 {
            return Err(field("version", version.into(), "expected 2 or 3"));
        }
        let backing_offset = be64(&fixed, 8);
        let backing_size = be32(&fixed, 16);
        let cluster_bits = be32(&fixed, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(field(
                "cluster_bits",
                cluster_bits.into(),
                "expected 9 to 21",
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let (incompatible, refcount_order, header_len) = if version == 3 {
            if got < V3_HEADER_LEN as usize {
                return Err(truncated("header", V3_HEADER_LEN.into()));
            }
            let header_len = be32(&fixed, 100);
            if header_len < V3_HEADER_LEN || header_len % 8 != 0 {
                return Err(field(
                    "header_length",
                    header_len.into(),
                    "expected a multiple of 8, at least 104",
                ));
            }
            (be64(&fixed, 72), be32(&fixed, 96), header_len)
        } else {
            (0, 4, V2_HEADER_LEN)
        };
        if refcount_order > MAX_REFCOUNT_ORDER {
            return Err(field(
                "refcount_order",
                refcount_order.into(),
                "expected 0 to 6",
            ));
        }
        if u64::from(header_len) > cluster_size {
            return Err(field(
                "header_length",
                header_len.into(),
                "larger than a cluster",
            ));
        }
        // The extensions end where the backing file name starts, else at the first
        // cluster's end (as QEMU reads them).
        let ext_end = if backing_offset != 0 {
            if backing_offset > cluster_size || backing_offset < u64::from(header_len) {
                return Err(field(
                    "backing_file_offset",
                    backing_offset,
                    "not inside the first cluster after the header",
                ));
            }
            backing_offset
        } else {
            cluster_size
        };
        let ext = extensions::read(file, u64::from(header_len), ext_end, file_len)?;
        let backing_file = if backing_offset != 0 && backing_size != 0 {
            if backing_size > MAX_BACKING_NAME
                || backing_offset + u64::from(backing_size) > cluster_size
            {
                return Err(field(
                    "backing_file_size",
                    backing_size.into(),
                    "at most 1023 bytes, inside the first cluster",
                ));
            }
            let mut name = vec![0u8; backing_size as usize];
            if read_upto(file, &mut name, backing_offset)? < name.len() {
                return Err(truncated(
                    "backing file name",
                    backing_offset + u64::from(backing_size),
                ));
            }
            Some(name)
        } else {
            None
        };
        Ok(Qcow2Header {
            version,
            cluster_bits,
            virtual_size: be64(&fixed, 24),
            l1_size: be32(&fixed, 36),
            l1_table_offset: be64(&fixed, 40),
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            crypt_method: be32(&fixed, 32),
            refcount_order,
            incompatible,
            backing_file,
            backing_format: ext.backing_format,
            external_data_file: ext.data_file || incompatible & INCOMPAT_DATA_FILE != 0,
            file_len,
        })
    }

    /// Refuses what bulkhead does not serve: encryption, any incompatible feature, an L1
    /// table too small for the disk or larger than [`MAX_L1_BYTES`], a refcount table empty
    /// or larger than [`MAX_REFTABLE_BYTES`], either table unaligned or past the end of the
    /// file.
    pub fn check_servable(&self) -> Result<(), HeaderError> {
        if self.crypt_method != 0 {
            return Err(HeaderError::Feature("encryption"));
        }
        if self.incompatible != 0 {
            let bit = self.incompatible.trailing_zeros();
            return Err(match INCOMPATIBLE.get(bit as usize) {
                Some(name) => HeaderError::Feature(name),
                None => HeaderError::UnknownFeature(bit),
            });
        }
        let cluster_size = self.cluster_size();
        // Bytes one L1 entry maps: a cluster of L2 entries of 8 bytes, each a cluster.
        let per_l1 = cluster_size * (cluster_size / 8);
        let needed = self.virtual_size.div_ceil(per_l1);
        if u64::from(self.l1_size) < needed {
            return Err(HeaderError::L1TooSmall {
                entries: self.l1_size,
                size: self.virtual_size,
                needed,
            });
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(HeaderError::TableTooLarge {
                what: "an L1 table",
                bytes: l1_bytes,
                max: MAX_L1_BYTES,
            });
        }
        self.table_in_file("L1 table", self.l1_table_offset, l1_bytes)?;
        let reftable_bytes = self.reftable_bytes();
        if reftable_bytes == 0 {
            return Err(HeaderError::EmptyRefcountTable);
        }
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(HeaderError::TableTooLarge {
                what: "a refcount table",
                bytes: reftable_bytes,
                max: MAX_REFTABLE_BYTES,
            });
        }
        self.table_in_file("refcount table", self.refcount_table_offset, reftable_bytes)
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes of the refcount table.
    pub fn reftable_bytes(&self) -> u64 {
        u64::from(self.refcount_table_clusters) * self.cluster_size()
    }

    /// `[offset, offset + bytes)` is cluster aligned and inside the file.
    fn table_in_file(
        &self,
        what: &'static str,
        offset: u64,
        bytes: u64,
    ) -> Result<(), HeaderError> {
        if offset % self.cluster_size() != 0 {
            return Err(HeaderError::Unaligned { what, offset });
        }
        match offset.checked_add(bytes) {
            Some(end) if end <= self.file_len => Ok(()),
            end => Err(HeaderError::Truncated {
                what,
                end: end.unwrap_or(u64::MAX),
                len: self.file_len,
            }),
        }
    }

    /// An upper bound of the size the file can reach once every guest cluster is
    /// allocated, counted in whole clusters: the file as it is now (`current_len`: the
    /// clusters it holds stay, snapshots and leaked clusters included) plus a fresh
    /// allocation of the whole disk: one data cluster per guest cluster, the L2 tables
    /// mapping them, the L1 table, the refcount blocks covering all of that and the file
    /// as it is, and the refcount table twice (a table that grows is copied before the old
    /// one is freed). A cluster that is shared (a snapshot's) is copied at most once
    /// before it is the guest's alone; freed clusters are reused (imago and QEMU both
    /// allocate from the first free cluster), so rewriting does not grow the file.
    pub fn size_bound(&self, current_len: u64) -> u64 {
        let c = 1u128 << self.cluster_bits;
        let div_up = |a: u128, b: u128| a.div_ceil(b);
        let l2_entry: u128 = if self.incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            16
        } else {
            8
        };
        let data = div_up(u128::from(self.virtual_size), c);
        let l2 = div_up(data, c / l2_entry);
        let l1 = div_up(u128::from(self.l1_size).max(l2) * 8, c);
        let existing = div_up(u128::from(current_len), c);
        let covered = 1 + l1 + l2 + data + existing;
        let refcounts_per_block = c * 8 / (1u128 << self.refcount_order);
        let (mut blocks, mut table) = (0u128, 0u128);
        // Blocks must cover themselves and the table too: iterate to the fixed point
        // (two or three rounds).
        loop {
            let b = div_up(covered + blocks + 2 * table, refcounts_per_block);
            let t = div_up(b * 8, c);
            if (b, t) == (blocks, table) {
                break;
            }
            (blocks, table) = (b, t);
        }
        let clusters = covered + blocks + 2 * table;
        u64::try_from(clusters * c).unwrap_or(u64::MAX)
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; how much was read.
fn read_upto(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, HeaderError> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeaderError::Read(e)),
        }
    }
    Ok(got)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

#[cfg(test)]
pub(crate) mod tests;
