//! The vmm process's main/event thread once the VM runs (vCPU threads started, devices
//! connected): it watches the backends' connections and standard input, raises the serial
//! interrupt, and stops the vCPUs. Traced from `bulkhead run`'s main, `serial-in` and
//! `vhost-monitor` threads after boot, minus what is the launcher's (spawning and reaping
//! backends), plus the control and signal threads of the vmm process. Installed on every
//! thread of `bulkhead-vmm` but the vCPUs once the VM runs (the main thread after starting
//! the others). It starts no threads after boot, so it lacks
//! [`super::common::THREAD_START`].

use libc::*;

use super::{Arg, Rule};

/// The vmm main role's own rules.
pub const RULES: &[Rule] = &[
    Rule::any(
        SYS_poll,
        "watching backend connections for hang-ups, and standard input",
    ),
    Rule::any(SYS_read, "serial input from standard input; eventfds"),
    Rule::any(
        SYS_recvmsg,
        "vhost-user replies on the frontend connections",
    ),
    Rule::any(SYS_sendmsg, "vhost-user messages at stop (GET_VRING_BASE)"),
    Rule::any(SYS_tgkill, "kicking vCPU threads out of KVM_RUN"),
    Rule::any(
        SYS_clock_nanosleep,
        "pausing between kicks while vCPUs stop",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, FIONBIO as u32)],
        "standard input made non-blocking for the serial console",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFD as u32)],
        "std checks a descriptor is open before closing it (debug builds)",
    ),
    Rule::any(SYS_close, "tearing devices down"),
    Rule::any(SYS_exit_group, "the VM has stopped"),
    Rule::any(
        SYS_rt_sigtimedwait,
        "the vmm-signals thread waits for SIGTERM/SIGINT/SIGHUP (sigwait)",
    ),
];
