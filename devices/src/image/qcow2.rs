//! A qcow2 chain served through `imago`.
//!
//! Opened from files already open (a [`Chain`](super::chain::Chain)'s, or descriptors the
//! launcher passed): no path is opened here, and imago's implicit opens (a backing file or
//! an external data file named in a header) are denied — every backing image is set
//! explicitly from the next file of the chain, the data file explicitly to none.
//! The top image is opened writable unless served read-only; every backing image
//! read-only, by imago (`writable = false`) and by the kernel (a backing descriptor open
//! for writing is refused), so nothing is ever written to a backing file.
//!
//! Before imago sees a file, its header is checked here ([`Qcow2Header::read`] and
//! [`Qcow2Header::check_servable`], the parser the launcher's chain opener uses too): what
//! imago would refuse late, silently accept, or allocate without bound is refused at start,
//! naming the file and the problem.
//!
//! # Memory bound
//! imago keeps, per qcow2 file, an LRU cache of 128 L2 tables and one of 32 refcount
//! blocks, each table one cluster (fixed in imago 0.2.6, `Qcow2::do_open`), plus the whole
//! L1 table and (top image only) the whole refcount table. So a qcow2 layer holds at most
//! `160 × cluster_size + 8 × l1_size + refcount table bytes`: 10 MiB + L1 for the default
//! 64 KiB clusters, whatever the virtual size (a 1 TiB image's L1 is 16 KiB). The L1 table
//! is refused above 32 MiB and the refcount table above 8 MiB (QEMU's own limits), and a
//! chain whose bound exceeds [`MAX_METADATA_BYTES`] is refused; the bound is logged at open.
//!
//! # Flush order
//! A guest FLUSH ([`Qcow2Image::flush`]) makes the data durable before the metadata that
//! points at it: (1) `fdatasync` of the top file, so every data cluster written so far is
//! on disk; (2) imago's `flush`, which writes back dirty refcount blocks, then L2 tables
//! (imago orders those two itself), then the header; (3) imago's `sync` (`fsync`).
//!
//! Gap (documented, not closed): imago writes a dirty L2 table or refcount block back when
//! the LRU evicts it, which can happen in the middle of a write, before the data it points
//! at is durable. A *host* crash at that moment can leave a cluster mapped whose data never
//! reached the disk: it then reads as whatever that host cluster held (zeros for a cluster
//! past the old end of the file, or this same image's freed data). A process crash loses
//! nothing (the page cache has both). QEMU's qcow2 driver has the same window between
//! flushes; the guest's FLUSH is the durability point, as virtio-blk specifies.

use std::fs::File;
use std::io;
use std::sync::{PoisonError, RwLock};

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, ShallowMapping, StorageOpenOptions};
use vm_memory::VolatileSlice;

use super::format::ImageFormat;
use super::qcow2_header::Qcow2Header;

#[path = "qcow2_error.rs"]
mod error;

pub use error::Qcow2Error;

/// Most memory a chain's qcow2 metadata (caches and tables) may take: 1 GiB.
pub const MAX_METADATA_BYTES: u64 = 1 << 30;

/// L2 tables imago caches per qcow2 file (imago 0.2.6, not configurable).
pub const L2_CACHE_TABLES: u64 = 128;
/// Refcount blocks imago caches per qcow2 file (imago 0.2.6, not configurable).
pub const REFBLOCK_CACHE_TABLES: u64 = 32;

/// One file of a chain, as the qcow2 driver takes it.
#[derive(Debug)]
pub struct Layer {
    /// What messages call it (its path, or `fd N`).
    pub name: String,
    /// The open file (read-only for every backing file).
    pub file: File,
    /// Its format.
    pub format: ImageFormat,
}

impl From<super::chain::ChainLink> for Layer {
    fn from(link: super::chain::ChainLink) -> Self {
        Layer {
            name: link.path.display().to_string(),
            file: link.file,
            format: link.format,
        }
    }
}

type Access = FormatAccess<ImagoFile>;

/// A qcow2 image (and its backing chain) served to a guest.
#[derive(Debug)]
pub struct Qcow2Image {
    /// Read and write take it shared; DISCARD and WRITE_ZEROES with unmap take it
    /// exclusively, because imago's `discard_to_zero` may free clusters that a concurrent
    /// request has mapped (imago asks for `&mut` for that reason).
    access: RwLock<Access>,
    /// The top file, for the `fdatasync` that comes first in a FLUSH.
    top: File,
    name: String,
    size: u64,
    read_only: bool,
    metadata_bound: u64,
}

/// How to serve the chain.
#[derive(Clone, Copy, Debug)]
pub struct Qcow2Options {
    /// Serve the top image read-only.
    pub read_only: bool,
    /// The logical block size: the virtual size must be a multiple of it.
    pub logical_block_size: u32,
}

impl Qcow2Image {
    /// Opens the chain `layers` (top first; the top is a qcow2; each file after it backs
    /// the one before). Every header is checked first; then the chain is built bottom up
    /// through imago with implicit opens denied.
    pub fn open(layers: Vec<Layer>, options: Qcow2Options) -> Result<Qcow2Image, Qcow2Error> {
        let Some(top) = layers.first() else {
            return Err(Qcow2Error::Chain {
                name: "(none)".into(),
                problem: "no image given".into(),
            });
        };
        let name = top.name.clone();
        if top.format != ImageFormat::Qcow2 {
            return Err(Qcow2Error::Chain {
                name,
                problem: "the top image of a qcow2 chain is not a qcow2".into(),
            });
        }
        let top_dup = top.file.try_clone().map_err(|source| Qcow2Error::Read {
            name: name.clone(),
            source,
        })?;
        let mut infos = Vec::with_capacity(layers.len());
        let mut bound = 0u64;
        for (i, layer) in layers.iter().enumerate() {
            if i > 0 {
                check_read_only(layer)?;
            }
            let info = match layer.format {
                ImageFormat::Qcow2 => {
                    let info = check_header(layer)?;
                    if i == 0 && !options.read_only {
                        super::qcow2_refcounts::check(&layer.file, &info).map_err(|problem| {
                            Qcow2Error::Refcounts {
                                name: layer.name.clone(),
                                problem,
                            }
                        })?;
                    }
                    bound = bound.saturating_add(metadata_bound(&info, i == 0));
                    Some(info)
                }
                ImageFormat::Raw => None,
            };
            check_link(&layers, i, info.as_ref())?;
            infos.push(info);
        }
        if bound > MAX_METADATA_BYTES {
            return Err(Qcow2Error::TooMuchMemory { name, bytes: bound });
        }
        let size = infos[0].as_ref().map_or(0, |i| i.virtual_size);
        let multiple = 512u64.max(u64::from(options.logical_block_size));
        if size == 0 || size % multiple != 0 {
            return Err(Qcow2Error::Size {
                name,
                size,
                multiple,
            });
        }
        let access = build_chain(layers, options.read_only)?;
        if access.size() != size {
            return Err(Qcow2Error::Corrupt {
                name,
                problem: format!(
                    "imago reads a virtual size of {} bytes, the header {size}",
                    access.size()
                ),
            });
        }
        log::info!(
            "qcow2 {name}: {} file(s) in the chain, metadata memory bounded by {bound} bytes",
            infos.len()
        );
        Ok(Qcow2Image {
            access: RwLock::new(access),
            top: top_dup,
            name,
            size,
            read_only: options.read_only,
            metadata_bound: bound,
        })
    }

    /// What messages call the image (the top file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The most memory the chain's metadata caches and tables take (see the module docs).
    pub fn metadata_bound(&self) -> u64 {
        self.metadata_bound
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        self.access.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, Access> {
        self.access.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the disk from `offset` into guest memory `slices`, straight (no copy here).
    ///
    /// Fast path: a request of one guest buffer whose range imago maps, in one piece, to
    /// data clusters of the top file is read with one `preadv` on the top file (imago's
    /// mapping, our system call: what imago's `readv` would do, without building its I/O
    /// vectors). Anything else (backing data, zero clusters, several buffers, ranges that
    /// span discontiguous clusters) goes through imago's `readv`.
    pub fn read(&self, slices: &[VolatileSlice<'_, ()>], offset: u64) -> io::Result<()> {
        let access = self.shared();
        if let [slice] = slices {
            let len = slice.len() as u64;
            if let (ShallowMapping::Raw { offset: host, .. }, mapped) =
                access.get_shallow_mapping(offset, len)?
            {
                if mapped >= len && self.read_top(slice, host)? {
                    return Ok(());
                }
            }
        }
        let (vector, _guard) = IoVectorMut::from_volatile_slice(slices);
        access.readv(vector, offset)
    }

    /// Reads `slice` from byte `host` of the top file; false when the file ends first
    /// (imago's `readv` then reads the range again and fills what is past the end with
    /// zeros).
    fn read_top(&self, slice: &VolatileSlice<'_, ()>, host: u64) -> io::Result<bool> {
        let guard = slice.ptr_guard_mut();
        let (base, len) = (guard.as_ptr(), slice.len());
        let mut done = 0usize;
        while done < len {
            let at = host
                .checked_add(done as u64)
                .and_then(|o| libc::off64_t::try_from(o).ok())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            // Staying inside the buffer the guard describes (done < len).
            let iov = libc::iovec {
                iov_base: base.wrapping_add(done).cast(),
                iov_len: len - done,
            };
            // SAFETY: the iovec is guest memory the guard keeps mapped for this call, valid
            // for writes (guest RAM is mapped read-write) and aliased by no Rust reference;
            // preadv (the system call the blk role allows) writes only into it.
            let n = match unsafe { crate::sys::preadv(&self.top, &[iov], at) } {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            done += n;
        }
        Ok(true)
    }

    /// Writes guest memory `slices` to the disk at `offset`.
    pub fn write(&self, slices: &[VolatileSlice<'_, ()>], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let (vector, _guard) = IoVector::from_volatile_slice(slices);
        self.shared().writev(vector, offset)
    }

    /// Reads into a plain buffer.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.shared().read(buf, offset)
    }

    /// FLUSH: data durable, then metadata written back and durable (module docs).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // An exclusive hold: no write is half done (data written, L2 not yet updated)
        // while the caches are written back.
        let access = self.exclusive();
        self.top.sync_data()?;
        access.flush()?;
        access.sync()
    }

    /// DISCARD: the range reads as zeros afterwards (as a raw image's punched hole does;
    /// never the backing file's bytes), its clusters freed where whole.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    /// WRITE_ZEROES: with `unmap`, clusters are freed and marked zero (`discard_to_zero`);
    /// without, zero clusters keeping their allocation (`write_zeroes`).
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let done = if unmap {
            self.exclusive().discard_to_zero(offset, len)
        } else {
            self.shared().write_zeroes(offset, len)
        };
        match done {
            // Version 2 images have no zero clusters: imago says Unsupported; zeros are
            // then written as data.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.write_zero_bytes(offset, len),
            other => other,
        }
    }

    /// Writes zeros over `[offset, offset + len)` as data, 64 KiB at a time.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 65536] = [0; 65536];
        let access = self.shared();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            access.write(&ZEROS[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Reads and checks the header of qcow2 `layer`, naming it in errors.
pub fn check_header(layer: &Layer) -> Result<Qcow2Header, Qcow2Error> {
    let named = |source| Qcow2Error::Header {
        name: layer.name.clone(),
        source,
    };
    let header = Qcow2Header::read(&layer.file).map_err(named)?;
    header.check_servable().map_err(named)?;
    Ok(header)
}

/// The most memory imago's caches and tables take for a file with `header` (`top`: the
/// refcount table and refcount block cache exist only when writable, i.e. for the top
/// image; counted for it whether or not it is served read-only).
pub fn metadata_bound(header: &Qcow2Header, top: bool) -> u64 {
    let cluster_size = header.cluster_size();
    let mut bytes = L2_CACHE_TABLES * cluster_size + 8 * u64::from(header.l1_size);
    if top {
        bytes += REFBLOCK_CACHE_TABLES * cluster_size + header.reftable_bytes();
    }
    bytes
}

/// A backing file must be open read-only, so that the kernel refuses any write to it.
fn check_read_only(layer: &Layer) -> Result<(), Qcow2Error> {
    let fl = nix::fcntl::fcntl(&layer.file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| {
        Qcow2Error::Read {
            name: layer.name.clone(),
            source: e.into(),
        }
    })?;
    if fl & libc::O_ACCMODE != libc::O_RDONLY {
        return Err(Qcow2Error::Chain {
            name: layer.name.clone(),
            problem: "a backing file must be opened read-only".into(),
        });
    }
    Ok(())
}

/// Layer `i` (with its header `info` if a qcow2) names a backing file exactly when a next
/// layer was given.
fn check_link(layers: &[Layer], i: usize, info: Option<&Qcow2Header>) -> Result<(), Qcow2Error> {
    let layer = &layers[i];
    let names = info
        .and_then(|h| h.backing_file.as_deref())
        .map(String::from_utf8_lossy);
    let next = layers.get(i + 1);
    match (names, next) {
        (Some(backing), None) => Err(Qcow2Error::Chain {
            name: layer.name.clone(),
            problem: format!(
                "it names the backing file {backing:?}, but no backing file was opened for it"
            ),
        }),
        (None, Some(next)) => Err(Qcow2Error::Chain {
            name: layer.name.clone(),
            problem: format!(
                "{} was given as its backing file, but it names none",
                next.name
            ),
        }),
        _ => Ok(()),
    }
}

/// Opens `layers` through imago, bottom first, each backing set explicitly.
fn build_chain(layers: Vec<Layer>, read_only: bool) -> Result<Access, Qcow2Error> {
    let mut below: Option<Access> = None;
    for (i, layer) in layers.into_iter().enumerate().rev() {
        let writable = i == 0 && !read_only;
        let name = layer.name;
        let open_err = |source| Qcow2Error::Open {
            name: name.clone(),
            source,
        };
        let storage = ImagoFile::from_open_file(
            layer.file,
            StorageOpenOptions::new().write(writable).direct(false),
        )
        .map_err(open_err)?;
        let access = match layer.format {
            ImageFormat::Raw => {
                FormatAccess::new(Raw::open_image(storage, false).map_err(open_err)?)
            }
            ImageFormat::Qcow2 => {
                let mut qcow2 =
                    Qcow2::<ImagoFile>::open_image(storage, writable).map_err(open_err)?;
                if qcow2.requires_external_data_file() {
                    return Err(Qcow2Error::Unsupported {
                        name,
                        feature: "an external data file".into(),
                    });
                }
                qcow2.set_data_file(None);
                qcow2.set_backing(below.take());
                qcow2
                    .open_implicit_dependencies_gated(DenyImplicitOpenGate::default())
                    .map_err(open_err)?;
                FormatAccess::new(qcow2)
            }
        };
        below = Some(access);
    }
    below.ok_or_else(|| Qcow2Error::Chain {
        name: "(none)".into(),
        problem: "no image given".into(),
    })
}

#[cfg(test)]
#[path = "qcow2_tests.rs"]
mod tests;
