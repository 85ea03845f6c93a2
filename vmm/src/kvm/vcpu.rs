//! Setting up a vCPU before its first run: CPUID, MSRs, FPU, LAPIC, and for the boot vCPU
//! the registers the boot protocol asks for.

use kvm_bindings::{kvm_cpuid_entry2, kvm_fpu, kvm_regs};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use super::{cpuid, msrs};
use crate::boot::{cpu_tables, BootEntry, EntryProtocol};
use crate::layout;

/// LAPIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// x87 control word at reset: all exceptions masked.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Errors while configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vcpu{index}: {what}")]
    Ioctl {
        /// vCPU index.
        index: u32,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Not every boot MSR was accepted.
    #[error("vcpu{index}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        /// vCPU index.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// Building a KVM argument failed.
    #[error("vcpu{index}: building the MSR list")]
    Fam {
        /// vCPU index.
        index: u32,
        /// The cause.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// Writing the boot GDT/page tables failed.
    #[error("vcpu{index}: setting up boot segments")]
    Boot {
        /// vCPU index.
        index: u32,
        /// The cause.
        #[source]
        source: crate::boot::BootError,
    },
}

/// Creates and configures vCPU `index` of `cpus` with KVM's `supported` CPUID: everything
/// but the boot state, which [`enter_boot`] adds to the boot vCPU (index 0) once the kernel
/// is loaded. The others wait for INIT/SIPI from the guest (the in-kernel LAPIC puts them
/// in the wait-for-SIPI state).
pub fn create(
    vm: &VmFd,
    index: u32,
    cpus: u32,
    supported: &[kvm_cpuid_entry2],
) -> Result<VcpuFd, VcpuError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(ioctl(index, "creating the vCPU"))?;
    let tsc_khz = match vcpu.get_tsc_khz() {
        Ok(khz) if khz > 0 => Some(khz),
        _ => None,
    };
    let cpuid = cpuid::for_vcpu(supported, index, cpus, tsc_khz)
        .map_err(ioctl(index, "building its CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(ioctl(index, "setting CPUID"))?;
    let msrs = msrs::boot_msrs().map_err(|source| VcpuError::Fam { index, source })?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl(index, "setting MSRs"))?;
    let wanted = msrs.as_slice().len();
    if set != wanted {
        return Err(VcpuError::Msrs { index, set, wanted });
    }
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(ioctl(index, "setting the FPU"))?;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(ioctl(index, "reading the LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(ioctl(index, "setting the LAPIC"))?;
    Ok(vcpu)
}

/// Sets the boot vCPU (`index`) up to enter `boot`: its segments and page tables (written
/// to `mem`) and its registers, as the boot protocol asks.
pub fn enter_boot(
    vcpu: &VcpuFd,
    index: u32,
    mem: &GuestMemoryMmap,
    boot: &BootEntry,
) -> Result<(), VcpuError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(ioctl(index, "reading segment registers"))?;
    cpu_tables::setup(mem, boot.protocol, &mut sregs)
        .map_err(|source| VcpuError::Boot { index, source })?;
    vcpu.set_sregs(&sregs)
        .map_err(ioctl(index, "setting segment registers"))?;
    vcpu.set_regs(&boot_regs(boot))
        .map_err(ioctl(index, "setting registers"))
}

/// The error of vCPU `index`'s ioctl doing `what`.
fn ioctl(index: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl {
        index,
        what,
        source,
    }
}

/// The general registers at entry: RIP at the entry point, the boot information in RSI
/// (64-bit protocol) or RBX (PVH).
pub fn boot_regs(boot: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: boot.entry.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match boot.protocol {
        EntryProtocol::Linux64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = boot.boot_info.0;
        }
        EntryProtocol::Pvh => regs.rbx = boot.boot_info.0,
    }
    regs
}

/// Sets the delivery mode (bits 8..11) of the LVT register at `offset` in the LAPIC page.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn lvt_mode_is_set_in_place() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0xff_u8 as std::os::raw::c_char;
        regs[APIC_LVT0 + 2] = 1;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0xff);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 1);
    }

    #[test]
    fn boot_info_register_follows_the_protocol() {
        let b = BootEntry {
            entry: GuestAddress(0x1000000),
            protocol: EntryProtocol::Linux64,
            boot_info: GuestAddress(0x7000),
        };
        let r = boot_regs(&b);
        assert_eq!(
            (r.rip, r.rsi, r.rbx, r.rsp, r.rflags),
            (0x1000000, 0x7000, 0, 0x8ff0, 2)
        );
        let b = BootEntry {
            protocol: EntryProtocol::Pvh,
            boot_info: GuestAddress(0x6000),
            ..b
        };
        let r = boot_regs(&b);
        assert_eq!((r.rsi, r.rbx), (0, 0x6000));
    }
}
