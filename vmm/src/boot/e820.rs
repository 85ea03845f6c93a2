//! The e820 memory map the guest is told about, shared by the zero page and PVH.

use crate::config::Transport;
use crate::layout;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The map for `mem_size` bytes of RAM laid out as in [`crate::layout`].
///
/// Conventional memory up to the EBDA is RAM; the EBDA (where the MP table lives) up to
/// 1 MiB is reserved; then RAM to the MMIO gap and, for large guests, above 4 GiB. With the
/// PCI `transport`, the ECAM is reserved too: Linux uses the MCFG's area only if it is
/// reserved in e820 or by a PNP0C02 device (the DSDT does both); the BAR window stays
/// unreserved, or Linux would clip it out of the host bridge's windows.
pub fn memory_map(mem_size: u64, transport: Transport) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in layout::ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (
                layout::HIMEM_START,
                size.saturating_sub(layout::HIMEM_START),
            )
        } else {
            (start, size)
        };
        if size > 0 {
            map.push(E820Entry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    if transport == Transport::Pci {
        map.push(E820Entry {
            addr: layout::PCI_ECAM_START,
            size: layout::PCI_ECAM_SIZE,
            kind: E820_RESERVED,
        });
        map.sort_by_key(|e| e.addr);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_for_256_mib() {
        let m = memory_map(256 << 20, Transport::Mmio);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (256 << 20) - 0x100000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn map_above_4_gib() {
        let m = memory_map(5 << 30, Transport::Mmio);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].addr + m[2].size, layout::MMIO_GAP_START);
        assert_eq!(
            m[3],
            E820Entry {
                addr: 1 << 32,
                size: (5 << 30) - layout::MMIO_GAP_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for size in [2 << 20, 128 << 20, 3 << 30, 8 << 30] {
            for transport in [Transport::Mmio, Transport::Pci] {
                let m = memory_map(size, transport);
                for w in m.windows(2) {
                    assert!(w[0].addr + w[0].size <= w[1].addr, "{m:?}");
                }
            }
        }
    }

    fn ecam_entry() -> E820Entry {
        E820Entry {
            addr: 0xe000_0000,
            size: 0x10_0000,
            kind: E820_RESERVED,
        }
    }

    #[test]
    fn pci_reserves_the_ecam_and_nothing_else_changes() {
        for size in [256 << 20, 3 << 30, 5 << 30] {
            let mmio = memory_map(size, Transport::Mmio);
            let pci = memory_map(size, Transport::Pci);
            assert!(!mmio.contains(&ecam_entry()), "{mmio:?}");
            let without: Vec<_> = pci
                .iter()
                .filter(|&&e| e != ecam_entry())
                .copied()
                .collect();
            assert_eq!(without, mmio, "only the ECAM is added");
            assert_eq!(pci.len(), mmio.len() + 1, "{pci:?}");
        }
        // Below 4 GiB RAM, the ECAM comes last; with RAM above 4 GiB, before it.
        assert_eq!(memory_map(256 << 20, Transport::Pci)[3], ecam_entry());
        assert_eq!(memory_map(5 << 30, Transport::Pci)[3], ecam_entry());
    }

    #[test]
    fn the_pci_bar_window_is_not_reserved_or_ram() {
        for e in memory_map(5 << 30, Transport::Pci) {
            let end = e.addr + e.size;
            assert!(
                end <= layout::PCI_MMIO_START || e.addr >= layout::PCI_MMIO_END,
                "{e:?} overlaps the BAR window"
            );
        }
    }
}
