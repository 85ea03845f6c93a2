//! Starting `bulkhead-vmm`, the vCPU process: the launcher has started the device backends
//! and holds the vmm's end of each one's socket; they become the vmm's fds 4, 5, ... and
//! its control socket fd 3.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

use bulkhead_vmm::config::{SerialOutput, VirtioDeviceConfig};
use bulkhead_vmm::process::args::{DeviceArg, DeviceSocket};
use bulkhead_vmm::virtio::vhost_user::BackendSocket;

use super::{
    backend_program, open_named, spawn, DeviceProcess, LaunchError, Needs, FIRST_EXTRA_FD,
    SOCKET_FD,
};
use crate::cli::RunArgs;
use crate::safe_open::Access;

/// The name the vmm process goes by in messages.
pub const VMM: &str = "vmm";

/// Starts `bulkhead-vmm` for `args` with `devices` (consumed: their sockets move to the
/// vmm). `serial_input`: whether the serial console reads standard input. The devices
/// named in `restartable` are reconnected by the vmm when their process is restarted
/// (`restart=on`); for the others a lost backend stops the VM. Returns the process and
/// the launcher's end of its control socket.
pub fn start_vmm(
    args: &RunArgs,
    devices: Vec<VirtioDeviceConfig>,
    serial_input: bool,
    restartable: &[String],
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = backend_program(VMM, "bulkhead-vmm")?;
    let mut cmd = Command::new(&program);
    // The files the user named are opened here, under the rule for such paths, and passed
    // to the vmm, which reads them only once it is jailed. They take the fds after the
    // device sockets.
    let mut files: Vec<(&str, OwnedFd)> = Vec::new();
    if let Some(k) = &args.kernel {
        cmd.arg("--kernel").arg(k);
        files.push((
            "--kernel-fd",
            open_named(VMM, "kernel image", k, Access::Read)?.into(),
        ));
    }
    if let Some(i) = &args.initrd {
        cmd.arg("--initrd").arg(i);
        files.push((
            "--initrd-fd",
            open_named(VMM, "initrd", i, Access::Read)?.into(),
        ));
    }
    cmd.args(["--cmdline", args.cmdline()])
        .args(["--memory", &args.memory.to_string()])
        .args(["--cpus", &args.cpus.to_string()])
        .args(["--transport", args.transport.as_str()]);
    // Guest memory is a memfd of that size (RLIMIT_FSIZE applies to it).
    let mut max_file_size = args.memory << 20;
    cmd.arg("--serial").arg(match &args.serial {
        SerialOutput::Stdio => "stdio".into(),
        SerialOutput::Off => "off".into(),
        SerialOutput::File { file, max_size } => {
            let f = open_named(VMM, "serial file", &file.path, Access::Append)?;
            // The vmm stops the file at max-size itself; the limit is the backstop.
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            max_file_size = max_file_size.max(size.saturating_add(*max_size));
            files.push(("--serial-fd", f.into()));
            format!("file={},max-size={max_size}", file.path.display())
        }
    });
    if let Some(table) = super::kvm_cpuid::for_vmm() {
        files.push(("--kvm-cpuid-fd", table));
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
            restartable: restartable.contains(&d.name),
            name: d.name,
            device_type: d.device_type,
            queues: d.queues,
            socket,
            mac: d.local_mac,
            queue_size: d.queue_size,
        };
        cmd.arg("--device").arg(arg.to_arg());
    }
    for (flag, fd) in files {
        fds.push(fd);
        cmd.arg(flag)
            .arg((FIRST_EXTRA_FD + fds.len() as i32 - 1).to_string());
    }
    let needs = Needs {
        workers: args.cpus,
        max_file_size: Some(max_file_size),
        max_fds: 1024,
        ..Needs::default()
    };
    spawn(VMM, cmd, fds, serial_input, &needs)
}
