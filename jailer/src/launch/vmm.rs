//! Starting `bulkhead-vmm`, the vCPU process: the launcher has started the device backends
//! and holds the vmm's end of each one's socket; they become the vmm's fds 4, 5, ... and
//! its control socket fd 3.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

use bulkhead_vmm::config::{SerialOutput, VirtioDeviceConfig};
use bulkhead_vmm::process::args::{DeviceArg, DeviceSocket};
use bulkhead_vmm::virtio::vhost_user::BackendSocket;

use super::{backend_program, spawn, DeviceProcess, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD};
use crate::cli::RunArgs;

/// The name the vmm process goes by in messages.
pub const VMM: &str = "vmm";

/// Starts `bulkhead-vmm` for `args` with `devices` (consumed: their sockets move to the
/// vmm). `serial_input`: whether the serial console reads standard input. Returns the
/// process and the launcher's end of its control socket.
pub fn start_vmm(
    args: &RunArgs,
    devices: Vec<VirtioDeviceConfig>,
    serial_input: bool,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = backend_program(VMM, "bulkhead-vmm")?;
    let mut cmd = Command::new(&program);
    if let Some(k) = &args.kernel {
        cmd.arg("--kernel").arg(k);
    }
    if let Some(i) = &args.initrd {
        cmd.arg("--initrd").arg(i);
    }
    cmd.args(["--cmdline", &args.cmdline])
        .args(["--memory", &args.memory.to_string()])
        .args(["--cpus", &args.cpus.to_string()]);
    cmd.arg("--serial").arg(match &args.serial {
        SerialOutput::Stdio => "stdio".into(),
        SerialOutput::Off => "off".into(),
        SerialOutput::File(p) => format!("file={}", p.display()),
    });
    if !serial_input {
        cmd.arg("--no-serial-input");
    }
    cmd.args(["--control-fd", &SOCKET_FD.to_string()]);
    if args.report_stats {
        cmd.arg("--report-stats");
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for d in devices {
        let socket = match d.socket {
            BackendSocket::Path(p) => DeviceSocket::Path(p),
            BackendSocket::Connected(s) => {
                fds.push(OwnedFd::from(s));
                DeviceSocket::Fd(FIRST_EXTRA_FD + fds.len() as i32 - 1)
            }
        };
        let arg = DeviceArg {
            name: d.name,
            device_type: d.device_type,
            queues: d.queues,
            socket,
        };
        cmd.arg("--device").arg(arg.to_arg());
    }
    let needs = Needs {
        workers: args.cpus,
        // Guest memory is a memfd of that size; a serial log file may grow.
        max_file_size: (!matches!(args.serial, SerialOutput::File(_))).then_some(args.memory << 20),
        max_fds: 1024,
        ..Needs::default()
    };
    spawn(VMM, cmd, fds, serial_input, &needs)
}
