//! Why a qcow2 chain can't be served: each error names the file (its path, or `fd N`).

use std::io;

use super::MAX_METADATA_BYTES;
use crate::image::qcow2_header::HeaderError;

/// Why a qcow2 chain can't be served.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Reading or inspecting the file failed.
    #[error("reading disk image {name}: {source}")]
    Read {
        /// The file.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The qcow2 header can't be used, or names what bulkhead does not serve.
    #[error("disk image {name}: {source}")]
    Header {
        /// The file.
        name: String,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// The header and imago disagree.
    #[error("disk image {name} has a corrupt qcow2 header: {problem}")]
    Corrupt {
        /// The file.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A cluster imago must never allocate over has no refcount (it would be taken as
    /// free on the first write).
    #[error(
        "disk image {name} has corrupt qcow2 refcounts: {problem}; `qemu-img check -r all` \
         repairs it, or serve it with readonly=on"
    )]
    Refcounts {
        /// The file.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A qcow2 feature bulkhead does not serve.
    #[error("disk image {name} uses a qcow2 feature bulkhead does not support: {feature}")]
    Unsupported {
        /// The file.
        name: String,
        /// Which feature.
        feature: String,
    },
    /// The virtual size can't be a disk's.
    #[error(
        "disk image {name} has a virtual size of {size} bytes, which is not a non-zero \
         multiple of {multiple}"
    )]
    Size {
        /// The file.
        name: String,
        /// Its virtual size.
        size: u64,
        /// What it must be a multiple of.
        multiple: u64,
    },
    /// The files given do not make the chain the headers describe.
    #[error("disk image {name}: {problem}")]
    Chain {
        /// The file.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The metadata would take more memory than allowed.
    #[error(
        "disk image {name}: its qcow2 metadata may take {bytes} bytes of memory, more than \
         the {max} bulkhead allows (clusters too large, or a chain too deep)",
        max = MAX_METADATA_BYTES
    )]
    TooMuchMemory {
        /// The top file.
        name: String,
        /// The bound computed.
        bytes: u64,
    },
    /// imago refused the file.
    #[error("opening qcow2 image {name}: {source}")]
    Open {
        /// The file.
        name: String,
        /// imago's error.
        #[source]
        source: io::Error,
    },
}
