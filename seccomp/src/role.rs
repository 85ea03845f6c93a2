//! The roles a thread can have, each with its own allowlist ([`crate::rules`]).

use std::fmt;

/// What a thread does, which decides what it may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The vmm process's main/event thread once the VM runs.
    VmmMain,
    /// A vCPU thread.
    Vcpu,
    /// A bulkhead-blk queue thread.
    BlkWorker,
    /// A bulkhead-net queue thread and its RX thread.
    NetWorker,
    /// A bulkhead-console queue thread and its I/O thread.
    ConsoleWorker,
    /// A backend's main thread: the vhost-user socket, the memory table, its threads.
    VhostUser,
    /// Any thread of bulkhead-blk (vhost-user and blk-worker together, and narrowing to
    /// either): installed on the main thread before the queue threads are started, so that
    /// none of them is ever unconfined; each narrows to its own role.
    BlkProcess,
    /// As [`Role::BlkProcess`], for bulkhead-net.
    NetProcess,
    /// As [`Role::BlkProcess`], for bulkhead-console.
    ConsoleProcess,
    /// bulkhead-console's main thread: vhost-user, and its terminal's size and mode.
    ConsoleMain,
    /// The bulkhead-vsock queue thread: kicks wake the I/O thread.
    VsockWorker,
    /// The bulkhead-vsock I/O thread: the connection table and its host sockets.
    VsockIo,
    /// As [`Role::BlkProcess`], for bulkhead-vsock.
    VsockProcess,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 13] = [
        Role::VmmMain,
        Role::Vcpu,
        Role::BlkWorker,
        Role::NetWorker,
        Role::ConsoleWorker,
        Role::VhostUser,
        Role::BlkProcess,
        Role::NetProcess,
        Role::ConsoleProcess,
        Role::ConsoleMain,
        Role::VsockWorker,
        Role::VsockIo,
        Role::VsockProcess,
    ];

    /// The role's name in messages and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Role::VmmMain => "vmm-main",
            Role::Vcpu => "vcpu",
            Role::BlkWorker => "blk-worker",
            Role::NetWorker => "net-worker",
            Role::ConsoleWorker => "console-worker",
            Role::VhostUser => "vhost-user",
            Role::BlkProcess => "blk-process",
            Role::NetProcess => "net-process",
            Role::ConsoleProcess => "console-process",
            Role::ConsoleMain => "console-main",
            Role::VsockWorker => "vsock-worker",
            Role::VsockIo => "vsock-io",
            Role::VsockProcess => "vsock-process",
        }
    }

    /// The role called `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
