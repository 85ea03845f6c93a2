//! A disk's image as the launcher opens it, for `bulkhead-blk` (at start, and for a drive
//! swap): the top file by the rules for paths a user names, its format (`format=`, else a
//! probe that never guesses qcow2), every backing file a qcow2 names (opened by the same
//! rules, read-only), the size the guest sees, the largest the file may grow to, and
//! QEMU-compatible locks on every file unless `lock=off`.
//!
//! The file-size bound becomes the backend's RLIMIT_FSIZE: a raw image may not grow
//! through the backend at all; a qcow2 grows as the guest writes, up to
//! [`Qcow2Header::size_bound`]. An image whose bound is more than this host lets the
//! launcher write (its own RLIMIT_FSIZE, or the largest file the file system holds, which
//! `lseek` past it reveals without writing) is refused at start, naming the file: it would
//! otherwise fail in the middle of the guest's writes.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use bulkhead_devices::image::chain::{check_backing_owners, open_chain, Chain, ChainError};
use bulkhead_devices::image::format::{self, FormatError};
use bulkhead_devices::image::lock::{self, LockError, LockRole};
use bulkhead_devices::image::qcow2_header::{HeaderError, Qcow2Header};
use bulkhead_devices::image::ImageFormat;

use super::{open_named, LaunchError};
use crate::safe_open::Access;

/// How a disk's image is to be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Served read-only (the top opened read-only, locked as a reader).
    pub readonly: bool,
    /// The format the user said (`None`: probed; a probed qcow2 is refused).
    pub format: Option<ImageFormat>,
    /// Take QEMU-compatible locks.
    pub lock: bool,
}

/// An opened, checked (and locked) image.
#[derive(Debug)]
pub struct OpenedImage {
    /// The top image first, then its backing files.
    pub chain: Chain,
    /// The size the guest sees, in bytes: a raw file's size, a qcow2's virtual size.
    pub size: u64,
    /// The most the top file may grow to (the backend's RLIMIT_FSIZE).
    pub max_file_size: u64,
    /// Whether the top is a block device.
    pub block_device: bool,
}

impl OpenedImage {
    /// The top image.
    pub fn top(&self) -> &File {
        &self.chain.links[0].file
    }

    /// The format the top is served as.
    pub fn format(&self) -> ImageFormat {
        self.chain.links[0].format
    }
}

/// Why an image can't be served (each names the file).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Its format can't be settled.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Its chain can't be opened.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Another process holds it.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The top qcow2's header can't be used.
    #[error("disk image {path}: {source}")]
    Header {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// A qcow2's virtual size can't be served.
    #[error("disk image {path} (qcow2) has a virtual size of {size} bytes, {why}")]
    VirtualSize {
        /// The image.
        path: PathBuf,
        /// Its virtual size.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A backing file the owner of the image naming it could not read (a
    /// [`ChainError::BackingOwner`]), with the launcher's way around it.
    #[error("{0} (or open the disk with --open-as UID:GID)")]
    BackingOwner(ChainError),
    /// The image may grow beyond what the host allows.
    #[error(
        "disk image {path} (qcow2, virtual size {virtual_size} bytes) may grow to {bound} bytes \
         once fully allocated, more than {limit}"
    )]
    TooBig {
        /// The image.
        path: PathBuf,
        /// Its virtual size.
        virtual_size: u64,
        /// How large the file may grow.
        bound: u64,
        /// What does not allow it.
        limit: String,
    },
}

/// Opens, checks and (unless `lock=off`) locks disk `name`'s image at `path`.
pub fn open_image(
    name: &str,
    path: &Path,
    options: ImageOptions,
) -> Result<OpenedImage, LaunchError> {
    let image_err = |error: ImageError| LaunchError::Image {
        name: name.to_owned(),
        error: Box::new(error),
    };
    let access = if options.readonly {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let top = open_named(name, "disk image", path, access)?;
    let meta = top.metadata().map_err(open_error(name, path))?;
    let block_device = meta.file_type().is_block_device();
    let shown = path.display().to_string();
    let top_format =
        format::resolve(options.format, &top, &shown).map_err(|e| image_err(e.into()))?;
    let chain = open_chain(path, top, top_format, &mut |p: &Path| open_backing(p))
        .map_err(|e| image_err(e.into()))?;
    check_owners_as_root(&chain).map_err(image_err)?;
    let (size, max_file_size) = match top_format {
        ImageFormat::Raw => {
            let size = super::blk::image_size(name, path, &chain.links[0].file)?;
            (size, size)
        }
        ImageFormat::Qcow2 => {
            qcow2_sizes(path, &chain.links[0].file, meta.len(), block_device).map_err(image_err)?
        }
    };
    if options.lock {
        for (i, link) in chain.links.iter().enumerate() {
            let role = match i {
                0 if options.readonly => LockRole::Reader,
                0 => LockRole::Writer {
                    resize: link.format == ImageFormat::Qcow2,
                },
                _ => LockRole::Backing,
            };
            lock::lock(&link.file, &link.path.display().to_string(), role)
                .map_err(|e| image_err(e.into()))?;
        }
    }
    Ok(OpenedImage {
        chain,
        size,
        max_file_size,
        block_device,
    })
}

/// A backing file, opened read-only by the rules for paths a user names. A failed open of
/// the file itself is its OS error (the message names the file already); a refusal by the
/// rules, or a failure on the way to it, keeps its whole text and the OS error's kind.
fn open_backing(path: &Path) -> io::Result<File> {
    use crate::safe_open::SafeOpenError;
    crate::safe_open::open(path, Access::Read).map_err(|e| match e {
        SafeOpenError::Io {
            source, component, ..
        } if component == path => source,
        e => {
            let kind = e.io_kind().unwrap_or(io::ErrorKind::Other);
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            io::Error::new(kind, text)
        }
    })
}

/// Refuses a backing file that the owner of the image naming it could not read
/// ([`check_backing_owners`]), when the launcher opens as root (no `--open-as`; opened as
/// its identity, the kernel already checked that identity's permissions).
fn check_owners_as_root(chain: &Chain) -> Result<(), ImageError> {
    if crate::open_as::opener_uid() != 0 {
        return Ok(());
    }
    check_backing_owners(chain).map_err(|e| match e {
        e @ ChainError::BackingOwner { .. } => ImageError::BackingOwner(e),
        e => ImageError::Chain(e),
    })
}

/// A qcow2 top's virtual size and the bound of its file's size, checked against what the
/// host allows.
fn qcow2_sizes(
    path: &Path,
    file: &File,
    current_len: u64,
    block_device: bool,
) -> Result<(u64, u64), ImageError> {
    let header = Qcow2Header::read(file).map_err(|source| ImageError::Header {
        path: path.to_owned(),
        source,
    })?;
    let size = header.virtual_size;
    let bad = |why| ImageError::VirtualSize {
        path: path.to_owned(),
        size,
        why,
    };
    if size == 0 {
        return Err(bad("empty"));
    }
    if size % 512 != 0 {
        return Err(bad(
            "not a multiple of 512 (the disk must be a whole number of 512-byte sectors)",
        ));
    }
    let bound = header.size_bound(current_len);
    // A block device does not grow, and RLIMIT_FSIZE does not apply to it.
    if !block_device {
        if let Some(limit) = host_limit(file, bound) {
            return Err(ImageError::TooBig {
                path: path.to_owned(),
                virtual_size: size,
                bound,
                limit,
            });
        }
    }
    Ok((size, bound))
}

/// What stops this process from writing a file of `bound` bytes where `file` is, if
/// anything: its RLIMIT_FSIZE, or the file system's largest file (`lseek` to an offset
/// past it fails with EINVAL; the offset is put back).
fn host_limit(mut file: &File, bound: u64) -> Option<String> {
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
    {
        if soft != libc::RLIM_INFINITY && bound > soft {
            return Some(format!(
                "this process may write (RLIMIT_FSIZE {soft} bytes; see ulimit -f)"
            ));
        }
    }
    let too_far = match i64::try_from(bound) {
        Ok(offset) => file
            .seek(SeekFrom::Start(offset as u64))
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)),
        Err(_) => true,
    };
    let _ = file.rewind();
    too_far.then(|| "the largest file its file system holds".to_owned())
}

/// The error for disk image `path` of device `name`.
pub(super) fn open_error<'a>(
    name: &'a str,
    path: &'a Path,
) -> impl Fn(io::Error) -> LaunchError + 'a {
    move |source| LaunchError::OpenDisk {
        what: "disk image",
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    }
}
