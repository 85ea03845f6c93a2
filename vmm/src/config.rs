//! What a VM is made of, as the vmm process receives it (from the CLI today, from the
//! launcher's control message later).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::boot::BootConfig;
use crate::kvm::irq_routing::{FIRST_MSI_GSI, MAX_ROUTES};
use crate::virtio::vhost_user::BackendSocket;

/// Where the 8250 UART's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The vmm's standard output (and input from its standard input).
    Stdio,
    /// Appended to a file (no input), which stops growing at `max_size` bytes (further
    /// output is dropped).
    File {
        /// The file (the launcher passes it open, as `file`).
        file: HostFile,
        /// Its size limit.
        max_size: u64,
    },
    /// Discarded (no input).
    Off,
}

/// A file on the host that the VM uses: its path (for messages, and for opening it when
/// the vmm runs by hand) and, normally, the file already opened by the launcher (which
/// checks whose path it is: the vmm opens nothing itself and reads it only once jailed).
#[derive(Clone, Debug)]
pub struct HostFile {
    /// Its path.
    pub path: PathBuf,
    /// The file, opened by whoever started the vmm.
    pub opened: Option<Arc<File>>,
}

impl HostFile {
    /// `path`, not opened yet.
    pub fn path(path: impl Into<PathBuf>) -> HostFile {
        HostFile {
            path: path.into(),
            opened: None,
        }
    }

    /// A descriptor of the file to read: the opened one, or `path` opened now.
    pub fn open_read(&self) -> std::io::Result<File> {
        match &self.opened {
            Some(f) => f.try_clone(),
            None => File::open(&self.path),
        }
    }

    /// A descriptor of the file to append to: the opened one, or `path` opened (created
    /// if missing) now.
    pub fn open_append(&self) -> std::io::Result<File> {
        match &self.opened {
            Some(f) => f.try_clone(),
            None => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path),
        }
    }
}

/// Files are the same when their paths are (the configuration's notion of equality).
impl PartialEq for HostFile {
    fn eq(&self, other: &HostFile) -> bool {
        self.path == other.path
    }
}

impl Eq for HostFile {}

/// How the guest reaches its virtio devices (the whole VM uses one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// virtio-mmio: one 4 KiB register window and one IOAPIC pin per device, announced on
    /// the kernel command line and in the ACPI DSDT. The default (see the README).
    #[default]
    Mmio,
    /// virtio-pci (modern): one PCI function per device behind an ECAM host bridge, with an
    /// MSI-X vector per queue.
    Pci,
}

impl Transport {
    /// Its name on command lines and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mmio => "mmio",
            Transport::Pci => "pci",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mmio" => Ok(Transport::Mmio),
            "pci" => Ok(Transport::Pci),
            _ => Err(format!("unknown transport {s:?}: expected mmio or pci")),
        }
    }
}

/// A virtio device served by a vhost-user backend process.
#[derive(Debug)]
pub struct VirtioDeviceConfig {
    /// Name for messages (`disk0`).
    pub name: String,
    /// Virtio device id (2 = block).
    pub device_type: u32,
    /// Number of queues to offer.
    pub queues: u16,
    /// How to reach the backend.
    pub socket: BackendSocket,
    /// The launcher restarts the backend when it dies (`restart=on`): its loss is reported
    /// and waited out instead of stopping the VM.
    pub restartable: bool,
    /// A net device's MAC when the vmm serves its config (an external backend).
    pub local_mac: Option<crate::virtio::local_config::Mac>,
    /// The largest queue size the backend takes, when below the vmm's 256 (an external
    /// backend's `queue-size=`).
    pub queue_size: Option<u16>,
}

/// A VM's configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Kernel, initrd, command line.
    pub boot: BootConfig,
    /// Serial console.
    pub serial: SerialOutput,
    /// Whether the serial console reads standard input (with `SerialOutput::Stdio`; off when
    /// something else, such as a virtio console, owns the terminal's input).
    pub serial_input: bool,
    /// Virtio devices, in the order they get MMIO slots or PCI functions.
    pub devices: Vec<VirtioDeviceConfig>,
    /// How the guest reaches them.
    pub transport: Transport,
    /// KVM's supported CPUID as the launcher keeps it (a [`crate::kvm::cpuid_table`]);
    /// `None`: asked of KVM.
    pub kvm_cpuid: Option<std::sync::Arc<std::fs::File>>,
}

/// Most virtio devices with `--transport pci`: bus 0 has 32 devices, the host bridge is
/// device 0.
pub const MAX_PCI_DEVICES: usize = 31;

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
    /// More virtio devices than interrupt lines.
    #[error("{0} virtio devices: at most {max} fit", max = crate::virtio::LAST_IRQ - crate::virtio::FIRST_IRQ + 1)]
    TooManyDevices(usize),
    /// More virtio devices than PCI functions.
    #[error("{0} virtio devices: at most {MAX_PCI_DEVICES} fit on the PCI bus (--transport pci)")]
    TooManyPciDevices(usize),
    /// More MSI-X vectors in all than KVM has GSIs for.
    #[error(
        "{0} MSI-X vectors in all (queues plus one per device): at most {1} with --transport pci"
    )]
    TooManyPciVectors(usize, usize),
    /// More queues than a virtio-pci function has MSI-X vectors and notify addresses for.
    #[error("{0}: {1} queues, at most {max} with --transport pci", max = crate::virtio::pci::layout::MAX_QUEUES - 1)]
    TooManyPciQueues(String, u16),
    /// A device with no queue.
    #[error("{0}: a device needs at least one queue")]
    NoQueues(String),
    /// Memory size out of range.
    #[error("--memory {0}: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")]
    Memory(u64),
}

/// A machine as a command line describes it (`bulkhead run`'s or `bulkhead-vmm`'s).
#[derive(Clone, Copy, Debug)]
pub struct Machine<'a> {
    /// Kernel image; the built-in test guest when `None`.
    pub kernel: Option<&'a std::path::Path>,
    /// Initial ramdisk.
    pub initrd: Option<&'a std::path::Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs, as given (checked here).
    pub cpus: u64,
    /// Serial console.
    pub serial: &'a SerialOutput,
    /// The virtio transport.
    pub transport: Transport,
}

impl VmConfig {
    /// The checked configuration of `machine` with `devices`.
    pub fn new(
        machine: Machine<'_>,
        serial_input: bool,
        devices: Vec<VirtioDeviceConfig>,
    ) -> Result<VmConfig, ConfigError> {
        let cpus = u8::try_from(machine.cpus)
            .ok()
            .filter(|n| (1..=crate::boot::mptable::MAX_CPUS).contains(n))
            .ok_or(ConfigError::Cpus(machine.cpus))?;
        let kernel = match machine.kernel {
            Some(path) => crate::boot::KernelImage::File(HostFile::path(path)),
            None => crate::boot::KernelImage::Embedded(crate::TEST_GUEST_NAME, crate::TEST_GUEST),
        };
        let config = VmConfig {
            memory_mib: machine.memory_mib,
            cpus,
            boot: BootConfig {
                kernel,
                initrd: machine.initrd.map(HostFile::path),
                cmdline: machine.cmdline.to_owned(),
            },
            serial: machine.serial.clone(),
            serial_input,
            devices,
            transport: machine.transport,
            kvm_cpuid: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges before anything is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > crate::boot::mptable::MAX_CPUS {
            return Err(ConfigError::Cpus(self.cpus.into()));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        match self.transport {
            Transport::Mmio => {
                if crate::virtio::slot(self.devices.len().saturating_sub(1)).is_none() {
                    return Err(ConfigError::TooManyDevices(self.devices.len()));
                }
            }
            Transport::Pci => {
                if self.devices.len() > MAX_PCI_DEVICES {
                    return Err(ConfigError::TooManyPciDevices(self.devices.len()));
                }
                // One queue more may come: a multiqueue net device's control queue.
                let max = crate::virtio::pci::layout::MAX_QUEUES - 1;
                if let Some(d) = self.devices.iter().find(|d| usize::from(d.queues) > max) {
                    return Err(ConfigError::TooManyPciQueues(d.name.clone(), d.queues));
                }
                // Each device's vectors (its queues, a control queue, the config) take
                // GSIs after the IOAPIC's, within KVM's routing table.
                let gsis: usize = self.devices.iter().map(|d| usize::from(d.queues) + 2).sum();
                let room = (MAX_ROUTES - FIRST_MSI_GSI) as usize;
                if gsis > room {
                    return Err(ConfigError::TooManyPciVectors(gsis, room));
                }
            }
        }
        if let Some(d) = self.devices.iter().find(|d| d.queues == 0) {
            return Err(ConfigError::NoQueues(d.name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(transport: Transport, devices: usize, queues: u16) -> VmConfig {
        VmConfig {
            memory_mib: 64,
            cpus: 1,
            boot: BootConfig {
                kernel: crate::boot::KernelImage::Embedded("t", &[]),
                initrd: None,
                cmdline: String::new(),
            },
            serial: SerialOutput::Off,
            serial_input: false,
            devices: (0..devices)
                .map(|i| VirtioDeviceConfig {
                    name: format!("disk{i}"),
                    device_type: 2,
                    queues,
                    socket: BackendSocket::Path(PathBuf::new()),
                    restartable: false,
                    local_mac: None,
                    queue_size: None,
                })
                .collect(),
            transport,
            kvm_cpuid: None,
        }
    }

    #[test]
    fn device_limits_depend_on_the_transport() {
        assert!(config(Transport::Mmio, 19, 1).validate().is_ok());
        assert!(matches!(
            config(Transport::Mmio, 20, 1).validate(),
            Err(ConfigError::TooManyDevices(20))
        ));
        assert!(config(Transport::Pci, 31, 1).validate().is_ok());
        assert!(matches!(
            config(Transport::Pci, 32, 1).validate(),
            Err(ConfigError::TooManyPciDevices(32))
        ));
        assert!(config(Transport::Pci, 1, 254).validate().is_ok());
        assert!(matches!(
            config(Transport::Pci, 31, 254).validate(),
            Err(ConfigError::TooManyPciVectors(..))
        ));
        assert!(matches!(
            config(Transport::Pci, 1, 255).validate(),
            Err(ConfigError::TooManyPciQueues(_, 255))
        ));
    }
}
