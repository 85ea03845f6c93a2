//! An image's format: what the user said (`format=raw|qcow2`), or a probe of the file.
//!
//! The probe never turns a disk into a qcow2 on its own: a guest can write a qcow2 header
//! into the first sector of its raw disk, and a VMM that then served the file as qcow2 would
//! let the guest name a backing file on the host. So without `format=`, a file that does not
//! start with the qcow2 magic is raw, and one that does is refused with a message asking the
//! user to say which it is.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::str::FromStr;

/// The first four bytes of every qcow2 file (`QFI\xfb`).
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// The formats bulkhead serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// The file's bytes are the disk's bytes.
    Raw,
    /// QEMU's copy-on-write format (versions 2 and 3).
    Qcow2,
}

impl ImageFormat {
    /// The name `format=` and `--format` take.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(format!("format={s}: expected raw or qcow2")),
        }
    }
}

/// Why an image's format can't be settled.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading the first bytes failed.
    #[error("reading the header of disk image {name}: {source}")]
    Read {
        /// The path or `fd N`.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Starts with the qcow2 magic, and the user did not say which format it is.
    #[error(
        "disk image {name} starts with a qcow2 header: pass format=qcow2 to serve it as qcow2, \
         or format=raw to serve its bytes as they are (bulkhead does not guess: a guest can \
         write a qcow2 header into a raw disk)"
    )]
    LooksLikeQcow2 {
        /// The path or `fd N`.
        name: String,
    },
}

/// What the first bytes of `file` say: `Qcow2` when they are the qcow2 magic, else `Raw`.
/// A file shorter than the magic is raw.
pub fn probe(file: &File) -> io::Result<ImageFormat> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => return Ok(ImageFormat::Raw),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if magic == QCOW2_MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// The format to serve `file` (called `name` in messages) as: `explicit` when the user gave
/// one, else the probe's answer when it is raw; a probed qcow2 is refused
/// ([`FormatError::LooksLikeQcow2`]).
pub fn resolve(
    explicit: Option<ImageFormat>,
    file: &File,
    name: &str,
) -> Result<ImageFormat, FormatError> {
    if let Some(format) = explicit {
        return Ok(format);
    }
    match probe(file) {
        Ok(ImageFormat::Raw) => Ok(ImageFormat::Raw),
        Ok(ImageFormat::Qcow2) => Err(FormatError::LooksLikeQcow2 {
            name: name.to_owned(),
        }),
        Err(source) => Err(FormatError::Read {
            name: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_file::file_with;

    #[test]
    fn probe_tells_qcow2_from_raw() {
        assert_eq!(
            probe(&file_with(b"QFI\xfb\0\0\0\x03")).unwrap(),
            ImageFormat::Qcow2
        );
        assert_eq!(probe(&file_with(&[0u8; 512])).unwrap(), ImageFormat::Raw);
        assert_eq!(probe(&file_with(b"QF")).unwrap(), ImageFormat::Raw);
        assert_eq!(probe(&file_with(b"")).unwrap(), ImageFormat::Raw);
    }

    #[test]
    fn a_probed_qcow2_is_never_served_without_the_users_word() {
        let f = file_with(b"QFI\xfb\0\0\0\x03");
        let e = resolve(None, &f, "/img").unwrap_err();
        assert!(
            e.to_string().contains("/img starts with a qcow2 header"),
            "{e}"
        );
        assert_eq!(
            resolve(Some(ImageFormat::Raw), &f, "/img").unwrap(),
            ImageFormat::Raw
        );
        assert_eq!(
            resolve(Some(ImageFormat::Qcow2), &f, "/img").unwrap(),
            ImageFormat::Qcow2
        );
        assert_eq!(
            resolve(None, &file_with(&[1; 8]), "/r").unwrap(),
            ImageFormat::Raw
        );
    }

    #[test]
    fn format_names_round_trip() {
        for f in [ImageFormat::Raw, ImageFormat::Qcow2] {
            assert_eq!(f.as_str().parse::<ImageFormat>().unwrap(), f);
        }
        assert!("vmdk"
            .parse::<ImageFormat>()
            .unwrap_err()
            .contains("raw or qcow2"));
    }
}
