//! `bulkhead run`: build the VM, run it, turn why it stopped into an exit status.
//!
//! Today the vmm runs inside this process; the launcher that starts it (and the device
//! processes) confined comes with the confinement issue, behind this same command.

use bulkhead_vmm::boot::{BootConfig, KernelImage};
use bulkhead_vmm::config::{ConfigError, VmConfig};
use bulkhead_vmm::devices::VmStop;
use bulkhead_vmm::{builder, TEST_GUEST, TEST_GUEST_NAME};

use crate::cli::RunArgs;
use crate::devices::Devices;
use crate::launch::console::ConsoleStream;

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
        serial_input: true,
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
    let console = args.console.clone().and_then(|c| c.0);
    let mut devices = match Devices::start(&args.disk, &args.net, console.as_ref()) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    config.devices = std::mem::take(&mut devices.configs);
    // The virtio console on the terminal owns its input; the serial console only prints.
    config.serial_input = console != Some(ConsoleStream::Stdio);
    let mut vm = match builder::build(config) {
        Ok(vm) => vm,
        Err(e) => {
            // A backend that failed at start-up shows up here as a broken socket: say how
            // its process ended, which names the real cause.
            let code = match devices.exited() {
                Some((device, how)) => {
                    eprintln!(
                        "bulkhead: error: {device}: {how}; it could not serve the device ({e})"
                    );
                    EXIT_BULKHEAD_FAILED
                }
                None => fail(&e),
            };
            devices.stop();
            return code;
        }
    };
    let result = vm.run();
    if args.report_stats {
        report_stats();
    }
    drop(vm);
    let code = match &result {
        // A device's hang-up is best explained by how its process ended, when bulkhead
        // started it.
        Ok(VmStop::DeviceFailed { device, why }) => exit_status(&VmStop::DeviceFailed {
            why: devices.how_it_ended(device).unwrap_or_else(|| why.clone()),
            device: device.clone(),
        }),
        Ok(stop) => exit_status(stop),
        Err(e) => fail(e),
    };
    devices.stop();
    code
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
