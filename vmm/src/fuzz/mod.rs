//! Fuzzing entry points for what the vmm parses from a guest or a peer: virtio-mmio
//! register accesses, PCI configuration and BAR accesses (virtio-pci), virtio-net
//! control-queue commands, and the vhost-user replies of a device backend.
//!
//! The libFuzzer targets in `vmm/fuzz/` and the bounded stable runs in `cargo test` (the
//! `tests` modules here) call the same functions. Compiled for tests and with the
//! `fuzzing` feature only; never part of `bulkhead-vmm`.

pub mod fake_kvm;
pub mod mmio;
pub mod net_ctrl;
pub mod pci;
pub mod vhost_user;

pub use mmio::fuzz_mmio;
pub use net_ctrl::fuzz_net_ctrl;
pub use pci::fuzz_pci;
pub use vhost_user::fuzz_vhost_user;
