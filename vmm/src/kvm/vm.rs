//! Creating the KVM VM: irqchip, PIT, TSS and the guest memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

/// The KVM API version this VMM speaks.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot run without.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Errors while opening KVM or creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("opening /dev/kvm (is KVM available and accessible? `bulkhead check` tells)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// Wrong API version.
    #[error("/dev/kvm speaks KVM API version {0}, bulkhead needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability is missing.
    #[error("KVM lacks {0}, which bulkhead needs")]
    MissingCap(&'static str),
    /// A KVM ioctl on the VM failed.
    #[error("{0}")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
}

/// Opens /dev/kvm and checks its API version and the capabilities we need.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates a VM, maps `mem` into it and gives it an in-kernel irqchip and PIT.
pub fn create(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::Ioctl("creating the VM (KVM_CREATE_VM)", e))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(|e| VmError::Ioctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
    // Guest memory before the irqchip and PIT: registering a memory slot once they exist
    // waits out a grace period of the kernel's (measured here: 6-16 ms of wall time for
    // KVM_SET_USER_MEMORY_REGION after KVM_CREATE_IRQCHIP, 0.2 ms before it; the CPU
    // time is the same), which is on the way to the guest's first instruction.
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).map_err(|_| {
            VmError::Ioctl("finding guest memory", kvm_ioctls::Error::new(libc::EFAULT))
        })?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the caller keeps alive
        // for as long as the VM runs (the Vm struct owns both); slots do not overlap.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|e| {
            VmError::Ioctl("registering guest memory (KVM_SET_USER_MEMORY_REGION)", e)
        })?;
    }
    vm.create_irq_chip()
        .map_err(|e| VmError::Ioctl("creating the in-kernel irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Ioctl("creating the in-kernel PIT", e))?;
    Ok(vm)
}
