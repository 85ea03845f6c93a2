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

/// The console's main thread on a terminal, beyond vhost-user: the size for GET_CONFIG and
/// the terminal's mode given back at exit. Only the console has these.
pub const TERMINAL: &[Rule] = &[
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TIOCGWINSZ as u32)],
        "GET_CONFIG reads the terminal's size again (the console follows resizes)",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TCGETS as u32)],
        "the terminal's mode is read back before it is restored, when the process ends",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TCSETS as u32)],
        "the terminal's mode is restored when the process ends (tcsetattr)",
    ),
];
