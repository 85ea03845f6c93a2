//! The kernel command line: its size limit and its place in guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Errors about the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the boot protocol allows.
    #[error("kernel command line is {len} bytes; the boot protocol allows at most {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit (without the NUL).
        max: usize,
    },
    /// Contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    Nul,
    /// Writing it into guest memory failed.
    #[error("writing the kernel command line into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes `cmdline` NUL-terminated at [`layout::CMDLINE_START`]; `max_with_nul` is the
/// protocol's limit including the NUL (2048 for ELF/PVH, the header's `cmdline_size` + 1
/// for a bzImage). Returns its address.
pub fn write(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    max_with_nul: usize,
) -> Result<GuestAddress, CmdlineError> {
    let max = max_with_nul.saturating_sub(1);
    if cmdline.len() > max {
        return Err(CmdlineError::TooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(CmdlineError::Nul);
    }
    let addr = GuestAddress(layout::CMDLINE_START);
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, addr).map_err(CmdlineError::Write)?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn writes_nul_terminated() {
        let m = mem();
        let a = write(&m, "console=ttyS0", 2048).unwrap();
        let mut buf = [0xffu8; 14];
        m.read_slice(&mut buf, a).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }

    #[test]
    fn limit_counts_the_nul() {
        let m = mem();
        assert!(write(&m, &"a".repeat(2047), 2048).is_ok());
        let e = write(&m, &"a".repeat(2048), 2048).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel command line is 2048 bytes; the boot protocol allows at most 2047"
        );
    }

    #[test]
    fn rejects_nul() {
        assert!(matches!(
            write(&mem(), "a\0b", 2048),
            Err(CmdlineError::Nul)
        ));
    }
}
