//! bulkhead-vsock's threads beyond vhost-user: the queue thread (`vsock-q`), which only
//! wakes the I/O thread, and the I/O thread (`vsock-io`), which moves bytes between guest
//! buffers and host Unix sockets the launcher passed or connected for it. Neither may
//! create a socket, connect or name a path: host sockets come from the launcher.

use libc::*;

use super::{Arg, Rule};

/// The queue thread.
pub const WORKER: &[Rule] = &[
    Rule::any(
        SYS_epoll_wait,
        "the queue thread waits for kicks and its exit event",
    ),
    Rule::any(SYS_read, "consuming kick eventfds"),
];

/// The I/O thread.
pub const IO: &[Rule] = &[
    Rule::any(
        SYS_epoll_wait,
        "waits for the wake eventfd, the hybrid listener and stream sockets",
    ),
    Rule::when(
        SYS_epoll_ctl,
        &[Arg::Eq32(1, EPOLL_CTL_ADD as u32)],
        "watches a new stream socket or CONNECT client",
    ),
    Rule::any(SYS_read, "the wake eventfd; bytes from a host socket"),
    Rule::any(
        SYS_recvfrom,
        "bytes from a host socket (std's read on a socket)",
    ),
    Rule::any(
        SYS_accept4,
        "the hybrid listener accepts a host program's connection",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFL as u32)],
        "a socket is made non-blocking",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_SETFL as u32)],
        "a socket is made non-blocking",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, FIONBIO as u32)],
        "a socket is made non-blocking (std's set_nonblocking)",
    ),
    Rule::any(SYS_sendto, "bytes to a host socket; the broker's request"),
    Rule::any(
        SYS_recvmsg,
        "the broker's answer, with the connected socket",
    ),
    Rule::when(
        SYS_shutdown,
        &[Arg::Eq32(1, SHUT_WR as u32)],
        "the guest's SHUTDOWN: the host socket's write side",
    ),
    Rule::any(SYS_close, "a stream that ended"),
    Rule::any(
        SYS_mremap,
        "a stream's buffer of bytes for the host grows (realloc of a large allocation)",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFD as u32)],
        "std checks a descriptor is open before closing it (debug builds)",
    ),
];
