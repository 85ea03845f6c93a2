//! The few fields of a qcow2 header the launcher needs before anything serves the image:
//! the virtual size, the geometry that bounds how large the file can grow, the backing
//! file's name and format, and whether the data lives in an external file.
//!
//! Parsed here rather than through `imago`: opening an image with imago reads and checks
//! much more (L1 table, refcounts), which is the serving backend's business, while the
//! launcher, which opens files as root, wants only these fields, each bounds-checked before
//! use, with an error that names the field. The layout is QEMU's `docs/interop/qcow2.txt`
//! (all numbers big-endian): version 2 has a 72-byte header, version 3 says its length;
//! header extensions (type, length, data padded to 8 bytes) follow it, up to the backing
//! file name or the end of the first cluster.

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
/// Header extension: end of the list.
const EXT_END: u32 = 0;
/// Header extension: the backing file's format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: the external data file's name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Incompatible feature bit: the data lives in an external file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit: extended L2 entries (16 bytes instead of 8).
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Longest backing format name read (QEMU's are a few letters).
const MAX_FORMAT_NAME: u32 = 64;

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
}

/// Why a qcow2 header can't be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Reading failed.
    #[error("reading its qcow2 header: {0}")]
    Read(#[source] io::Error),
    /// The file ends inside the header (or a part it points at).
    #[error("truncated qcow2 image: its {what} ends at byte {end}, past the end of the file")]
    Truncated {
        /// What the file ends inside.
        what: &'static str,
        /// Where that ends.
        end: u64,
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
}

impl Qcow2Header {
    /// Reads and checks the header of `file`.
    pub fn read(file: &File) -> Result<Qcow2Header, HeaderError> {
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        let got = read_upto(file, &mut fixed, 0)?;
        if got < V2_HEADER_LEN as usize {
            return Err(if got >= 4 && fixed[..4] != QCOW2_MAGIC {
                HeaderError::Magic
            } else {
                HeaderError::Truncated {
                    what: "header",
                    end: V2_HEADER_LEN.into(),
                }
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
        let virtual_size = be64(&fixed, 24);
        let l1_size = be32(&fixed, 36);
        let (incompatible, refcount_order, header_len) = if version == 3 {
            if got < V3_HEADER_LEN as usize {
                return Err(HeaderError::Truncated {
                    what: "header",
                    end: V3_HEADER_LEN.into(),
                });
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
        let ext = read_extensions(file, u64::from(header_len), ext_end)?;
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
                return Err(HeaderError::Truncated {
                    what: "backing file name",
                    end: backing_offset + u64::from(backing_size),
                });
            }
            Some(name)
        } else {
            None
        };
        Ok(Qcow2Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            refcount_order,
            incompatible,
            backing_file,
            backing_format: ext.backing_format,
            external_data_file: ext.data_file || incompatible & INCOMPAT_DATA_FILE != 0,
        })
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

/// What the header extensions say.
#[derive(Default)]
struct Extensions {
    backing_format: Option<String>,
    data_file: bool,
}

/// Reads the header extensions in `start..end`.
fn read_extensions(file: &File, start: u64, end: u64) -> Result<Extensions, HeaderError> {
    let mut ext = Extensions::default();
    let mut at = start;
    while at + 8 <= end {
        let mut head = [0u8; 8];
        if read_upto(file, &mut head, at)? < head.len() {
            return Err(HeaderError::Truncated {
                what: "header extension list",
                end: at + 8,
            });
        }
        let (kind, len) = (be32(&head, 0), be32(&head, 4));
        if kind == EXT_END {
            return Ok(ext);
        }
        let data_at = at + 8;
        let padded = u64::from(len).div_ceil(8) * 8;
        if data_at + padded > end {
            return Err(HeaderError::Field {
                field: "header extension length",
                value: len.into(),
                why: "runs past the end of the extension area",
            });
        }
        match kind {
            EXT_BACKING_FORMAT => {
                if len > MAX_FORMAT_NAME {
                    return Err(HeaderError::Field {
                        field: "backing format extension length",
                        value: len.into(),
                        why: "at most 64 bytes",
                    });
                }
                let mut name = vec![0u8; len as usize];
                if read_upto(file, &mut name, data_at)? < name.len() {
                    return Err(HeaderError::Truncated {
                        what: "backing format name",
                        end: data_at + u64::from(len),
                    });
                }
                ext.backing_format = Some(String::from_utf8_lossy(&name).into_owned());
            }
            EXT_DATA_FILE => ext.data_file = true,
            _ => {}
        }
        at = data_at + padded;
    }
    Ok(ext)
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
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "bulkhead-header-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A version 3 header of a 1 GiB disk with 64 KiB clusters, `extra` written after
    /// byte 104 (extensions), and a backing name at 512 if given.
    fn v3(extra: &[u8], backing: Option<&[u8]>) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        if let Some(name) = backing {
            h[8..16].copy_from_slice(&512u64.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h[512..512 + name.len()].copy_from_slice(name);
        }
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h[104..104 + extra.len()].copy_from_slice(extra);
        h
    }

    fn ext(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend((data.len() as u32).to_be_bytes());
        e.extend(data);
        e.resize(8 + data.len().div_ceil(8) * 8, 0);
        e
    }

    #[test]
    fn reads_size_backing_name_and_format() {
        let h = Qcow2Header::read(&file_with(&v3(
            &ext(EXT_BACKING_FORMAT, b"raw"),
            Some(b"base.raw"),
        )))
        .unwrap();
        assert_eq!(h.virtual_size, 1 << 30);
        assert_eq!(h.backing_file.as_deref(), Some(&b"base.raw"[..]));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert!(!h.external_data_file);
        let plain = Qcow2Header::read(&file_with(&v3(&[], None))).unwrap();
        assert_eq!((plain.backing_file, plain.backing_format), (None, None));
    }

    #[test]
    fn external_data_files_are_seen() {
        let h = Qcow2Header::read(&file_with(&v3(&ext(EXT_DATA_FILE, b"d.raw"), None)));
        assert!(h.unwrap().external_data_file);
        let mut bit = v3(&[], None);
        bit[79] = INCOMPAT_DATA_FILE as u8;
        assert!(
            Qcow2Header::read(&file_with(&bit))
                .unwrap()
                .external_data_file
        );
    }

    #[test]
    fn bad_headers_are_refused_naming_the_field() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (v3(&[], None)[..50].to_vec(), "its header ends at byte 72"),
            (v3(&[], None)[..90].to_vec(), "its header ends at byte 104"),
            (vec![0u8; 200], "no qcow2 magic"),
            (
                {
                    let mut h = v3(&[], None);
                    h[7] = 9;
                    h
                },
                "version is 9",
            ),
            (
                {
                    let mut h = v3(&[], None);
                    h[23] = 40;
                    h
                },
                "cluster_bits is 40",
            ),
            (
                {
                    let mut h = v3(&[], None);
                    h[16..20].copy_from_slice(&5000u32.to_be_bytes());
                    h[8..16].copy_from_slice(&512u64.to_be_bytes());
                    h
                },
                "backing_file_size is 5000",
            ),
            (
                {
                    let mut e = ext(EXT_BACKING_FORMAT, b"raw");
                    e[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
                    v3(&e, None)
                },
                "runs past the end",
            ),
            (
                v3(&ext(EXT_BACKING_FORMAT, b"raw"), None)[..108].to_vec(),
                "its header extension list ends at byte 112",
            ),
            (
                v3(&[], Some(b"base"))[..514].to_vec(),
                "its backing file name ends at byte 516",
            ),
        ];
        for (bytes, want) in cases {
            let e = Qcow2Header::read(&file_with(&bytes))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn the_size_bound_covers_a_full_allocation() {
        let h = Qcow2Header::read(&file_with(&v3(&[], None))).unwrap();
        let bound = h.size_bound(4096);
        // 16384 data clusters, 8 L2 tables, a refcount block or so: just above 1 GiB.
        assert!(bound > 1 << 30 && bound < (1 << 30) + (4 << 20), "{bound}");
        // A large file as it is counts in full.
        assert!(h.size_bound(1 << 30) > 2 << 30);
        let mut huge = h.clone();
        huge.virtual_size = u64::MAX;
        huge.cluster_bits = 9;
        huge.refcount_order = 6;
        assert_eq!(huge.size_bound(u64::MAX), u64::MAX);
    }
}
