//! The command line of `bulkhead-vmm`. `bulkhead run` builds it; it can also be run by hand
//! with backends started separately (`--device ...,socket=PATH`).

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{HostFile, SerialOutput};

/// bulkhead-vmm: the vCPU process of bulkhead (normally started by `bulkhead run`).
#[derive(Parser, Debug)]
#[command(name = "bulkhead-vmm", version, about)]
pub struct VmmArgs {
    /// Kernel image (ELF vmlinux or bzImage); the built-in test guest when absent.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The kernel is already open as inherited fd N (--kernel then only names it): the
    /// launcher opens it, under its rule for paths a user names.
    #[arg(long, value_name = "N", requires = "kernel")]
    pub kernel_fd: Option<RawFd>,
    /// The initrd is already open as inherited fd N (see --kernel-fd).
    #[arg(long, value_name = "N", requires = "initrd")]
    pub initrd_fd: Option<RawFd>,
    /// The serial file is already open (for append) as inherited fd N (see --kernel-fd).
    #[arg(long, value_name = "N")]
    pub serial_fd: Option<RawFd>,
    /// KVM's supported CPUID, as a table the launcher keeps, is inherited fd N (read from
    /// offset 0); without it the vmm asks KVM, which costs about 1 ms of CPU on some hosts.
    #[arg(long, value_name = "N")]
    pub kvm_cpuid_fd: Option<RawFd>,
    /// Kernel command line (the virtio-mmio devices are appended to it).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u64,
    /// Serial console output: stdio, file=PATH[,max-size=SIZE] (default 16M) or off.
    #[arg(long, value_name = "stdio|file=PATH[,max-size=SIZE]|off", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialOutput,
    /// Do not read standard input into the serial console (something else owns it).
    #[arg(long)]
    pub no_serial_input: bool,
    /// How the guest reaches its virtio devices: mmio or pci.
    #[arg(long, value_name = "mmio|pci", default_value = "mmio")]
    pub transport: crate::config::Transport,
    /// A virtio device served by a vhost-user backend (repeatable, in slot order):
    /// name=NAME,type=ID,queues=N and either fd=FD (an inherited connected socket) or
    /// socket=PATH.
    #[arg(long = "device", value_name = "name=NAME,type=ID,queues=N,fd=FD|socket=PATH", value_parser = parse_device)]
    pub devices: Vec<DeviceArg>,
    /// An inherited socket to write the outcome line to (see `process::outcome`).
    #[arg(long, value_name = "FD")]
    pub control_fd: Option<RawFd>,
    /// Print memory use and guest-entry time on exit (used by `bulkhead bench`).
    #[arg(long, hide = true)]
    pub report_stats: bool,
    /// Seccomp filters on the vCPU threads: enforce (a call outside the allowlist is
    /// reported and kills the process with SIGSYS), log (allowed, logged by the kernel),
    /// or off.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = bulkhead_seccomp::SeccompMode::Enforce)]
    pub seccomp: bulkhead_seccomp::SeccompMode,
    /// The jail's last steps (empty root, identity, landlock), applied once the VM is built.
    #[command(flatten)]
    pub jail: bulkhead_seccomp::jail::JailArgs,
}

/// Where a device's backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSocket {
    /// An inherited, connected socket.
    Fd(RawFd),
    /// A path a backend listens on.
    Path(PathBuf),
}

/// One `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceArg {
    /// Name for messages.
    pub name: String,
    /// Virtio device id.
    pub device_type: u32,
    /// Queues to offer.
    pub queues: u16,
    /// The backend.
    pub socket: DeviceSocket,
    /// The launcher restarts this device's backend when it dies (`restart=on`): on a
    /// hang-up the vmm reports [`ToLauncher::DeviceLost`](bulkhead_protocol::ToLauncher)
    /// and waits for a `Reconnect` instead of stopping the VM.
    pub restartable: bool,
    /// A net device's MAC (`mac=`), for the vmm to serve its config space itself (an
    /// external backend, see `virtio::local_config`).
    pub mac: Option<crate::virtio::local_config::Mac>,
    /// The largest queue size the backend takes (`queue-size=`, an external backend's).
    pub queue_size: Option<u16>,
}

impl DeviceArg {
    /// The `--device` value for this device.
    pub fn to_arg(&self) -> String {
        let at = match &self.socket {
            DeviceSocket::Fd(fd) => format!("fd={fd}"),
            DeviceSocket::Path(p) => format!("socket={}", p.display()),
        };
        let restart = if self.restartable { ",restart=on" } else { "" };
        let mac = self
            .mac
            .map(|m| format!(",mac={}", crate::virtio::local_config::format_mac(&m)))
            .unwrap_or_default();
        let size = self
            .queue_size
            .map(|n| format!(",queue-size={n}"))
            .unwrap_or_default();
        format!(
            "name={},type={},queues={},{at}{restart}{mac}{size}",
            self.name, self.device_type, self.queues
        )
    }
}

/// Parses `--serial`.
pub fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdio" => Ok(SerialOutput::Stdio),
        "off" => Ok(SerialOutput::Off),
        _ => match s.strip_prefix("file=") {
            Some(rest) => {
                let (path, max_size) = split_max_size(rest)?;
                if path.is_empty() {
                    return Err("file= needs a path".into());
                }
                Ok(SerialOutput::File {
                    file: HostFile::path(path),
                    max_size,
                })
            }
            None => Err(format!(
                "{s:?}: expected stdio, file=PATH[,max-size=SIZE] or off"
            )),
        },
    }
}

/// Splits `PATH[,max-size=SIZE]` (a `file=` value) into the path and the size limit
/// (16 MiB when not given).
pub fn split_max_size(value: &str) -> Result<(&str, u64), String> {
    match value.rsplit_once(",max-size=") {
        Some((path, size)) => Ok((path, bulkhead_protocol::capped::parse_size(size)?)),
        None => Ok((value, bulkhead_protocol::capped::DEFAULT_MAX_SIZE)),
    }
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    let (mut name, mut device_type, mut queues, mut socket) = (None, None, None, None);
    let (mut restartable, mut mac, mut queue_size) = (false, None, None);
    for item in s.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected key=value"))?;
        let number = |what: &str| {
            value
                .parse::<u32>()
                .map_err(|_| format!("{what}={value:?}: not a number"))
        };
        match key {
            "name" if !value.is_empty() => name = Some(value.to_owned()),
            "type" => device_type = Some(number("type")?),
            "queues" => {
                queues = Some(
                    u16::try_from(number("queues")?)
                        .ok()
                        .filter(|&q| q > 0)
                        .ok_or_else(|| format!("queues={value}: 1 to 65535"))?,
                )
            }
            "fd" => {
                let fd = number("fd")?;
                socket = Some(DeviceSocket::Fd(
                    RawFd::try_from(fd)
                        .ok()
                        .filter(|&fd| fd > 2)
                        .ok_or_else(|| format!("fd={value}: must be above 2"))?,
                ))
            }
            "socket" if !value.is_empty() => socket = Some(DeviceSocket::Path(value.into())),
            "restart" => {
                restartable = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("restart={value:?}: expected on or off")),
                }
            }
            "mac" => mac = Some(crate::virtio::local_config::parse_mac(value)?),
            "queue-size" => {
                queue_size = Some(
                    u16::try_from(number("queue-size")?)
                        .map_err(|_| format!("queue-size={value}: too large"))?,
                )
            }
            _ => return Err(format!("{item:?}: unknown or empty key")),
        }
    }
    Ok(DeviceArg {
        name: name.ok_or("name= missing")?,
        device_type: device_type.ok_or("type= missing")?,
        queues: queues.ok_or("queues= missing")?,
        socket: socket.ok_or("fd= or socket= missing")?,
        restartable,
        mac,
        queue_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_round_trips() {
        for d in [
            DeviceArg {
                name: "disk0".into(),
                device_type: 2,
                queues: 4,
                socket: DeviceSocket::Fd(5),
                restartable: true,
                mac: None,
                queue_size: None,
            },
            DeviceArg {
                name: "net0".into(),
                device_type: 1,
                queues: 2,
                socket: DeviceSocket::Path("/run/x.sock".into()),
                restartable: false,
                mac: Some([2, 0, 0, 0, 0, 0xa1]),
                queue_size: Some(128),
            },
        ] {
            assert_eq!(parse_device(&d.to_arg()), Ok(d.clone()));
        }
    }

    #[test]
    fn bad_devices_say_why() {
        for (arg, why) in [
            ("name=d,type=2,queues=1", "fd= or socket= missing"),
            ("name=d,type=2,queues=0,fd=4", "queues=0"),
            ("name=d,type=2,queues=1,fd=1", "above 2"),
            ("name=d,type=x,queues=1,fd=4", "not a number"),
            ("type=2,queues=1,fd=4", "name= missing"),
            ("name=d,type=2,queues=1,fd=4,colour=red", "unknown"),
            ("name=d,type=2,queues=1,fd", "key=value"),
            ("name=d,type=2,queues=1,fd=4,restart=yes", "on or off"),
            ("name=d,type=1,queues=2,fd=4,mac=02:00", "six hex bytes"),
        ] {
            let e = parse_device(arg).unwrap_err();
            assert!(e.contains(why), "{arg}: {e}");
        }
    }

    #[test]
    fn serial_values() {
        assert_eq!(parse_serial("stdio"), Ok(SerialOutput::Stdio));
        assert_eq!(parse_serial("off"), Ok(SerialOutput::Off));
        assert_eq!(
            parse_serial("file=/tmp/s"),
            Ok(SerialOutput::File {
                file: HostFile::path("/tmp/s"),
                max_size: 16 << 20
            })
        );
        assert_eq!(
            parse_serial("file=/tmp/a,b,max-size=64K"),
            Ok(SerialOutput::File {
                file: HostFile::path("/tmp/a,b"),
                max_size: 64 << 10
            })
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("file=,max-size=1K").is_err());
        assert!(parse_serial("file=/tmp/s,max-size=0").is_err());
        assert!(parse_serial("tty").is_err());
    }
}
