//! Placing the initrd: page aligned, as high as the kernel allows, clear of the kernel.

use crate::config::HostFile;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::zero_page::InitrdPlacement;
use super::BootError;

const PAGE: u64 = 4096;

/// Where an initrd of `size` bytes goes: the highest page-aligned address such that it ends
/// at or below `limit` (RAM end, or the kernel's `initrd_addr_max` + 1) and starts at or
/// above `kernel_end`.
pub fn place(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    (start >= kernel_end.next_multiple_of(PAGE)).then_some(start)
}

/// Loads the initrd `initrd` into guest memory.
pub fn load(
    mem: &GuestMemoryMmap,
    initrd: &HostFile,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let path = &initrd.path;
    let read_err = |source| BootError::Initrd {
        path: path.to_owned(),
        source,
    };
    let mut file = initrd.open_read().map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr = place(size, kernel_end, limit).ok_or(BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
        room: limit.saturating_sub(kernel_end),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::GuestWrite("initrd", e))?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_high_and_aligned() {
        assert_eq!(
            place(0x1800, 0x200000, 0x1000_0000),
            Some(0x1000_0000 - 0x2000)
        );
        assert_eq!(
            place(0x1000, 0x200000, 0x1000_0000),
            Some(0x1000_0000 - 0x1000)
        );
    }

    #[test]
    fn refuses_overlap_with_the_kernel() {
        assert_eq!(place(0x1000, 0x0fff_f001, 0x1000_0000), None);
        assert_eq!(place(0x2000_0000, 0x100000, 0x1000_0000), None);
    }
}
