//! PCI for the virtio-pci transport: bus 0 behind a host bridge, reached through ECAM
//! ([`ecam`]) and the legacy 0xCF8/0xCFC ports ([`config_ports`]), type-0 functions with
//! their configuration space ([`config_space`]), and MSI-X ([`msix`], [`msix_irqfds`]).
//! The virtio functions themselves are in `virtio::pci`.

pub mod bus;
pub mod config_ports;
pub mod config_space;
pub mod ecam;
pub mod function;
pub mod host_bridge;
pub mod msix;
pub mod msix_irqfds;

pub use bus::{Bdf, PciBus};
