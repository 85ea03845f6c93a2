//! `bulkhead run`: build the VM, run it, turn why it stopped into an exit status.
//!
//! The launcher starts the device backends and, without waiting for them, the vmm process
//! (`bulkhead-vmm`) with the vmm's end of each backend's socket; waits for every backend's
//! Ready in one loop, then for the vmm to report why the VM stopped.

use std::io::IsTerminal;

use bulkhead_vmm::config::{ConfigError, Machine, SerialOutput, VmConfig};
pub use bulkhead_vmm::process::{chain, EXIT_BULKHEAD_FAILED};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

use crate::api::ApiSocket;
use crate::cli::RunArgs;
use crate::devices::{Devices, CONSOLE};
use crate::identity::Identity;
use crate::launch::console::ConsoleStream;
use crate::launch::{self, confine, trace, Confinement};
use crate::stop_signals::StopSignals;
use crate::supervise::Supervisor;

/// Builds the VM configuration from the command line (without devices), to refuse bad
/// values before anything starts.
pub fn vm_config(args: &RunArgs) -> Result<VmConfig, ConfigError> {
    VmConfig::new(
        Machine {
            kernel: args.kernel.as_deref(),
            initrd: args.initrd.as_deref(),
            cmdline: args.cmdline(),
            memory_mib: args.memory,
            cpus: args.cpus,
            serial: &args.serial,
            transport: args.transport,
        },
        true,
        Vec::new(),
    )
}

/// The launcher's name in the start-up trace.
const LAUNCHER: &str = "launcher";

/// Runs `bulkhead run`; returns the process exit status.
pub fn main(args: RunArgs) -> i32 {
    run(&args)
}

fn run(args: &RunArgs) -> i32 {
    // First: a stop signal from here on waits for its turn instead of killing the launcher
    // half-way through making the VM (leaving its namespaces and cgroups behind).
    let signals = match StopSignals::catch() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead: error: cannot catch termination signals: {e}");
            return EXIT_BULKHEAD_FAILED;
        }
    };
    bulkhead_seccomp::mode::set_children_mode(args.seccomp);
    trace::init(args.boot_timer);
    trace::mark(LAUNCHER, "run");
    let config = match vm_config(args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    trace::mark(LAUNCHER, "config");
    // Held until the VM is gone: the uid is this VM's alone meanwhile.
    let _identity = match confine(args, &config) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("bulkhead: error: {e}");
            return EXIT_BULKHEAD_FAILED;
        }
    };
    trace::mark(LAUNCHER, "identity");
    // Before anything is opened: the API socket, the devices' files, the vmm's.
    if let Some(id) = args.open_as {
        crate::open_as::configure(id);
    }
    // Held until the VM is gone: it tells other launchers that what is named after this
    // one (bulkhead-<pid>-...) is in use. Taken before anything of the kind is made.
    let _alive = if nix::unistd::geteuid().is_root() {
        let lock = match crate::liveness::LauncherLock::take() {
            Ok(lock) => lock,
            Err(e) => return fail(&e),
        };
        // Only what would be in the way now; the rest is swept off the start's path.
        for what in crate::stale::reap_own() {
            eprintln!("bulkhead: removed the {what} of a bulkhead that is gone");
        }
        Some(lock)
    } else {
        None
    };
    trace::mark(LAUNCHER, "lock+stale-sweep");
    log::info!(
        "booting {} with {} MiB and {} vCPU(s)",
        config.boot.kernel.display_path().display(),
        config.memory_mib,
        config.cpus
    );
    let api = match args.api_socket.as_deref().map(ApiSocket::bind) {
        Some(Ok(api)) => Some(api),
        Some(Err(e)) => return fail(&e),
        None => None,
    };
    let console = args.console.clone().and_then(|c| c.0);
    let console_restart = args.console.as_ref().map(|c| c.1).unwrap_or_default();
    let mut devices = match Devices::plan(
        &args.disk,
        &args.net,
        console.as_ref().map(|c| (c, console_restart)),
        args.vsock.as_ref(),
    ) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    trace::mark(LAUNCHER, "devices-planned");
    if let Some(code) = stopped_while_starting(&signals) {
        devices.stop();
        return code;
    }
    // The virtio console on the terminal owns its input; the serial console only prints.
    let serial_input =
        console != Some(ConsoleStream::Stdio) && config.serial == SerialOutput::Stdio;
    let configs = std::mem::take(&mut devices.configs);
    let restartable = devices.restartable();
    let serial = launch::confine::serial_start();
    if serial {
        // As earlier versions did: every backend started and ready before the vmm.
        if let Err(e) = devices.launch().and_then(|()| devices.wait_ready()) {
            devices.stop();
            return fail(&e);
        }
    }
    // The vmm first (its exec, KVM and guest memory set-up is the longest way to the
    // guest), on the sockets the backends will serve once they are jailed (its vhost-user
    // set-up waits for each), then the backends, then every Ready in one loop.
    let (mut vmm, control) = match launch::start_vmm(args, configs, serial_input, &restartable) {
        Ok(v) => v,
        Err(e) => {
            devices.stop();
            return fail(&e);
        }
    };
    trace::mark(LAUNCHER, "vmm-started");
    // Our Hello now: the vmm reads it once jailed and goes on to its devices meanwhile.
    let channel = crate::supervise::hello(control);
    if !serial {
        if let Err(e) = devices.launch() {
            abandon(&mut vmm, &mut devices);
            trace::print();
            return fail(&e);
        }
        trace::mark(LAUNCHER, "backends-started");
    }
    if let Err(e) = devices.wait_ready() {
        abandon(&mut vmm, &mut devices);
        trace::print();
        return fail(&e);
    }
    if let Err(e) = vmm.executed() {
        devices.stop();
        return fail(&e);
    }
    trace::mark(LAUNCHER, "backends-ready");
    if let Some(code) = stopped_while_starting(&signals) {
        abandon(&mut vmm, &mut devices);
        return code;
    }
    let terminal = std::io::stdin().is_terminal();
    let resize = (console == Some(ConsoleStream::Stdio) && terminal).then(|| CONSOLE.into());
    let supervisor = Supervisor::new(vmm, channel, &mut devices, api, resize)
        .map(|s| s.restart_on_sigsys(args.restart_on_sigsys));
    // What launchers that are gone left (theirs only: ours is held by our lock), swept
    // once the VM is running (the vmm said Ready, or the VM stopped), in a thread that gets
    // a CPU only when the VM's processes leave one idle (it used to delay the vmm's set-up
    // by a few ms on two cores, and its 0.6 ms of CPU was part of every start); joined
    // before exit.
    let sweeper = _alive.as_ref().and_then(|_| {
        std::thread::Builder::new()
            .name("stale-sweep".into())
            .spawn(|| {
                idle_priority();
                SWEEP_GATE.wait();
                for what in crate::stale::reap() {
                    eprintln!("bulkhead: removed the {what} of a bulkhead that is gone");
                }
                let cpu = bulkhead_vmm::trace::cpu_us(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID);
                SWEEP_CPU_US.store(cpu.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
            })
            .ok()
    });
    let code = match supervisor {
        Ok(supervisor) => supervisor.run(&signals),
        Err(code) => code,
    };
    devices.stop();
    SWEEP_GATE.open();
    if let Some(sweeper) = sweeper {
        let _ = sweeper.join();
    }
    if args.report_stats {
        report_own_cpu();
    }
    code
}

/// Puts the calling thread in the SCHED_IDLE class (best effort).
fn idle_priority() {
    if let Err(e) = bulkhead::sys::sched_idle() {
        log::debug!("stale sweep at idle priority: {e}");
    }
}

/// The launcher's own CPU time in µs (user + system, every thread of it; its children's not
/// included) when the vmm said Ready: what starting the VM cost it. 0 until then.
static READY_CPU_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The stale sweep's CPU time in µs, once it is done (for `bulkhead bench`).
static SWEEP_CPU_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The launcher's own CPU time so far in µs (user + system; its children's not included).
fn own_cpu_us() -> u64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |usage| {
        let us = |t: TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        us(usage.user_time()) + us(usage.system_time())
    })
}

/// The vmm has said Ready: notes the launcher's CPU time (for `bulkhead bench`) and lets
/// the sweep of what gone launchers left begin.
pub fn vm_ready() {
    READY_CPU_US.store(own_cpu_us(), std::sync::atomic::Ordering::Relaxed);
    SWEEP_GATE.open();
}

/// A gate that opens once and stays open.
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

/// Opens when the VM is running (or stopped): the stale sweep waits for it.
static SWEEP_GATE: Gate = Gate {
    open: std::sync::Mutex::new(false),
    opened: std::sync::Condvar::new(),
};

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// For `bulkhead bench`: the launcher's own CPU time when the vmm said Ready and for its
/// whole run (supervising, stopping the VM, the deferred sweep included), and the sweep's.
fn report_own_cpu() {
    eprintln!(
        "bulkhead-stats: launcher_ready_cpu_us={} launcher_cpu_us={} sweep_cpu_us={}",
        READY_CPU_US.load(std::sync::atomic::Ordering::Relaxed),
        own_cpu_us(),
        SWEEP_CPU_US.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Stops a VM that did not finish starting: the vmm first (it has not run the guest: it
/// waits for the backends), as the VM's stop does, then the backends.
fn abandon(vmm: &mut launch::DeviceProcess, devices: &mut Devices) {
    vmm.kill();
    vmm.wait_for_end(std::time::Duration::from_secs(5));
    devices.stop();
}

/// The exit status for a stop signal caught while the VM was starting, if one was.
fn stopped_while_starting(signals: &StopSignals) -> Option<i32> {
    let signal = signals.stop_requested()?;
    eprintln!("bulkhead: signal {signal}: stopping the VM before it started");
    Some(128 + signal)
}

/// Sets how the processes are confined; refuses what cannot be done (confinement fails
/// closed: the user opts out of a layer, bulkhead never drops one silently). Returns the
/// identity the jailed processes run as (allocated unless `--uid/--gid` force one).
fn confine(args: &RunArgs, config: &VmConfig) -> Result<Option<Identity>, String> {
    let identity = if args.jail {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "confining the VM's processes (namespaces, cgroups, an empty root, \
                        another uid) needs root; --jail off starts them unconfined"
                    .into(),
            );
        }
        let identity =
            Identity::choose(args.uid, args.gid, args.uid_range).map_err(|e| chain(&e))?;
        log::info!(
            "the VM's processes run as uid {} gid {}{}",
            identity.uid,
            identity.gid,
            if identity.is_own() {
                ", the VM's own"
            } else {
                " (--uid/--gid: shared with whatever else uses it)"
            }
        );
        Some(identity)
    } else {
        eprintln!("bulkhead: --jail off: the VM's processes run without namespaces or an empty root, as this user");
        None
    };
    let defaults = Confinement::default();
    let (uid, gid, nproc) = match &identity {
        Some(id) if id.is_own() => (id.uid, id.gid, confine::vm_tasks_of(args)),
        Some(id) => (id.uid, id.gid, confine::SHARED_NPROC),
        None => (defaults.uid, defaults.gid, defaults.nproc),
    };
    launch::configure(Confinement {
        jail: args.jail,
        uid,
        gid,
        nproc,
        landlock: args.landlock,
        guest_memory: config.memory_mib << 20,
    });
    Ok(identity)
}

/// Prints `e` and its causes on one line; returns [`EXIT_BULKHEAD_FAILED`].
pub fn fail(e: &dyn std::error::Error) -> i32 {
    eprintln!("bulkhead: error: {}", chain(e));
    EXIT_BULKHEAD_FAILED
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
}
