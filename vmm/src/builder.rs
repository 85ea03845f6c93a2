//! Building a VM from its configuration: a list of named steps, each with its own error.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootEntry};
use crate::config::{ConfigError, SerialOutput, Transport, VirtioDeviceConfig, VmConfig};
use crate::devices::bus::BusError;
use crate::devices::exit_port::{ExitPort, EXIT_PORT};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_KBD_IRQ, I8042_LEN};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::kvm::run_loop::IoBuses;
use crate::kvm::vcpu::{self, VcpuError};
use crate::kvm::vm::{self as kvm_vm, VmError};
use crate::memory::{GuestMemory, MemoryError};
use crate::virtio::interrupts::Interrupts;
use crate::virtio::vhost_user::{BackendSocket, SharedMemory, VhostUserDevice, VhostUserError};
use crate::virtio::{self, mmio::MmioTransport, monitor::Watched, MmioSlot, Transports};
use bulkhead_protocol::capped::CappedFile;
use kvm_ioctls::IoEventAddress;
use std::os::fd::AsRawFd;

/// A VM ready to run.
pub struct Vm {
    /// The KVM VM (kept open while the vCPUs run; PCI devices change its routes and
    /// ioeventfds as the guest programs them).
    pub vm_fd: Arc<VmFd>,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// Device buses.
    pub io: Arc<IoBuses>,
    /// The UART, shared with the input thread.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The i8042, where an orchestrator presses Ctrl+Alt+Del.
    pub keyboard: Arc<Mutex<I8042>>,
    /// Whether the UART takes input from standard input.
    pub serial_stdin: bool,
    /// Configured vCPUs, index order.
    pub vcpus: Vec<VcpuFd>,
    /// The vCPU threads' seccomp filter, compiled (`None` with seccomp off).
    pub vcpu_filter: Arc<Option<bulkhead_seccomp::Filter>>,
    /// How the guest was entered.
    pub boot: BootEntry,
    /// Backend connections to watch for hang-ups while the VM runs.
    pub watched: Vec<crate::virtio::monitor::Watched>,
    /// The virtio devices' transports, by device name (for config changes).
    pub transports: Transports,
    /// The largest file this process needs to write once built (RLIMIT_FSIZE; guest memory
    /// exists by then): the serial file's size at open plus its max-size, 0 with the serial
    /// console off, `None` when it writes to standard output (which may be a file the user
    /// redirected it to: its limit stays the launcher's).
    pub max_file_size: Option<u64>,
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
    /// A virtio device could not be set up.
    #[error("{name}: {what}")]
    VirtioDevice {
        /// Device name.
        name: String,
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user backend could not be reached or refused the handshake.
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The KVM CPUID table the launcher handed over is unreadable or no table.
    #[error("reading the KVM CPUID table the launcher handed over")]
    CpuidTable(#[source] std::io::Error),
    /// The vCPU threads' seccomp filter could not be compiled.
    #[error("compiling the vCPU threads' seccomp filter")]
    VcpuFilter(#[source] bulkhead_seccomp::install::Error),
    /// KVM could not say which CPUID it supports.
    #[error("asking KVM which CPUID it supports (KVM_GET_SUPPORTED_CPUID)")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// A virtio-pci function could not be made.
    #[error(transparent)]
    VirtioPci(#[from] crate::virtio::pci::VirtioPciError),
}

/// Builds the VM described by `config` (its backend sockets move into the VM): [`prepare`]
/// then [`Prepared::finish`].
pub fn build(config: VmConfig) -> Result<Vm, BuildError> {
    prepare(config)?.finish()
}

/// A VM half built: what needs the host (KVM, guest memory, the legacy devices, connected
/// backend sockets) is done; nothing has been read from a peer or from a file the user
/// named. A confined process finishes its jail between [`prepare`] and
/// [`Prepared::finish`].
pub struct Prepared {
    config: VmConfig,
    memory: GuestMemory,
    vm_fd: VmFd,
    io: IoBuses,
    serial: Arc<Mutex<SerialDevice>>,
    keyboard: Arc<Mutex<I8042>>,
    max_file_size: Option<u64>,
    vcpus: Vec<VcpuFd>,
    vcpu_filter: Arc<Option<bulkhead_seccomp::Filter>>,
}

/// The first half of building: opens the kernel and initrd if they are not open yet,
/// opens /dev/kvm, creates guest memory, the KVM VM, its vCPUs (all but the boot vCPU's
/// entry state, which needs the kernel) and the legacy devices, and connects backend
/// sockets given by path (a connect sends no message). The vCPUs are made here, before the
/// jail, because here the vmm waits anyway: for the launcher's handshake and the backends. Everything here needs the host's filesystem or privileges; nothing parses
/// untrusted bytes.
pub fn prepare(mut config: VmConfig) -> Result<Prepared, BuildError> {
    config.validate()?;
    boot::open_files(&mut config.boot)?;
    let kvm = kvm_vm::open_kvm()?;
    crate::trace::mark(crate::trace::Step::KvmOpened);
    let memory = create_memory(&config)?;
    crate::trace::mark(crate::trace::Step::Memory);
    let vm_fd = kvm_vm::create(&kvm, &memory.mem)?;
    crate::trace::mark(crate::trace::Step::VmCreated);
    let supported = supported_cpuid(&kvm, config.kvm_cpuid.as_deref())?;
    let vcpus = (0..u32::from(config.cpus))
        .map(|i| vcpu::create(&vm_fd, i, config.cpus.into(), &supported))
        .collect::<Result<Vec<_>, _>>()?;
    // Compiled now, while the vmm waits for its peers, not on the vCPU thread's way to the
    // guest (its filter is installed there).
    let vcpu_filter = bulkhead_seccomp::compile(
        bulkhead_seccomp::Role::Vcpu,
        bulkhead_seccomp::mode::process_mode(),
    )
    .map_err(BuildError::VcpuFilter)?;
    crate::trace::mark(crate::trace::Step::VcpusCreated);
    let LegacyDevices {
        io,
        serial,
        keyboard,
        max_file_size,
    } = create_legacy_devices(&vm_fd, &config.serial)?;
    for dev in &mut config.devices {
        let socket = std::mem::replace(&mut dev.socket, BackendSocket::Path(Default::default()));
        dev.socket = BackendSocket::Connected(crate::virtio::vhost_user::open(&dev.name, socket)?);
    }
    Ok(Prepared {
        config,
        memory,
        vm_fd,
        io,
        serial,
        keyboard,
        max_file_size,
        vcpus,
        vcpu_filter: Arc::new(vcpu_filter),
    })
}

/// KVM's supported CPUID: from the table the launcher handed over (`table`), else asked of
/// KVM.
fn supported_cpuid(
    kvm: &Kvm,
    table: Option<&std::fs::File>,
) -> Result<Vec<kvm_cpuid_entry2>, BuildError> {
    use crate::kvm::cpuid_table;
    match table {
        Some(file) => cpuid_table::read(file).map_err(BuildError::CpuidTable),
        None => cpuid_table::supported(kvm).map_err(BuildError::SupportedCpuid),
    }
}

impl Prepared {
    /// The number of vCPUs.
    pub fn cpus(&self) -> u8 {
        self.config.cpus
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.size
    }

    /// The second half: the vhost-user handshakes with the backends, the kernel and initrd
    /// read into guest memory, the vCPUs. Needs no privilege and no filesystem access.
    pub fn finish(self) -> Result<Vm, BuildError> {
        let Prepared {
            mut config,
            memory,
            vm_fd,
            mut io,
            serial,
            keyboard,
            max_file_size,
            vcpus,
            vcpu_filter,
        } = self;
        let devices = std::mem::take(&mut config.devices);
        let vm_fd = Arc::new(vm_fd);
        let virtio = match config.transport {
            Transport::Mmio => create_virtio_devices(&vm_fd, &memory, devices, &mut io)?,
            Transport::Pci => pci::create(&vm_fd, &memory, devices, &mut io)?,
        };
        // The guest learns each device twice, from the same slots: on the command line
        // (minimal kernels) and in the ACPI DSDT (distribution kernels).
        crate::trace::mark(crate::trace::Step::DevicesConnected);
        let mut boot_config = config.boot.clone();
        for slot in &virtio.slots {
            boot_config.cmdline.push(' ');
            boot_config.cmdline.push_str(&slot.cmdline_token());
        }
        let boot = boot::load(
            &memory.mem,
            memory.size,
            config.cpus,
            &boot_config,
            &virtio.slots,
            config.transport,
        )?;
        if let Some(boot_vcpu) = vcpus.first() {
            vcpu::enter_boot(boot_vcpu, 0, &memory.mem, &boot)?;
        }
        Ok(Vm {
            vm_fd,
            memory,
            io: Arc::new(io),
            serial,
            keyboard,
            serial_stdin: config.serial == SerialOutput::Stdio && config.serial_input,
            vcpus,
            vcpu_filter,
            boot,
            watched: virtio.watched,
            transports: virtio.transports,
            max_file_size,
        })
    }
}

mod pci;

/// What creating the virtio devices produced besides bus entries.
struct VirtioDevices {
    /// Where each is (announced to the guest on the command line and in the DSDT).
    slots: Vec<MmioSlot>,
    /// Their backend sockets, to watch.
    watched: Vec<Watched>,
    /// Their transports, by name.
    transports: Transports,
}

fn create_virtio_devices(
    vm_fd: &VmFd,
    memory: &GuestMemory,
    devices: Vec<VirtioDeviceConfig>,
    io: &mut IoBuses,
) -> Result<VirtioDevices, BuildError> {
    let mut out = VirtioDevices {
        slots: Vec::new(),
        watched: Vec::new(),
        transports: Vec::new(),
    };
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
    for (index, dev) in devices.into_iter().enumerate() {
        let slot = virtio::slot(index).ok_or(ConfigError::TooManyDevices(index + 1))?;
        let MmioSlot { base, irq, .. } = slot;
        let name = dev.name.clone();
        let device_err = |what: &'static str| {
            let name = name.clone();
            move |e: std::io::Error| BuildError::VirtioDevice {
                name: name.clone(),
                what,
                source: e,
            }
        };
        let call = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(device_err("creating its interrupt eventfd"))?;
        vm_fd
            .register_irqfd(&call, irq)
            .map_err(|e| device_err("registering its irqfd")(e.into()))?;
        let mut kicks = Vec::new();
        for queue in 0..u32::from(dev.queues) {
            let kick =
                EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("creating a kick eventfd"))?;
            vm_fd
                .register_ioevent(
                    &kick,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    queue,
                )
                .map_err(|e| device_err("registering a queue-notify ioeventfd")(e.into()))?;
            kicks.push(kick);
        }
        let device = VhostUserDevice::connect(
            &dev.name,
            dev.device_type,
            dev.socket,
            kicks,
            |n| Interrupts::shared(call, n),
            shared.clone(),
        )?
        .with_local(dev.local_mac, dev.queue_size)?;
        device.set_restartable(dev.restartable);
        out.watched.push(device.link());
        let transport = Arc::new(Mutex::new(MmioTransport::new(Box::new(device))));
        io.mmio.insert(base, virtio::MMIO_SIZE, transport.clone())?;
        out.transports.push((dev.name.clone(), transport));
        out.slots.push(slot);
        log::info!("{}: virtio-mmio at {base:#x}, irq {irq}", dev.name);
    }
    Ok(out)
}

/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

fn create_memory(config: &VmConfig) -> Result<GuestMemory, BuildError> {
    GuestMemory::new(config.memory_mib << 20).map_err(|source| BuildError::Memory {
        mib: config.memory_mib,
        source,
    })
}

/// The serial console's output, and the largest size its file may reach (see
/// [`Vm::max_file_size`]).
fn serial_output(serial: &SerialOutput) -> Result<(SerialOut, Option<u64>), BuildError> {
    Ok(match serial {
        SerialOutput::Stdio => (Box::new(std::io::stdout()), None),
        SerialOutput::Off => (Box::new(std::io::sink()), Some(0)),
        SerialOutput::File { file, max_size } => {
            let what = format!("serial file {}", file.path.display());
            let capped = file
                .open_append()
                .and_then(|f| CappedFile::new(f, *max_size, what.clone()))
                .map_err(|e| {
                    BuildError::Device(
                        "serial console",
                        std::io::Error::new(e.kind(), format!("opening {what}: {e}")),
                    )
                })?;
            let limit = capped.size().saturating_add(*max_size);
            (Box::new(capped), Some(limit))
        }
    })
}

/// The port-bus devices and what the serial console's output needs.
struct LegacyDevices {
    io: IoBuses,
    serial: Arc<Mutex<SerialDevice>>,
    keyboard: Arc<Mutex<I8042>>,
    /// See [`Vm::max_file_size`].
    max_file_size: Option<u64>,
}

fn create_legacy_devices(vm_fd: &VmFd, serial: &SerialOutput) -> Result<LegacyDevices, BuildError> {
    let mut io = IoBuses::default();
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Device("serial IRQ eventfd", e))?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| BuildError::Device("serial IRQ (irqfd)", e.into()))?;
    let (out, max_file_size) = serial_output(serial)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
    io.pio.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    let kbd_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BuildError::Device("i8042 IRQ eventfd", e))?;
    vm_fd
        .register_irqfd(&kbd_irq, I8042_KBD_IRQ)
        .map_err(|e| BuildError::Device("i8042 IRQ (irqfd)", e.into()))?;
    let keyboard = Arc::new(Mutex::new(I8042::new(Some(kbd_irq))));
    io.pio.insert(I8042_BASE, I8042_LEN, keyboard.clone())?;
    io.pio
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))?;
    Ok(LegacyDevices {
        io,
        serial,
        keyboard,
        max_file_size,
    })
}
