//! Named ioctl requests the rules allow, computed the way the kernel's `<asm/ioctl.h>`
//! macros compute them (so no number is copied by hand), and the flag values rules test.

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << IOC_DIRSHIFT) | (ty << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | (size << IOC_SIZESHIFT)
}
const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}
const fn ior(ty: u32, nr: u32, size: u32) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}
const fn iow(ty: u32, nr: u32, size: u32) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// KVM's ioctl type.
const KVMIO: u32 = 0xAE;
/// `sizeof(struct kvm_regs)`: 18 u64 registers.
const KVM_REGS_SIZE: u32 = 18 * 8;
/// `sizeof(struct kvm_sregs)` on x86_64.
const KVM_SREGS_SIZE: u32 = 312;

/// Runs the vCPU until an exit.
pub const KVM_RUN: u32 = io(KVMIO, 0x80);
/// Reads general-purpose registers (vCPU error messages name `rip`).
pub const KVM_GET_REGS: u32 = ior(KVMIO, 0x81, KVM_REGS_SIZE);
/// Reads segment and control registers (vCPU error messages).
pub const KVM_GET_SREGS: u32 = ior(KVMIO, 0x83, KVM_SREGS_SIZE);
/// Registers or removes an irqfd (on the VM fd).
pub const KVM_IRQFD: u32 = iow(KVMIO, 0x76, 32);
/// Registers or removes an ioeventfd (on the VM fd).
pub const KVM_IOEVENTFD: u32 = iow(KVMIO, 0x79, 64);
/// `sizeof(struct kvm_irq_routing)`: its header (nr, flags), entries follow.
const KVM_IRQ_ROUTING_SIZE: u32 = 8;
/// Replaces the VM's GSI routing table (on the VM fd).
pub const KVM_SET_GSI_ROUTING: u32 = iow(KVMIO, 0x6a, KVM_IRQ_ROUTING_SIZE);

/// TUN's ioctl type.
const TUNIO: u32 = b'T' as u32;
const INT_SIZE: u32 = 4;
/// Sets the checksum/segmentation offloads the TAP may hand us.
pub const TUNSETOFFLOAD: u32 = iow(TUNIO, 208, INT_SIZE);
/// Reads the TAP's name and flags.
pub const TUNGETIFF: u32 = ior(TUNIO, 210, INT_SIZE);
/// Sets the virtio-net header size the TAP prepends.
pub const TUNSETVNETHDRSZ: u32 = iow(TUNIO, 216, INT_SIZE);
/// Attaches or detaches one queue of a multiqueue TAP.
pub const TUNSETQUEUE: u32 = iow(TUNIO, 217, INT_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_kernel_headers() {
        // Values from <linux/kvm.h> and <linux/if_tun.h> as compiled on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_IRQFD, 0x4020_AE76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_AE79);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_AE6A);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54D0);
        assert_eq!(TUNGETIFF, 0x8004_54D2);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54D8);
        assert_eq!(TUNSETQUEUE, 0x4004_54D9);
    }
}
