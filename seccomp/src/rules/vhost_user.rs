//! A backend's main thread and what it starts once serving: the vhost-user message
//! handler (features, the memory table, vring addresses and fds), and for a connected
//! socket the two relay threads. Shared by bulkhead-blk, -net and -console.

use libc::*;

use super::consts::{TUNSETOFFLOAD, TUNSETQUEUE};
use super::{Arg, Rule};

/// The vhost-user role's own rules.
pub const RULES: &[Rule] = &[
    Rule::any(
        SYS_accept4,
        "the daemon accepts its frontend (or the relay's connection)",
    ),
    Rule::any(
        SYS_recvmsg,
        "vhost-user messages and the descriptors they carry",
    ),
    Rule::any(
        SYS_sendmsg,
        "vhost-user replies; the relay passes messages with their fds on",
    ),
    Rule::any(
        SYS_epoll_ctl,
        "kick fds are added to and removed from the queue threads' epoll",
    ),
    Rule::any(
        SYS_close,
        "replaced kick/call fds, memory table fds once mapped, the connection",
    ),
    Rule::any(
        SYS_shutdown,
        "ending the connection and the relay when either side goes",
    ),
    Rule::any(
        SYS_poll,
        "the relay checks the daemon accepted its own connection",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFD as u32)],
        "std checks a descriptor is open before closing it (debug builds)",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_DUPFD_CLOEXEC as u32)],
        "the daemon keeps a copy of the connection to shut it down",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GET_SEALS as u32)],
        "bulkhead-blk's relay checks an inflight region (SET_INFLIGHT_FD) can't shrink under its mapping",
    ),
    Rule::any(
        SYS_fstat,
        "bulkhead-blk's relay checks an inflight region's file is regular and big enough before mapping it",
    ),
    Rule::any(SYS_brk, "the main thread's malloc arena grows"),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TUNSETOFFLOAD)],
        "bulkhead-net applies the driver's offloads to its TAP when features arrive",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TUNSETQUEUE)],
        "bulkhead-net attaches/detaches TAP queues as the driver enables queue pairs",
    ),
    Rule::any(
        SYS_unlink,
        "dropping a --socket-path listener removes its socket file",
    ),
    Rule::any(
        SYS_rt_sigtimedwait,
        "the signals thread waits for SIGTERM/SIGINT to shut the connection down",
    ),
    Rule::any(SYS_exit_group, "the process ends when the frontend goes"),
];
