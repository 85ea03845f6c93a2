//! Why a qcow2 chain can't be served: each error names the file (its path, or `fd N`).

use std::io;

use super::MAX_METADATA_BYTES;

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
    /// A table the header names lies (partly) past the end of the file.
    #[error(
        "disk image {name} is truncated or corrupt: its {what} ends at byte {end}, \
         past the end of the file ({len} bytes)"
    )]
    Truncated {
        /// The file.
        name: String,
        /// Which part.
        what: &'static str,
        /// Where it ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// A header field that makes no sense.
    #[error("disk image {name} has a corrupt qcow2 header: {problem}")]
    Corrupt {
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
