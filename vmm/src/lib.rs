//! The vmm process of bulkhead: a KVM VM, its vCPUs, guest memory, the boot loaders and
//! the legacy devices a boot needs (8250 UART, i8042, exit port).
//!
//! Use: [`builder::build`] a [`config::VmConfig`], then [`builder::Vm::run`] it.

pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod pci;
pub mod process;
mod sys;
pub mod trace;
pub mod virtio;
pub mod vm;

/// The freestanding test guest (tests/guest), booted when no kernel is given.
pub const TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bulkhead-guest"));

/// The name the embedded test guest goes by in messages.
pub const TEST_GUEST_NAME: &str = "built-in test guest";
