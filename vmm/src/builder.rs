//! Building a VM from its configuration: a list of named steps, each with its own error.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootEntry};
use crate::config::{ConfigError, SerialOutput, VmConfig};
use crate::devices::bus::BusError;
use crate::devices::exit_port::{ExitPort, EXIT_PORT};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::kvm::run_loop::IoBuses;
use crate::kvm::vcpu::{self, VcpuError};
use crate::kvm::vm::{self as kvm_vm, VmError};
use crate::memory::{GuestMemory, MemoryError};

/// A VM ready to run.
pub struct Vm {
    /// The KVM VM (kept open while the vCPUs run).
    pub vm_fd: VmFd,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// Device buses.
    pub io: Arc<IoBuses>,
    /// The UART, shared with the input thread.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Whether the UART takes input from standard input.
    pub serial_stdin: bool,
    /// Configured vCPUs, index order.
    pub vcpus: Vec<VcpuFd>,
    /// How the guest was entered.
    pub boot: BootEntry,
}

/// Errors while building a VM; each names its step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] VmError),
    /// Guest memory could not be created.
    #[error("creating {mib} MiB of guest memory")]
    Memory {
        /// Requested size.
        mib: u64,
        /// The cause.
        #[source]
        source: MemoryError,
    },
    /// The kernel, initrd or command line is unusable.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A device could not be created.
    #[error("creating the {0}")]
    Device(&'static str, #[source] std::io::Error),
    /// Devices overlap on a bus (a bug).
    #[error("placing devices")]
    Bus(#[from] BusError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Builds the VM described by `config`.
pub fn build(config: &VmConfig) -> Result<Vm, BuildError> {
    config.validate()?;
    let kvm = kvm_vm::open_kvm()?;
    let memory = create_memory(config)?;
    let vm_fd = kvm_vm::create(&kvm, &memory.mem)?;
    let boot = boot::load(&memory.mem, memory.size, config.cpus, &config.boot)?;
    let (io, serial) = create_legacy_devices(&vm_fd, &config.serial)?;
    let vcpus = create_vcpus(&kvm, &vm_fd, &memory, config.cpus, &boot)?;
    Ok(Vm {
        vm_fd,
        memory,
        io: Arc::new(io),
        serial,
        serial_stdin: config.serial == SerialOutput::Stdio,
        vcpus,
        boot,
    })
}

fn create_memory(config: &VmConfig) -> Result<GuestMemory, BuildError> {
    GuestMemory::new(config.memory_mib << 20).map_err(|source| BuildError::Memory {
        mib: config.memory_mib,
        source,
    })
}

fn serial_output(serial: &SerialOutput) -> Result<SerialOut, BuildError> {
    Ok(match serial {
        SerialOutput::Stdio => Box::new(std::io::stdout()),
        SerialOutput::Off => Box::new(std::io::sink()),
        SerialOutput::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    BuildError::Device(
                        "serial console",
                        std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())),
                    )
                })?,
        ),
    })
}

fn create_legacy_devices(
    vm_fd: &VmFd,
    serial: &SerialOutput,
) -> Result<(IoBuses, Arc<Mutex<SerialDevice>>), BuildError> {
    let mut io = IoBuses::default();
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Device("serial IRQ eventfd", e))?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| BuildError::Device("serial IRQ (irqfd)", e.into()))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, serial_output(serial)?)));
    io.pio.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    io.pio.insert(
        I8042_BASE,
        I8042_LEN,
        Arc::new(Mutex::new(I8042::default())),
    )?;
    io.pio
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))?;
    Ok((io, serial))
}

fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    memory: &GuestMemory,
    cpus: u8,
    boot: &BootEntry,
) -> Result<Vec<VcpuFd>, BuildError> {
    (0..u32::from(cpus))
        .map(|i| vcpu::create(kvm, vm_fd, &memory.mem, i, cpus.into(), boot).map_err(Into::into))
        .collect()
}
