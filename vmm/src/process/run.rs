//! `bulkhead-vmm`'s main: build the VM from the command line, run it, report why it stopped.

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use clap::Parser;

use super::args::{DeviceSocket, VmmArgs};
use super::outcome::Outcome;
use crate::boot::{BootConfig, KernelImage};
use crate::config::{ConfigError, VirtioDeviceConfig, VmConfig};
use crate::devices::VmStop;
use crate::virtio::vhost_user::BackendSocket;
use crate::{builder, TEST_GUEST, TEST_GUEST_NAME};

/// Exit status when bulkhead itself fails or the guest crashed (as `docker run` does).
pub const EXIT_BULKHEAD_FAILED: i32 = 125;

/// An inherited fd that cannot be a device's socket.
#[derive(Debug, thiserror::Error)]
#[error("{device}: fd {fd} {why}")]
pub struct FdError {
    device: String,
    fd: RawFd,
    why: String,
}

/// Runs `bulkhead-vmm` with `args`; returns the exit status.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args = match VmmArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
    let control = match args.control_fd.map(|fd| check_socket("control", fd)) {
        // SAFETY: the fd was handed to us by the launcher for this purpose and nothing else
        // in this process uses it; checked to be an open socket before it is adopted.
        Some(Ok(fd)) => Some(unsafe { UnixStream::from_raw_fd(fd) }),
        Some(Err(e)) => return fail(&e),
        None => None,
    };
    let outcome = run(&args);
    if args.report_stats {
        report_stats();
    }
    match control {
        Some(mut c) => {
            let line = outcome.encode() + "\n";
            if let Err(e) = c.write_all(line.as_bytes()) {
                eprintln!("bulkhead-vmm: reporting to the launcher: {e}");
            }
            match outcome {
                Outcome::Stopped(stop) => exit_code(&stop),
                Outcome::Failed(_) => EXIT_BULKHEAD_FAILED,
            }
        }
        None => match outcome {
            Outcome::Stopped(stop) => exit_status(&stop),
            Outcome::Failed(msg) => {
                eprintln!("bulkhead: error: {msg}");
                EXIT_BULKHEAD_FAILED
            }
        },
    }
}

fn run(args: &VmmArgs) -> Outcome {
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(chain(e.as_ref())),
    };
    log::info!(
        "booting {} with {} MiB and {} vCPU(s)",
        config.boot.kernel.display_path().display(),
        config.memory_mib,
        config.cpus
    );
    let mut vm = match builder::build(config) {
        Ok(vm) => vm,
        Err(e) => return Outcome::Failed(chain(&e)),
    };
    match vm.run_with(stop_on_signals) {
        Ok(stop) => Outcome::Stopped(stop),
        Err(e) => Outcome::Failed(chain(&e)),
    }
}

/// Signals that stop the VM cleanly (it reports `VmStop::Shutdown`).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in this thread (so every thread started later inherits the
/// mask) and starts a thread that waits for one and asks the VM to stop.
fn stop_on_signals(requests: mpsc::Sender<VmStop>) {
    // SAFETY: sigset operations on a local set; pthread_sigmask changes only this thread's
    // mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let waiter = std::thread::Builder::new()
        .name("vmm-signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: sigwait reads the set and writes the signal number into a local.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                log::info!("signal {signal}: stopping the VM");
                let _ = requests.send(VmStop::Shutdown { signal });
            }
        });
    if let Err(e) = waiter {
        log::warn!("cannot watch for termination signals: {e}");
    }
}

/// The VM configuration `args` describe, adopting the inherited device sockets.
fn config(args: &VmmArgs) -> Result<VmConfig, Box<dyn std::error::Error>> {
    let cpus = u8::try_from(args.cpus)
        .ok()
        .filter(|n| (1..=crate::boot::mptable::MAX_CPUS).contains(n))
        .ok_or(ConfigError::Cpus(args.cpus))?;
    let mut seen = Vec::new();
    let mut devices = Vec::new();
    for d in &args.devices {
        let socket = match &d.socket {
            DeviceSocket::Path(p) => BackendSocket::Path(p.clone()),
            DeviceSocket::Fd(fd) => {
                if seen.contains(fd) || Some(*fd) == args.control_fd {
                    return Err(Box::new(FdError {
                        device: d.name.clone(),
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
        });
    }
    let kernel = match &args.kernel {
        Some(path) => KernelImage::File(path.clone()),
        None => KernelImage::Embedded(TEST_GUEST_NAME, TEST_GUEST),
    };
    let config = VmConfig {
        memory_mib: args.memory,
        cpus,
        boot: BootConfig {
            kernel,
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
        },
        serial: args.serial.clone(),
        serial_input: !args.no_serial_input,
        devices,
    };
    config.validate()?;
    Ok(config)
}

/// Checks that inherited `fd` is an open socket.
fn check_socket(device: &str, fd: RawFd) -> Result<RawFd, FdError> {
    let err = |why: String| FdError {
        device: device.to_owned(),
        fd,
        why,
    };
    // SAFETY: fstat writes into a zeroed stat buffer we own; fd is only a number here.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above: fstat reads nothing but the fd and writes only `st`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(err(format!(
            "is not open ({})",
            std::io::Error::last_os_error()
        )));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err("is not a socket".into()));
    }
    Ok(fd)
}

/// The exit status for why the VM stopped, without printing anything.
pub fn exit_code(stop: &VmStop) -> i32 {
    match stop {
        VmStop::GuestStatus(n) => i32::from(*n),
        VmStop::Reset | VmStop::Shutdown { .. } => 0,
        _ => EXIT_BULKHEAD_FAILED,
    }
}

/// The exit status for why the VM stopped; says so on stderr when it is not the guest's
/// own status.
pub fn exit_status(stop: &VmStop) -> i32 {
    match stop {
        VmStop::GuestStatus(n) => log::info!("guest exited with status {n}"),
        VmStop::Reset => log::info!("guest reset the machine: VM powered off"),
        VmStop::Shutdown { signal } => log::info!("stopped by signal {signal}"),
        VmStop::TripleFault { vcpu } => eprintln!(
            "bulkhead: vcpu{vcpu}: the guest triple-faulted (KVM_EXIT_SHUTDOWN); VM stopped"
        ),
        VmStop::DeviceFailed { device, why } => {
            eprintln!("bulkhead: {device} failed: {why}; VM stopped")
        }
        VmStop::Error { vcpu, what } => eprintln!("bulkhead: vcpu{vcpu}: {what}; VM stopped"),
    }
    exit_code(stop)
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

/// Prints `e` and its causes on one line; returns [`EXIT_BULKHEAD_FAILED`].
pub fn fail(e: &dyn std::error::Error) -> i32 {
    eprintln!("bulkhead: error: {}", chain(e));
    EXIT_BULKHEAD_FAILED
}

/// Prints this process's memory figures (from /proc/self/status) and when the guest was
/// first entered (CLOCK_MONOTONIC), for `bulkhead bench`.
fn report_stats() {
    use crate::kvm::run_loop::{EXIT_COUNTS, FIRST_ENTRY_NS};
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "bulkhead-stats: first_entry_monotonic_ns={} exits_pio={} exits_mmio={} exits_other={}",
        FIRST_ENTRY_NS.load(Relaxed),
        EXIT_COUNTS.pio.load(Relaxed),
        EXIT_COUNTS.mmio.load(Relaxed),
        EXIT_COUNTS.other.load(Relaxed),
    );
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "bulkhead-stats: vm_hwm_kib={} rss_anon_kib={} rss_file_kib={} rss_shmem_kib={}",
        field("VmHWM:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:")
    );
}
