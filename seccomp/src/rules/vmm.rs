//! The vmm process (`bulkhead-vmm`) once its vCPU threads run: the main thread (stops
//! the vCPUs, starts the backend monitor, reports the outcome) and its event threads
//! (`vmm-control`: the launcher's control socket, pause/resume; `vhost-monitor`: backend
//! hang-ups; `vmm-signals`; `serial-in`: standard input). Traced from `bulkhead-vmm`
//! through the boot and supervision tests, from the start of the vCPU threads on. Not
//! installed yet: the integrator applies it (on the main thread after the vCPUs start, so
//! the event threads started then inherit it).

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
        "control messages from the launcher; vhost-user replies",
    ),
    Rule::any(
        SYS_sendmsg,
        "control messages to the launcher; vhost-user messages at stop",
    ),
    Rule::any(
        SYS_tgkill,
        "kicking vCPU threads out of KVM_RUN (stop, pause)",
    ),
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
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_DUPFD_CLOEXEC as u32)],
        "the monitor keeps a copy of its exit eventfd",
    ),
    Rule::any(SYS_eventfd2, "the backend monitor's exit event"),
    Rule::when(
        SYS_setsockopt,
        &[
            Arg::Eq32(1, SOL_SOCKET as u32),
            Arg::Eq32(2, SO_RCVTIMEO as u32),
        ],
        "vmm-control: a restarted backend's socket gets the reply timeout",
    ),
    Rule::when(
        SYS_setsockopt,
        &[
            Arg::Eq32(1, SOL_SOCKET as u32),
            Arg::Eq32(2, SO_SNDTIMEO as u32),
        ],
        "vmm-control: a restarted backend's socket gets the send timeout",
    ),
    Rule::when(
        SYS_shutdown,
        &[Arg::Eq32(1, SHUT_RDWR as u32)],
        "vmm-control: ending the connection of a restarted backend that was refused",
    ),
    Rule::any(
        SYS_fstat,
        "the inflight region a backend hands out is checked against its size",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GET_SEALS as u32)],
        "the inflight region a backend hands out must be a memfd sealed against shrinking",
    ),
    Rule::any(
        SYS_rt_sigtimedwait,
        "vmm-signals waits for SIGTERM/SIGINT to stop the VM",
    ),
    Rule::any(SYS_close, "tearing devices down"),
    Rule::any(SYS_exit_group, "the VM has stopped"),
    Rule::any(
        SYS_rt_sigtimedwait,
        "the vmm-signals thread waits for SIGTERM/SIGINT/SIGHUP (sigwait)",
    ),
];
