//! The parts of the test guest that only compute: the memory map's numbers, parsers of what
//! the VMM hands over (zero page and e820 map, MP table, command line, the ACPI tables'
//! virtio-mmio devices), the scenario names, and escaping for output. No hardware access and no assembly, so `cargo test` runs them
//! on the host; the binary (`src/main.rs`) adds everything that touches the machine.

#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod bootparams;
pub mod cmdline;
pub mod escape;
pub mod kbd;
pub mod layout;
pub mod macswap;
pub mod mptable;
pub mod net;
pub mod pci;
pub mod scenario;
pub mod soak;
pub mod virtio;
