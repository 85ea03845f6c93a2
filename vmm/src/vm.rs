//! Running a built VM until it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::thread::JoinHandleExt;

use vmm_sys_util::signal::Killable;

use crate::builder::Vm;
use crate::devices::serial_input;
use crate::devices::VmStop;
use crate::kvm::pause::Pause;
use crate::kvm::run_loop;
use crate::virtio::monitor;
use crate::virtio::{ReconnectError, Transports};
use vmm_sys_util::eventfd::EventFd;

/// How often stopping vCPU threads are kicked again until they have left `KVM_RUN` (a kick
/// can land just before a thread enters it).
const KICK_INTERVAL: Duration = Duration::from_millis(2);
/// How often the stopping thread looks whether the vCPU threads have finished.
const POLL_INTERVAL: Duration = Duration::from_micros(100);

/// What the caller of [`Vm::run_with`] can do to the running VM.
pub struct VmHandle {
    /// Stops the VM with the reason sent.
    pub stop: mpsc::Sender<VmStop>,
    /// Pauses and resumes the vCPUs.
    pub pause: Arc<Pause>,
    /// The virtio devices' transports, by name.
    pub transports: Transports,
    /// The i8042 (Ctrl+Alt+Del).
    pub keyboard: Arc<Mutex<crate::devices::i8042::I8042>>,
}

impl VmHandle {
    fn transport(
        &self,
        name: &str,
    ) -> Result<std::sync::MutexGuard<'_, dyn crate::virtio::ConfigChange + 'static>, String> {
        let (_, transport) = self
            .transports
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no device {name}"))?;
        Ok(transport.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Tells device `name`'s driver its configuration changed.
    pub fn config_changed(&self, name: &str) -> Result<(), String> {
        self.transport(name)?
            .config_changed()
            .map_err(|e| format!("{name}: raising the config interrupt: {e}"))
    }

    /// Hands device `name` to a new backend process connected through `socket` (see
    /// `virtio::vhost_user::replay`).
    pub fn reconnect(
        &self,
        name: &str,
        socket: std::os::unix::net::UnixStream,
    ) -> Result<(), ReconnectError> {
        self.transport(name)
            .map_err(ReconnectError::Refused)?
            .reconnect(socket)
    }

    /// No backend will come for device `name`: it needs a reset.
    pub fn give_up(&self, name: &str, why: &str) -> Result<(), String> {
        self.transport(name)?.give_up(why);
        Ok(())
    }
}

/// Errors while starting the VM's threads.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A thread could not be started.
    #[error("starting thread {0}")]
    Thread(String, #[source] std::io::Error),
}

impl Vm {
    /// Runs the vCPUs until the guest or a vCPU stops the VM; returns why. Guest memory
    /// stays mapped until the `Vm` is dropped (so its size can still be measured).
    pub fn run(&mut self) -> Result<VmStop, RunError> {
        self.run_with(|_| None)
    }

    /// [`Vm::run`], first handing `control` (before any VM thread exists) a [`VmHandle`]
    /// through which the caller can pause, resume or stop the VM, and reconnect devices.
    /// `control` returns where lost backends of restartable devices are reported; without
    /// it (nobody would reconnect them) a lost backend stops the VM, as for any device.
    pub fn run_with(
        &mut self,
        control: impl FnOnce(VmHandle) -> Option<monitor::Report>,
    ) -> Result<VmStop, RunError> {
        run_loop::install_kick_handler()
            .map_err(|e| RunError::Thread("signal handler".into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let pause = Arc::new(Pause::default());
        let monitor_exit =
            EventFd::new(0).map_err(|e| RunError::Thread("vhost-monitor".into(), e))?;
        let monitor_exit_for_thread = if self.watched.is_empty() {
            None
        } else {
            Some(
                monitor_exit
                    .try_clone()
                    .map_err(|e| RunError::Thread("vhost-monitor".into(), e))?,
            )
        };
        // The vCPUs first: they are the way to the guest's first instruction; the threads
        // that serve the launcher, the signals and the serial input follow while it runs
        // (what they serve waits meanwhile: signals are blocked, requests queue on the
        // socket). Until `control` has said whether anyone restarts backends, a vCPU may
        // see a restartable device's last config space instead of zeros: harmless.
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (i, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let t = run_loop::spawn(
                i as u32,
                vcpu,
                self.vcpu_filter.clone(),
                self.io.clone(),
                stop.clone(),
                pause.clone(),
                tx.clone(),
            )
            .map_err(|e| RunError::Thread(format!("vcpu{i}"), e));
            match t {
                Ok(t) => {
                    pause.register(t.as_pthread_t() as libc::pthread_t);
                    threads.push(t)
                }
                Err(e) => {
                    stop_vcpus(&stop, &pause, threads);
                    return Err(e);
                }
            }
        }
        let report = control(VmHandle {
            stop: tx.clone(),
            pause: pause.clone(),
            transports: self.transports.clone(),
            keyboard: self.keyboard.clone(),
        });
        if report.is_none() {
            for link in &self.watched {
                link.set_restartable(false);
            }
        }
        if self.serial_stdin {
            // Detached: a blocking read on stdin cannot be interrupted; it ends with the process.
            if let Err(e) = serial_input::spawn(std::io::stdin(), self.serial.clone(), stop.clone())
            {
                stop_vcpus(&stop, &pause, threads);
                return Err(RunError::Thread("serial-in".into(), e));
            }
        }
        let monitor = match monitor_exit_for_thread {
            Some(exit) => {
                let watched = std::mem::take(&mut self.watched);
                match monitor::spawn(watched, exit, tx.clone(), report) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        stop_vcpus(&stop, &pause, threads);
                        return Err(RunError::Thread("vhost-monitor".into(), e));
                    }
                }
            }
            None => None,
        };
        drop(tx);
        // Every thread is started: from here the main thread only waits and tears down.
        let confined = bulkhead_seccomp::thread::confine_current_thread(
            || "vmm".into(),
            bulkhead_seccomp::Role::VmmMain,
            bulkhead_seccomp::mode::process_mode(),
        );
        let reason = match confined {
            Ok(()) => rx.recv().unwrap_or(VmStop::Error {
                vcpu: 0,
                what: "every vCPU thread ended without a reason".into(),
            }),
            Err(e) => VmStop::Error {
                vcpu: 0,
                what: format!("installing the vmm thread's seccomp filter: {e}"),
            },
        };
        stop_vcpus(&stop, &pause, threads);
        if let Some(m) = monitor {
            let _ = monitor_exit.write(1);
            let _ = m.join();
        }
        Ok(device_failure_first(reason, &rx))
    }
}

/// The reason the VM stopped, a backend's failure taking precedence over the guest's own
/// end: a guest that sees its device fail (FAILED status after a backend died during
/// set-up) may exit before the monitor thread reports the hang-up, and the user must be told
/// that a device process died (exit 125), not only that the guest gave up. Called once
/// every sender has ended, so what the monitor found is in `rx`.
fn device_failure_first(reason: VmStop, rx: &mpsc::Receiver<VmStop>) -> VmStop {
    if !matches!(reason, VmStop::GuestStatus(_) | VmStop::Reset) {
        return reason;
    }
    rx.try_iter()
        .find(|s| matches!(s, VmStop::DeviceFailed { .. }))
        .unwrap_or(reason)
}

/// Sets the stop flag and kicks every vCPU thread out of `KVM_RUN` (or its pause) until all
/// have finished.
fn stop_vcpus(stop: &AtomicBool, pause: &Pause, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    pause.resume();
    let mut last_kick: Option<Instant> = None;
    while threads.iter().any(|t| !t.is_finished()) {
        if last_kick.is_none_or(|t| t.elapsed() >= KICK_INTERVAL) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                if let Err(e) = t.kill(run_loop::kick_signal()) {
                    log::warn!("kicking a vCPU thread: {e}");
                }
            }
            last_kick = Some(Instant::now());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> VmStop {
        VmStop::DeviceFailed {
            device: "net0".into(),
            why: "hung up".into(),
        }
    }

    #[test]
    fn a_backend_failure_outranks_the_guest_ending() {
        let (tx, rx) = mpsc::channel();
        tx.send(failed()).unwrap();
        drop(tx);
        assert!(matches!(
            device_failure_first(VmStop::GuestStatus(1), &rx),
            VmStop::DeviceFailed { .. }
        ));
    }

    #[test]
    fn the_guest_ending_stands_alone_and_a_shutdown_is_not_overridden() {
        let (tx, rx) = mpsc::channel();
        drop(tx);
        assert!(matches!(
            device_failure_first(VmStop::GuestStatus(0), &rx),
            VmStop::GuestStatus(0)
        ));
        let (tx, rx) = mpsc::channel();
        tx.send(failed()).unwrap();
        let shutdown = VmStop::Shutdown {
            why: "signal 15".into(),
        };
        assert!(matches!(
            device_failure_first(shutdown, &rx),
            VmStop::Shutdown { .. }
        ));
    }
}
