//! A vCPU thread (`vcpu<n>`): `KVM_RUN`, and the exits it handles itself: port and MMIO
//! accesses to the serial port, i8042 and the virtio-mmio transport, whose register
//! writes become vhost-user messages to the backends.

use libc::*;

use super::consts::{KVM_GET_REGS, KVM_GET_SREGS, KVM_RUN};
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
];
