//! A bulkhead-console queue thread (`console-q`) and its I/O thread (`console-io`):
//! bytes between the console stream (pty, socket, file, terminal) and guest buffers.

use libc::*;

use super::{Arg, Rule};

/// The console worker's own rules.
pub const RULES: &[Rule] = &[
    Rule::any(
        SYS_epoll_wait,
        "the queue thread waits for kicks and its exit event",
    ),
    Rule::any(
        SYS_read,
        "kick eventfds; input from a pty, terminal or file stream",
    ),
    Rule::any(
        SYS_poll,
        "the I/O thread waits for input and for its wake eventfd",
    ),
    Rule::any(SYS_recvfrom, "input from a socket stream"),
    Rule::any(
        SYS_accept4,
        "a listening socket stream accepts its next client",
    ),
    Rule::when(
        SYS_setsockopt,
        &[Arg::Eq32(1, SOL_SOCKET as u32)],
        "an accepted client's socket options",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_DUPFD_CLOEXEC as u32)],
        "a client's socket is shared between input and output",
    ),
    Rule::when(
        SYS_fcntl,
        &[Arg::Eq32(1, F_GETFD as u32)],
        "std checks a descriptor is open before closing it (debug builds)",
    ),
    Rule::any(SYS_close, "a client that went away"),
];
