//! `bulkhead-vmm`'s main: build the VM from the command line, run it, report why it stopped.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use clap::Parser;

use super::args::{DeviceSocket, VmmArgs};
use super::control::{Control, StatusInfo};
use super::fds::{check_socket, take_file, FdError};
use super::outcome::{Outcome, EXIT_BULKHEAD_FAILED};
use super::signals::{block_stop_signals, stop_on_signals};
use crate::boot::KernelImage;
use crate::builder;
use crate::config::{Machine, SerialOutput, VirtioDeviceConfig, VmConfig};
use crate::virtio::vhost_user::BackendSocket;

/// Runs `bulkhead-vmm` with `args`; returns the exit status.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    crate::trace::mark(crate::trace::Step::Main);
    // Before any thread starts (the vhost-user watchdog does during set-up).
    block_stop_signals();
    let args = match VmmArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // A serial file's cap stops below RLIMIT_FSIZE; reaching it anyway must not kill the VM.
    bulkhead_protocol::capped::ignore_sigxfsz();
    // The vCPU threads install their filters in this mode.
    bulkhead_seccomp::mode::set_process_mode(args.seccomp);
    // Every log call site limited: a guest (or a backend) must not flood the host's logs.
    let _ = bulkhead_ratelimit::init_env_logger();
    // Adopted only: the handshake waits until the vmm is jailed (see `run`).
    let mut control = match args.control_fd.map(Control::adopt) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("bulkhead-vmm: {e}");
            return EXIT_BULKHEAD_FAILED;
        }
        None => None,
    };
    let stats = Stats::open(args.report_stats);
    let outcome = run(&args, control.as_mut(), stats);
    if crate::trace::wanted() {
        crate::trace::print();
    }
    match &control {
        Some(c) if c.is_open() => outcome.messages().into_iter().for_each(|m| c.send(m)),
        _ => {
            if let Some(problem) = outcome.problem() {
                eprintln!("bulkhead: {problem}");
            }
        }
    }
    outcome.exit_code()
}

/// Builds and runs the VM. Order matters: what needs the host (KVM, memory, the fds it was
/// given) comes first; then the jail; only then is anything read from a peer (the
/// launcher's handshake, the backends' vhost-user replies) or from a file the user named
/// (kernel, initrd).
fn run(args: &VmmArgs, control: Option<&mut Control>, stats: Stats) -> Outcome {
    let prepared = config(args)
        .map_err(|e| chain(e.as_ref()))
        .and_then(|config| {
            log::info!(
                "booting {} with {} MiB and {} vCPU(s)",
                config.boot.kernel.display_path().display(),
                config.memory_mib,
                config.cpus
            );
            builder::prepare(config).map_err(|e| chain(&e))
        });
    // Whatever happened above, the jail comes before the first byte read from a peer.
    if let Err(e) = bulkhead_seccomp::jail::finish_jail(&args.jail) {
        return Outcome::Failed(format!("confining the vmm: {}", chain(&e)));
    }
    log::debug!("jailed; reading from peers and the kernel image from now on");
    crate::trace::mark(crate::trace::Step::Jailed);
    let control = match control {
        Some(c) => match c.handshake() {
            Ok(()) => {
                crate::trace::mark(crate::trace::Step::Handshake);
                Some(&*c)
            }
            Err(e) => return Outcome::Failed(e),
        },
        None => None,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    let info = StatusInfo {
        vcpus: u32::from(prepared.cpus()),
        memory_bytes: prepared.memory_bytes(),
    };
    let mut vm = match prepared.finish() {
        Ok(vm) => vm,
        Err(e) => return Outcome::Failed(chain(&e)),
    };
    crate::trace::mark(crate::trace::Step::Built);
    // Guest memory and the kernel are in place: from now on the only file this process
    // writes is the serial file, whose cap this backs up.
    if let Some(Err(e)) = vm.max_file_size.map(limit_file_size) {
        return Outcome::Failed(format!("lowering RLIMIT_FSIZE: {e}"));
    }
    if let Some(c) = control {
        c.send(bulkhead_protocol::ToLauncher::Ready {
            role: "vmm".into(),
            pid: std::process::id(),
        });
        crate::trace::mark(crate::trace::Step::Ready);
        crate::trace::record_cpu();
    }
    let result = vm.run_with(|handle| {
        stop_on_signals(handle.stop.clone());
        control.map(|c| {
            c.serve(handle, info);
            c.lost_reporter()
        })
    });
    // While guest memory is still mapped, so its size shows.
    stats.report();
    match result {
        Ok(stop) => Outcome::Stopped(stop),
        Err(e) => Outcome::Failed(chain(&e)),
    }
}

/// The VM configuration `args` describe, adopting the inherited device sockets.
fn config(args: &VmmArgs) -> Result<VmConfig, Box<dyn std::error::Error>> {
    let mut seen = Vec::new();
    let mut devices = Vec::new();
    for d in &args.devices {
        let socket = match &d.socket {
            DeviceSocket::Path(p) => BackendSocket::Path(p.clone()),
            DeviceSocket::Fd(fd) => {
                if seen.contains(fd) || Some(*fd) == args.control_fd {
                    return Err(Box::new(FdError {
                        what: d.name.clone(),
                        fd: *fd,
                        why: "is given twice".into(),
                    }));
                }
                seen.push(*fd);
                let fd = check_socket(&d.name, *fd)?;
                // SAFETY: an inherited fd given to this device alone (checked unique above),
                // open and a socket (checked); nothing else in this process owns it.
                BackendSocket::Connected(unsafe { UnixStream::from_raw_fd(fd) })
            }
        };
        devices.push(VirtioDeviceConfig {
            name: d.name.clone(),
            device_type: d.device_type,
            queues: d.queues,
            socket,
            restartable: d.restartable,
            local_mac: d.mac,
            queue_size: d.queue_size,
        });
    }
    let mut config = VmConfig::new(
        Machine {
            kernel: args.kernel.as_deref(),
            initrd: args.initrd.as_deref(),
            cmdline: &args.cmdline,
            memory_mib: args.memory,
            cpus: args.cpus,
            serial: &args.serial,
            transport: args.transport,
        },
        !args.no_serial_input,
        devices,
    )?;
    // Files the launcher opened: adopted here, read only once the vmm is jailed.
    let mut taken = seen;
    taken.extend(args.control_fd);
    let mut adopt = |what: &str, fd: Option<RawFd>| -> Result<_, FdError> {
        fd.map(|fd| {
            if taken.contains(&fd) {
                return Err(FdError {
                    what: what.into(),
                    fd,
                    why: "is given twice".into(),
                });
            }
            taken.push(fd);
            take_file(what, fd).map(Arc::new)
        })
        .transpose()
    };
    if let KernelImage::File(f) = &mut config.boot.kernel {
        f.opened = adopt("kernel", args.kernel_fd)?;
    }
    if let Some(f) = &mut config.boot.initrd {
        f.opened = adopt("initrd", args.initrd_fd)?;
    }
    config.kvm_cpuid = adopt("KVM CPUID table", args.kvm_cpuid_fd)?;
    let serial = adopt("serial file", args.serial_fd)?;
    match (&mut config.serial, serial) {
        (SerialOutput::File { file, .. }, Some(opened)) => file.opened = Some(opened),
        (_, Some(_)) => {
            return Err(Box::new(FdError {
                what: "serial file".into(),
                fd: args.serial_fd.unwrap_or(-1),
                why: "is given without --serial file=PATH".into(),
            }))
        }
        _ => {}
    }
    Ok(config)
}

/// Lowers RLIMIT_FSIZE to `max` bytes (soft and hard; never raises it).
fn limit_file_size(max: u64) -> std::io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE)?;
    let max = max.min(hard);
    setrlimit(Resource::RLIMIT_FSIZE, max, max)?;
    Ok(())
}

/// `e` and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The value of KiB field `name` (`"VmRSS:"`) in a /proc status file; 0 when absent.
pub fn status_kib(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// This process's memory figures and when the guest was first entered, for `bulkhead
/// bench`: /proc/self/status is opened before the jail (whose root has no /proc) and read
/// with plain `read`s at the end (the vmm thread's filter allows no more).
struct Stats {
    status: Option<std::fs::File>,
}

impl Stats {
    fn open(wanted: bool) -> Stats {
        Stats {
            status: wanted
                .then(|| std::fs::File::open("/proc/self/status").ok())
                .flatten(),
        }
    }

    fn report(self) {
        use crate::kvm::run_loop::{EXIT_COUNTS, FIRST_ENTRY_NS};
        use std::io::Read;
        use std::sync::atomic::Ordering::Relaxed;
        let Some(mut file) = self.status else {
            return;
        };
        eprintln!(
            "bulkhead-stats: first_entry_monotonic_ns={} ready_cpu_us={} exits_pio={} exits_mmio={} exits_other={}",
            FIRST_ENTRY_NS.load(Relaxed),
            crate::trace::READY_CPU_US.load(Relaxed),
            EXIT_COUNTS.pio.load(Relaxed),
            EXIT_COUNTS.mmio.load(Relaxed),
            EXIT_COUNTS.other.load(Relaxed),
        );
        let mut buf = [0u8; 8192];
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        let status = String::from_utf8_lossy(&buf[..len]);
        let field = |name: &str| status_kib(&status, name);
        eprintln!(
            "bulkhead-stats: vm_hwm_kib={} rss_anon_kib={} rss_file_kib={} rss_shmem_kib={}",
            field("VmHWM:"),
            field("RssAnon:"),
            field("RssFile:"),
            field("RssShmem:")
        );
    }
}
