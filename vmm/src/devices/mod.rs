//! The legacy devices that stay in the vmm process: what a boot needs before virtio.

pub mod bus;
pub mod exit_port;
pub mod i8042;
pub mod serial;
pub mod serial_input;

/// Why the VM should stop, as decided by a device or an exit handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmStop {
    /// The guest wrote its status to the exit port.
    GuestStatus(u8),
    /// The guest asked for a reset (i8042 CPU reset, `reboot=k`): bulkhead powers off.
    Reset,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// The vCPU.
        vcpu: u32,
    },
    /// A device's backend failed (its process died or hung up).
    DeviceFailed {
        /// The device (e.g. `disk0`).
        device: String,
        /// What happened.
        why: String,
    },
    /// The host asked the VM to stop (a termination signal, or the launcher).
    Shutdown {
        /// Who asked (`signal 15`, `the launcher`).
        why: String,
    },
    /// A vCPU failed.
    Error {
        /// The vCPU.
        vcpu: u32,
        /// What went wrong.
        what: String,
    },
}
