//! A top image and the chain of backing files it names, each opened by the caller's opener
//! (the launcher's path rules, or a standalone backend's plain open) — read-write for the
//! top unless read-only, read-only for every backing file.
//!
//! Each qcow2's header ([`Qcow2Header`]) names its backing file and, in a header extension,
//! that file's format. A relative name is resolved against the directory of the file that
//! names it, as QEMU does (`bdrv_get_full_backing_filename`), an absolute one taken as it
//! is; a `file:` prefix is dropped, any other protocol (`nbd:`, `json:`, ...) refused. A
//! backing file without a recorded format is probed: raw is accepted, a file that looks
//! like a qcow2 is refused (its header may have been written by the guest of the image
//! above it, into what was a raw disk, to name files of the host). The chain ends at a raw
//! file or a qcow2 without a backing file.
//!
//! A caller that opened the files as root also calls [`check_backing_owners`] (`owner.rs`):
//! a backing file the owner of the image naming it could not read is refused.
//!
//! Refused, naming the file: a backing file missing, a loop (the same device and inode
//! twice), more than [`MAX_CHAIN`] files, an external data file (not served, and a path
//! outside the chain), a header that can't be parsed or names a feature or table bulkhead
//! does not serve ([`Qcow2Header::check_servable`], the checks `bulkhead-blk` makes again
//! before serving), a backing format other than raw or qcow2.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

mod owner;

pub use owner::check_backing_owners;

use super::format::{self, ImageFormat};
use super::qcow2_header::{HeaderError, Qcow2Header};

/// Most files a chain may hold (top included): deeper is refused as a likely loop.
pub const MAX_CHAIN: usize = 16;

/// One file of a chain.
#[derive(Debug)]
pub struct ChainLink {
    /// The path it was opened by (the top's as given; a backing file's as resolved).
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Its format.
    pub format: ImageFormat,
}

/// A top image and its backing files, top first.
#[derive(Debug)]
pub struct Chain {
    /// `links[0]` is the image the guest sees; `links[i + 1]` backs `links[i]`.
    pub links: Vec<ChainLink>,
}

/// Why a chain can't be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A qcow2's header can't be used.
    #[error("disk image {path}: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// A backing file can't be opened (missing, most often).
    #[error("backing file {path} of disk image {named_by}: {source}")]
    Backing {
        /// The backing file, as resolved.
        path: PathBuf,
        /// The image naming it.
        named_by: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A backing file is already in the chain.
    #[error(
        "backing file {path} of disk image {named_by} is already in the chain (a backing loop)"
    )]
    Loop {
        /// The backing file.
        path: PathBuf,
        /// The image naming it.
        named_by: PathBuf,
    },
    /// Too many files.
    #[error("disk image {top}: its backing chain is longer than {MAX_CHAIN} files (at {path})")]
    TooDeep {
        /// The top image.
        top: PathBuf,
        /// The file that would have been one too many.
        path: PathBuf,
    },
    /// The data lives in an external data file.
    #[error(
        "disk image {path} keeps its data in an external data file, which bulkhead does not serve"
    )]
    ExternalData {
        /// The image.
        path: PathBuf,
    },
    /// A backing file name bulkhead does not follow.
    #[error("disk image {named_by} names backing file {name:?}: {why}")]
    BadName {
        /// The image naming it.
        named_by: PathBuf,
        /// The name as written (lossy).
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A recorded backing format bulkhead does not serve.
    #[error(
        "disk image {named_by} names backing file {path} of format {format:?}: only raw and qcow2 are served"
    )]
    BackingFormat {
        /// The backing file.
        path: PathBuf,
        /// The image naming it.
        named_by: PathBuf,
        /// The format recorded (lossy).
        format: String,
    },
    /// A backing file without a recorded format that looks like a qcow2.
    #[error(
        "backing file {path} of disk image {named_by} starts with a qcow2 header, and {named_by} \
         does not record its format: record it (`qemu-img rebase -u -F qcow2 -b BACKING {named_by}`) \
         if it is one (bulkhead does not guess: a guest can write a qcow2 header into a raw disk)"
    )]
    UnrecordedQcow2 {
        /// The backing file.
        path: PathBuf,
        /// The image naming it.
        named_by: PathBuf,
    },
    /// A backing file the owner of the image naming it could not read, opened as root
    /// ([`check_backing_owners`]).
    #[error(
        "backing file {path} (owner uid {owner}, mode {mode:o}) of disk image {named_by} \
         (owner uid {named_by_owner}): refused: a backing file must belong to the owner of the \
         image naming it or be readable by everyone, since whoever writes that image's header \
         chooses it"
    )]
    BackingOwner {
        /// The backing file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The image naming it.
        named_by: PathBuf,
        /// That image's owner.
        named_by_owner: u32,
    },
    /// An I/O error on a named file.
    #[error("disk image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Opens the chain below `top` (already open, served as `top_format`): for a qcow2 that
/// names a backing file, its path is resolved against the directory of the file naming it,
/// opened read-only with `open_backing`, its format taken from the naming file's header
/// extension (or probed, where the probe says raw), and so on down. Refused, naming the
/// file: a backing file missing, a loop (the same device and inode twice), more than
/// [`MAX_CHAIN`] files, an external data file, a header that can't be parsed or served.
pub fn open_chain(
    top_path: &Path,
    top: File,
    top_format: ImageFormat,
    open_backing: &mut dyn FnMut(&Path) -> io::Result<File>,
) -> Result<Chain, ChainError> {
    let mut seen = vec![identity(&top, top_path)?];
    let mut links = vec![ChainLink {
        path: top_path.to_owned(),
        file: top,
        format: top_format,
    }];
    // A raw file ends the chain.
    while let Some(last) = links.last().filter(|l| l.format == ImageFormat::Qcow2) {
        let header_err = |source| ChainError::Header {
            path: last.path.clone(),
            source,
        };
        let header = Qcow2Header::read(&last.file).map_err(header_err)?;
        if header.external_data_file {
            return Err(ChainError::ExternalData {
                path: last.path.clone(),
            });
        }
        header.check_servable().map_err(header_err)?;
        let Some(name) = &header.backing_file else {
            break;
        };
        let named_by = last.path.clone();
        let path = resolve(&named_by, name)?;
        if links.len() >= MAX_CHAIN {
            return Err(ChainError::TooDeep {
                top: top_path.to_owned(),
                path,
            });
        }
        let file = open_backing(&path).map_err(|source| ChainError::Backing {
            path: path.clone(),
            named_by: named_by.clone(),
            source,
        })?;
        let id = identity(&file, &path)?;
        if seen.contains(&id) {
            return Err(ChainError::Loop { path, named_by });
        }
        seen.push(id);
        let format = backing_format(&header, &file, &path, &named_by)?;
        links.push(ChainLink { path, file, format });
    }
    Ok(Chain { links })
}

/// The device and inode of `file`.
fn identity(file: &File, path: &Path) -> Result<(u64, u64), ChainError> {
    let meta = file.metadata().map_err(|source| ChainError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// Where backing file `name`, written in `named_by`'s header, is.
fn resolve(named_by: &Path, name: &[u8]) -> Result<PathBuf, ChainError> {
    let bad = |why| ChainError::BadName {
        named_by: named_by.to_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    };
    if name.contains(&0) {
        return Err(bad("it holds a NUL byte"));
    }
    let name = name.strip_prefix(b"file:").unwrap_or(name);
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    // QEMU reads `PROTOCOL:...` (a colon before any slash) as a protocol.
    if let Some(colon) = name.iter().position(|&b| b == b':') {
        if !name[..colon].contains(&b'/') {
            return Err(bad(
                "it is a protocol (nbd:, json:, ...), not a file; bulkhead opens files only",
            ));
        }
    }
    let name = Path::new(OsStr::from_bytes(name));
    if name.is_absolute() {
        return Ok(name.to_owned());
    }
    Ok(match named_by.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => name.to_owned(),
    })
}

/// The format backing file `file` is served as.
fn backing_format(
    header: &Qcow2Header,
    file: &File,
    path: &Path,
    named_by: &Path,
) -> Result<ImageFormat, ChainError> {
    match header.backing_format.as_deref() {
        Some(recorded) => recorded
            .parse::<ImageFormat>()
            .map_err(|_| ChainError::BackingFormat {
                path: path.to_owned(),
                named_by: named_by.to_owned(),
                format: recorded.to_owned(),
            }),
        None => match format::probe(file) {
            Ok(ImageFormat::Raw) => Ok(ImageFormat::Raw),
            Ok(ImageFormat::Qcow2) => Err(ChainError::UnrecordedQcow2 {
                path: path.to_owned(),
                named_by: named_by.to_owned(),
            }),
            Err(source) => Err(ChainError::Io {
                path: path.to_owned(),
                source,
            }),
        },
    }
}

#[cfg(test)]
mod tests;
