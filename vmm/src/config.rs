//! What a VM is made of, as the vmm process receives it (from the CLI today, from the
//! launcher's control message later).

use std::path::PathBuf;

use crate::boot::BootConfig;

/// Where the 8250 UART's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The vmm's standard output (and input from its standard input).
    Stdio,
    /// Appended to a file (no input).
    File(PathBuf),
    /// Discarded (no input).
    Off,
}

/// A VM's configuration.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Kernel, initrd, command line.
    pub boot: BootConfig,
    /// Serial console.
    pub serial: SerialOutput,
}

/// Smallest guest RAM bulkhead accepts: room for the boot structures and a small kernel.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest RAM: 1 TiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// A configuration value out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("--cpus {0}: must be between 1 and {max}", max = crate::boot::mptable::MAX_CPUS)]
    Cpus(u64),
    /// Memory size out of range.
    #[error("--memory {0}: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")]
    Memory(u64),
}

impl VmConfig {
    /// Checks ranges before anything is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > crate::boot::mptable::MAX_CPUS {
            return Err(ConfigError::Cpus(self.cpus.into()));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        Ok(())
    }
}
