//! The control messages, one enum per direction of each conversation.
//!
//! | enum | sent by | received by |
//! | --- | --- | --- |
//! | [`ToLauncher`] | vmm / device process | launcher |
//! | [`ToProcess`] | launcher | vmm / device process |
//! | [`ApiRequest`] | `bulkhead ctl` (API client) | launcher's API socket |
//! | [`ApiReply`] | launcher's API socket | `bulkhead ctl` |
//!
//! Every enum starts with a `Hello { version }` variant so that both ends of any socket can
//! check [`PROTOCOL_VERSION`] before anything else is said (see `Channel::handshake`).
//! Variants are only ever appended: the encoding identifies a variant by its index, so
//! reordering or removing one is a protocol change and must bump [`PROTOCOL_VERSION`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Version of the messages in this module. Both ends exchange it in `Hello` and refuse to
/// talk if they differ: there is no negotiation, launcher and processes ship together.
pub const PROTOCOL_VERSION: u32 = 2;

/// Most file descriptors one frame may carry; the receiver's control buffer holds no more.
pub const MAX_FDS: usize = 8;

/// What every control message type offers to the channel.
pub trait Message: Serialize + DeserializeOwned + Debug {
    /// The `Hello` variant announcing `version`.
    fn hello(version: u32) -> Self;
    /// `Some(version)` if this is a `Hello`, else `None`.
    fn hello_version(&self) -> Option<u32>;
    /// Variant name, for logs and errors (never the payload, which may be large or hostile).
    fn name(&self) -> &'static str;
    /// How many file descriptors travel with this message (0 for almost all of them).
    fn fds_carried(&self) -> usize {
        0
    }
}

/// Process (vmm or device backend) → launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToLauncher {
    /// First message on the socket: the sender speaks protocol `version`.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// The process is confined and serving: `role` is "vmm", "blk", "net" or "console",
    /// `pid` its pid as the launcher sees it (the launcher compares it with the child it
    /// spawned; a process in its own PID namespace reports what `getpid` tells it).
    Ready {
        /// The process's role.
        role: String,
        /// The process's pid.
        pid: u32,
    },
    /// Answer to [`ToProcess::QueryStatus`] (sent by the vmm process).
    Status(VmStatus),
    /// The vmm process lost a device: its backend closed the vhost-user socket, answered
    /// garbage or timed out. `reason` is the human-readable cause. The launcher stops the VM.
    DeviceFailed {
        /// The device's name, e.g. "blk0".
        device: String,
        /// Why it is considered failed.
        reason: String,
    },
    /// The process is about to exit with `code` (0: the guest powered off or a
    /// [`ToProcess::Shutdown`] was obeyed). Its last message.
    Exited {
        /// The exit code the process will return.
        code: i32,
    },
    /// A request could not be carried out (e.g. `Pause` while shutting down); the process
    /// keeps running.
    Error {
        /// What went wrong.
        message: String,
    },
    /// bulkhead-blk: answer to [`ToProcess::SwapDisk`]: the disk now serves the new image
    /// (the old one was flushed and closed).
    DiskSwapped {
        /// The new capacity in 512-byte sectors.
        capacity_sectors: u64,
    },
    /// vmm only: the backend of a device the launcher restarts (`restart=on` in its
    /// `--device`) closed its vhost-user socket, answered garbage or timed out. The vmm keeps
    /// the device's state and waits for a [`ToProcess::Reconnect`]; the guest's requests
    /// wait in the rings meanwhile. The launcher kills the backend if it is still alive and
    /// starts a new one (or gives up: [`ToProcess::GiveUp`]).
    DeviceLost {
        /// The device's name, e.g. "disk0".
        device: String,
        /// What the vmm saw.
        reason: String,
    },
    /// vmm only: answer to [`ToProcess::Reconnect`]: the new backend has the device's whole
    /// vhost-user state replayed and its rings kicked; it serves the guest again.
    Reconnected {
        /// The device's name.
        device: String,
    },
    /// vmm only: answer to [`ToProcess::Reconnect`] or [`ToProcess::GiveUp`]: the device
    /// could not be restored and is now marked NEEDS_RESET for the guest; the VM goes on
    /// without it.
    DeviceStopped {
        /// The device's name.
        device: String,
        /// Why.
        reason: String,
    },
}

/// Launcher → process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToProcess {
    /// First message on the socket: the sender speaks protocol `version`.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Stop: the process finishes what it is doing, sends [`ToLauncher::Exited`] and exits.
    Shutdown,
    /// vmm only: stop running vCPUs; answered by a [`ToLauncher::Status`] showing `Paused`.
    Pause,
    /// vmm only: run the vCPUs again; answered by a [`ToLauncher::Status`] showing `Running`.
    Resume,
    /// vmm only: answered by [`ToLauncher::Status`].
    QueryStatus,
    /// The frame carries one file descriptor per name, in the same order (e.g. a disk image
    /// opened by the launcher after start-up). At most [`MAX_FDS`] names.
    Resources {
        /// What each passed fd is, in order.
        names: Vec<String>,
    },
    /// vmm only: the configuration space of `device` changed (the console's terminal was
    /// resized): raise the guest's config-change interrupt. Not answered.
    ConfigChanged {
        /// The device (`console0`).
        device: String,
    }, // Last: the variants before it keep their wire numbers.
    /// vmm only: press Ctrl+Alt+Del on the i8042 (Firecracker's `SendCtrlAltDel`);
    /// answered by [`ToLauncher::Status`] or [`ToLauncher::Error`].
    CtrlAltDel,
    /// bulkhead-blk only: serve the image whose fd this frame carries from now on (the
    /// launcher opened it by the path rules and checked it: `size` bytes, a multiple of the
    /// logical block size). Answered by [`ToLauncher::DiskSwapped`] or [`ToLauncher::Error`].
    SwapDisk {
        /// What messages call the new image (its path).
        name: String,
        /// Its size in bytes.
        size: u64,
        /// Whether it is served read-only.
        read_only: bool,
        /// Whether it is a block device.
        block_device: bool,
    },
    /// vmm only: the frame carries one fd, a connected vhost-user socket to a new backend
    /// process for `device` (after a [`ToLauncher::DeviceLost`], a death the launcher saw,
    /// or `ctl restart`). The vmm drops its old connection if it still has one, replays the
    /// set-up and answers [`ToLauncher::Reconnected`] or [`ToLauncher::DeviceStopped`].
    Reconnect {
        /// The device's name.
        device: String,
    },
    /// vmm only: `device`'s backend will not come back (its restart budget is spent, or
    /// it is not restarted after a seccomp kill): mark the device NEEDS_RESET and answer
    /// [`ToLauncher::DeviceStopped`].
    GiveUp {
        /// The device's name.
        device: String,
        /// Why, for the vmm's log.
        reason: String,
    },
}

/// `bulkhead ctl` → launcher, over the API socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// First message on the socket: the sender speaks protocol `version`.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// What is the VM doing? Answered by [`ApiReply::Status`].
    Status,
    /// Pause the vCPUs. Answered by [`ApiReply::Ok`] or [`ApiReply::Error`].
    Pause,
    /// Resume the vCPUs. Answered by [`ApiReply::Ok`] or [`ApiReply::Error`].
    Resume,
    /// Stop the VM and every process. Answered by [`ApiReply::Ok`] before the launcher
    /// starts stopping them.
    Shutdown,
    /// Press Ctrl+Alt+Del on the VM's i8042 (the guest decides what to do). Answered by
    /// [`ApiReply::Status`] or [`ApiReply::Error`].
    CtrlAltDel,
    /// Serve disk `device` (`disk0`) from the image at `path` from now on, and tell the
    /// guest its capacity changed. Answered by [`ApiReply::Ok`] or [`ApiReply::Error`].
    SwapDisk {
        /// The disk's name.
        device: String,
        /// The new image, opened by the launcher under the rules for paths a user names.
        path: String,
    },
    /// Replace `device`'s backend process while the guest runs (`bulkhead ctl restart`):
    /// the old process is stopped, a new one started in the same jail with the same fds
    /// (running `exec` instead of the old program if given, from then on) and the vmm
    /// reconnects it. Answered by [`ApiReply::Ok`] once the vmm has reconnected, or by
    /// [`ApiReply::Error`].
    Restart {
        /// The device's name (`disk0`, `net0`, `console0`, `vsock0`).
        device: String,
        /// A new backend program, opened under the rules for paths a user names.
        exec: Option<String>,
    },
}

/// Launcher → `bulkhead ctl`, over the API socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiReply {
    /// First message on the socket: the sender speaks protocol `version`.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// The request was carried out.
    Ok,
    /// Answer to [`ApiRequest::Status`].
    Status(VmStatus),
    /// The request failed; the text says why.
    Error(String),
}

/// The VM as a whole, as the vmm process and the launcher see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// What the vCPUs are doing.
    pub state: VmState,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory size in bytes.
    pub memory_bytes: u64,
    /// One entry per device process.
    pub devices: Vec<DeviceStatus>,
}

/// What the vCPUs are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs run guest code.
    Running,
    /// vCPUs are stopped by a `Pause`; a `Resume` restarts them.
    Paused,
    /// A shutdown is under way; no further request is honoured.
    ShuttingDown,
}

/// One device process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device's name, e.g. "blk0".
    pub name: String,
    /// Its backend process's pid (as the launcher sees it).
    pub pid: u32,
    /// Where it is in its life.
    pub state: DeviceState,
}

/// Where a device process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Spawned, has not sent `Ready` yet.
    Starting,
    /// Sent `Ready`; serving its vhost-user socket.
    Ready,
    /// Reported failed (by itself or by the vmm), or died.
    Failed,
    /// Exited after a shutdown.
    Exited,
}

/// `Message::hello` and `Message::hello_version` for an enum whose first variant is
/// `Hello { version }` (all four are).
macro_rules! hello_methods {
    () => {
        fn hello(version: u32) -> Self {
            Self::Hello { version }
        }
        fn hello_version(&self) -> Option<u32> {
            match self {
                Self::Hello { version } => Some(*version),
                _ => None,
            }
        }
    };
}

impl Message for ToLauncher {
    hello_methods!();
    fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Ready { .. } => "Ready",
            Self::Status(_) => "Status",
            Self::DeviceFailed { .. } => "DeviceFailed",
            Self::Exited { .. } => "Exited",
            Self::Error { .. } => "Error",
            Self::DiskSwapped { .. } => "DiskSwapped",
            Self::DeviceLost { .. } => "DeviceLost",
            Self::Reconnected { .. } => "Reconnected",
            Self::DeviceStopped { .. } => "DeviceStopped",
        }
    }
}

impl Message for ToProcess {
    hello_methods!();
    fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Shutdown => "Shutdown",
            Self::Pause => "Pause",
            Self::Resume => "Resume",
            Self::QueryStatus => "QueryStatus",
            Self::CtrlAltDel => "CtrlAltDel",
            Self::Resources { .. } => "Resources",
            Self::ConfigChanged { .. } => "ConfigChanged",
            Self::SwapDisk { .. } => "SwapDisk",
            Self::Reconnect { .. } => "Reconnect",
            Self::GiveUp { .. } => "GiveUp",
        }
    }
    fn fds_carried(&self) -> usize {
        match self {
            Self::Resources { names } => names.len(),
            Self::SwapDisk { .. } | Self::Reconnect { .. } => 1,
            _ => 0,
        }
    }
}

impl Message for ApiRequest {
    hello_methods!();
    fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Status => "Status",
            Self::Pause => "Pause",
            Self::Resume => "Resume",
            Self::Shutdown => "Shutdown",
            Self::CtrlAltDel => "CtrlAltDel",
            Self::SwapDisk { .. } => "SwapDisk",
            Self::Restart { .. } => "Restart",
        }
    }
}

impl Message for ApiReply {
    hello_methods!();
    fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Ok => "Ok",
            Self::Status(_) => "Status",
            Self::Error(_) => "Error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_recognised_in_every_direction() {
        assert_eq!(ToLauncher::hello(7).hello_version(), Some(7));
        assert_eq!(ToProcess::hello(7).hello_version(), Some(7));
        assert_eq!(ApiRequest::hello(7).hello_version(), Some(7));
        assert_eq!(ApiReply::hello(7).hello_version(), Some(7));
        assert_eq!(ToProcess::Shutdown.hello_version(), None);
        assert_eq!(ApiReply::Ok.hello_version(), None);
    }

    #[test]
    fn only_resources_swap_disk_and_reconnect_carry_fds() {
        let names = vec!["disk".to_string(), "tap".to_string()];
        assert_eq!(ToProcess::Resources { names }.fds_carried(), 2);
        assert_eq!(ToProcess::Shutdown.fds_carried(), 0);
        assert_eq!(ToLauncher::Exited { code: 0 }.fds_carried(), 0);
        let swap = ToProcess::SwapDisk {
            name: "b.img".into(),
            size: 4096,
            read_only: false,
            block_device: false,
        };
        assert_eq!(swap.fds_carried(), 1);
        let reconnect = ToProcess::Reconnect {
            device: "disk0".into(),
        };
        assert_eq!(reconnect.fds_carried(), 1);
    }
}
