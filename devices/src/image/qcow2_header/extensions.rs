//! The qcow2 header extensions bulkhead reads: the backing file's format, and whether the
//! data lives in an external data file. Each extension is a type, a length, and data
//! padded to 8 bytes; a type 0 ends the list, as does the end of the area given.

use std::fs::File;

use super::{be32, read_upto, HeaderError};

/// Header extension: end of the list.
const EXT_END: u32 = 0;
/// Header extension: the backing file's format name.
pub(super) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: the external data file's name.
pub(super) const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Longest backing format name read (QEMU's are a few letters).
const MAX_FORMAT_NAME: u32 = 64;

/// What the header extensions say.
#[derive(Default)]
pub(super) struct Extensions {
    pub(super) backing_format: Option<String>,
    pub(super) data_file: bool,
}

/// Reads the header extensions in `start..end` of `file` (`file_len` bytes long).
pub(super) fn read(
    file: &File,
    start: u64,
    end: u64,
    file_len: u64,
) -> Result<Extensions, HeaderError> {
    let truncated = |what, end| HeaderError::Truncated {
        what,
        end,
        len: file_len,
    };
    let mut ext = Extensions::default();
    let mut at = start;
    while at + 8 <= end {
        let mut head = [0u8; 8];
        if read_upto(file, &mut head, at)? < head.len() {
            return Err(truncated("header extension list", at + 8));
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
                    return Err(truncated("backing format name", data_at + u64::from(len)));
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
