//! A vCPU thread (`vcpu<n>`): `KVM_RUN`, and the exits it handles itself: port and MMIO
//! accesses to the serial port, i8042 and the virtio transports, whose register writes
//! become vhost-user messages to the backends. With virtio-pci the guest programs MSI-X
//! vectors and moves BARs while it runs, so the vCPU that handles the write changes the
//! VM's GSI routes, irqfds and notify ioeventfds, and reads the PBA by polling eventfds.

use libc::*;

use super::consts::{
    KVM_GET_REGS, KVM_GET_SREGS, KVM_IOEVENTFD, KVM_IRQFD, KVM_RUN, KVM_SET_GSI_ROUTING,
};
use super::{Arg, Rule};

/// The vCPU role's own rules.
pub const RULES: &[Rule] = &[
    Rule::when(SYS_ioctl, &[Arg::Eq32(1, KVM_RUN)], "running the guest"),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, KVM_GET_REGS)],
        "an exit error names the guest's rip",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, KVM_GET_SREGS)],
        "an exit error describes the guest's mode",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, KVM_SET_GSI_ROUTING)],
        "virtio-pci: the guest's MSI-X table writes become MSI routes",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, KVM_IRQFD)],
        "virtio-pci: a queue's call fd follows its MSI-X vector's mask and route",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, KVM_IOEVENTFD)],
        "virtio-pci: the notify ioeventfds follow BAR0 when the guest moves it",
    ),
    Rule::when(
        SYS_poll,
        &[Arg::Eq(2, 0)],
        "virtio-pci: the MSI-X PBA polls masked vectors' eventfds (timeout 0)",
    ),
    Rule::any(
        SYS_sendmsg,
        "virtio-mmio register writes become vhost-user messages",
    ),
    Rule::any(SYS_recvmsg, "vhost-user replies (config space, features)"),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFD as u32)],
        "std checks a descriptor is open before closing it (debug builds)",
    ),
    Rule::any(SYS_close, "descriptors of a reply or a device reset"),
    Rule::any(
        SYS_fstat,
        "starting a device: the inflight region its backend hands out is checked against its size",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GET_SEALS as u32)],
        "starting a device: the inflight region must be a memfd sealed against shrinking",
    ),
];
