//! `bulkhead run`: build the VM, run it, turn why it stopped into an exit status.
//!
//! Today the vmm runs inside this process; the launcher that starts it (and the device
//! processes) confined comes with the confinement issue, behind this same command.

use bulkhead_vmm::boot::{BootConfig, KernelImage};
use bulkhead_vmm::config::{ConfigError, VmConfig};
use bulkhead_vmm::devices::VmStop;
use bulkhead_vmm::{builder, TEST_GUEST, TEST_GUEST_NAME};

use std::os::unix::process::ExitStatusExt;

use bulkhead_vmm::config::VirtioDeviceConfig;
use bulkhead_vmm::virtio::vhost_user::BackendSocket;

use crate::cli::RunArgs;
use crate::disk_arg::{DiskArg, DiskBackend};
use crate::launch::{self, DeviceProcess};

/// Virtio device id of a block device.
const VIRTIO_ID_BLOCK: u32 = 2;

/// Exit status when bulkhead itself fails or the guest crashed (as `docker run` does).
pub const EXIT_BULKHEAD_FAILED: i32 = 125;

/// Builds the VM configuration from the command line (without devices).
pub fn vm_config(args: &RunArgs) -> Result<VmConfig, ConfigError> {
    let cpus = u8::try_from(args.cpus)
        .ok()
        .filter(|n| (1..=bulkhead_vmm::boot::mptable::MAX_CPUS).contains(n))
        .ok_or(ConfigError::Cpus(args.cpus))?;
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
        devices: Vec::new(),
    };
    config.validate()?;
    Ok(config)
}

/// Runs `bulkhead run`; returns the process exit status.
pub fn main(args: RunArgs) -> i32 {
    run(&args)
}

fn run(args: &RunArgs) -> i32 {
    let config = match vm_config(args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    log::info!(
        "booting {} with {} MiB and {} vCPU(s)",
        config.boot.kernel.display_path().display(),
        config.memory_mib,
        config.cpus
    );
    let mut config = config;
    let mut processes = Vec::new();
    for (i, disk) in args.disk.iter().enumerate() {
        match disk_device(&format!("disk{i}"), disk) {
            Ok((device, process)) => {
                config.devices.push(device);
                processes.extend(process);
            }
            Err(e) => {
                stop_devices(processes);
                return fail(&e);
            }
        }
    }
    let mut vm = match builder::build(config) {
        Ok(vm) => vm,
        Err(e) => {
            // A backend that failed at start-up shows up here as a broken socket: say how
            // its process ended, which names the real cause.
            let code = match exited_device(&mut processes) {
                Some((device, how)) => {
                    eprintln!(
                        "bulkhead: error: {device}: {how}; it could not serve the disk ({e})"
                    );
                    EXIT_BULKHEAD_FAILED
                }
                None => fail(&e),
            };
            stop_devices(processes);
            return code;
        }
    };
    let result = vm.run();
    if args.report_stats {
        report_stats();
    }
    drop(vm);
    let code = match &result {
        Ok(VmStop::DeviceFailed { device, why }) => device_failed(device, why, &mut processes),
        Ok(stop) => exit_status(stop),
        Err(e) => fail(e),
    };
    stop_devices(processes);
    code
}

/// The vmm's side of disk `name`, and the process serving it when bulkhead starts one.
fn disk_device(
    name: &str,
    disk: &DiskArg,
) -> Result<(VirtioDeviceConfig, Option<DeviceProcess>), launch::LaunchError> {
    let (socket, process) = match &disk.backend {
        DiskBackend::Image {
            path,
            readonly,
            serial,
            direct,
        } => {
            let (process, socket) = launch::start_blk(
                name,
                path,
                *readonly,
                serial.as_deref(),
                disk.queues,
                *direct,
            )?;
            (BackendSocket::Connected(socket), Some(process))
        }
        DiskBackend::Socket(path) => (BackendSocket::Path(path.clone()), None),
    };
    let device = VirtioDeviceConfig {
        name: name.to_owned(),
        device_type: VIRTIO_ID_BLOCK,
        queues: disk.queues,
        socket,
    };
    Ok((device, process))
}

/// The first device process that has ended (waiting briefly for one that is ending), with
/// how it ended; marks it reported.
fn exited_device(processes: &mut [DeviceProcess]) -> Option<(String, String)> {
    for _ in 0..50 {
        for p in processes.iter_mut() {
            if let Some(s) = p.exited() {
                p.reported = true;
                return Some((
                    p.name.clone(),
                    format!("{} (pid {}) {}", p.program, p.pid(), launch::describe(s)),
                ));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    None
}

/// Reports a failed device, with how its process ended when bulkhead started it.
fn device_failed(device: &str, why: &str, processes: &mut [DeviceProcess]) -> i32 {
    let process = processes.iter_mut().find(|p| p.name == device);
    let ended = process.and_then(|p| {
        // The hang-up may arrive a moment before the process is reapable.
        for _ in 0..100 {
            if let Some(s) = p.exited() {
                return Some(format!(
                    "{} (pid {}) {}",
                    p.program,
                    p.pid(),
                    launch::describe(s)
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        None
    });
    match ended {
        Some(how) => eprintln!("bulkhead: {device} failed: {how}; VM stopped"),
        None => eprintln!("bulkhead: {device} failed: {why}; VM stopped"),
    }
    EXIT_BULKHEAD_FAILED
}

/// Stops every device process, reporting any that had already ended badly.
fn stop_devices(processes: Vec<DeviceProcess>) {
    for p in processes {
        let (name, program, pid, reported) =
            (p.name.clone(), p.program.clone(), p.pid(), p.reported);
        match p.stop() {
            _ if reported => {}
            Some(s) if s.success() || s.signal() == Some(libc::SIGTERM) => {}
            Some(s) => log::warn!("{name}: {program} (pid {pid}) {}", launch::describe(s)),
            None => log::warn!("{name}: {program} (pid {pid}) could not be reaped"),
        }
    }
}

/// The exit status for why the VM stopped; says so on stderr when it is not the guest's
/// own status.
pub fn exit_status(stop: &VmStop) -> i32 {
    match stop {
        VmStop::GuestStatus(n) => {
            log::info!("guest exited with status {n}");
            i32::from(*n)
        }
        VmStop::Reset => {
            log::info!("guest reset the machine: VM powered off");
            0
        }
        VmStop::TripleFault { vcpu } => {
            eprintln!(
                "bulkhead: vcpu{vcpu}: the guest triple-faulted (KVM_EXIT_SHUTDOWN); VM stopped"
            );
            EXIT_BULKHEAD_FAILED
        }
        VmStop::DeviceFailed { device, why } => {
            eprintln!("bulkhead: {device} failed: {why}; VM stopped");
            EXIT_BULKHEAD_FAILED
        }
        VmStop::Error { vcpu, what } => {
            eprintln!("bulkhead: vcpu{vcpu}: {what}; VM stopped");
            EXIT_BULKHEAD_FAILED
        }
    }
}

/// Prints `e` and its causes on one line; returns [`EXIT_BULKHEAD_FAILED`].
pub fn fail(e: &dyn std::error::Error) -> i32 {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("bulkhead: error: {msg}");
    EXIT_BULKHEAD_FAILED
}

/// Prints this process's memory figures (from /proc/self/status) and when the guest was
/// first entered (CLOCK_MONOTONIC), for `bulkhead bench`.
fn report_stats() {
    use bulkhead_vmm::kvm::run_loop::{EXIT_COUNTS, FIRST_ENTRY_NS};
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec!["bulkhead", "run"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(v).unwrap().command {
            crate::cli::Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn cpus_out_of_range_is_refused() {
        for n in ["0", "255", "100000"] {
            let e = vm_config(&args(&["--cpus", n])).unwrap_err();
            assert!(e.to_string().contains(&format!("--cpus {n}")), "{e}");
        }
        assert_eq!(vm_config(&args(&["--cpus", "254"])).unwrap().cpus, 254);
    }

    #[test]
    fn memory_too_small_is_refused() {
        assert!(vm_config(&args(&["--memory", "1"])).is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(exit_status(&VmStop::GuestStatus(3)), 3);
        assert_eq!(exit_status(&VmStop::Reset), 0);
        assert_eq!(
            exit_status(&VmStop::TripleFault { vcpu: 0 }),
            EXIT_BULKHEAD_FAILED
        );
    }
}
