//! A top image and the chain of backing files it names, each opened by the caller's opener
//! (the launcher's path rules, or a standalone backend's plain open) — read-write for the
//! top unless read-only, read-only for every backing file.
//!
//! CONTRACT (issue 13, branch `chain` fills this in): the signatures below are what the
//! launcher (`jailer/src/launch/blk.rs`) and `bulkhead-blk --blk-file` call.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::format::ImageFormat;

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
    /// Placeholder until the chain branch lands.
    #[error("backing files are not supported yet ({0})")]
    Unsupported(String),
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
/// [`MAX_CHAIN`] files, an external data file, a header that can't be parsed.
pub fn open_chain(
    top_path: &Path,
    top: File,
    top_format: ImageFormat,
    open_backing: &mut dyn FnMut(&Path) -> io::Result<File>,
) -> Result<Chain, ChainError> {
    let _ = open_backing;
    Ok(Chain {
        links: vec![ChainLink {
            path: top_path.to_owned(),
            file: top,
            format: top_format,
        }],
    })
}
