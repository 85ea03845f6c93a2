//! Running a built VM until it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::signal::Killable;

use crate::builder::Vm;
use crate::devices::serial_input;
use crate::devices::VmStop;
use crate::kvm::run_loop;

/// How often a stopping vCPU thread is kicked again until it has left `KVM_RUN`.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

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
        run_loop::install_kick_handler()
            .map_err(|e| RunError::Thread("signal handler".into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        if self.serial_stdin {
            // Detached: a blocking read on stdin cannot be interrupted; it ends with the process.
            serial_input::spawn(std::io::stdin(), self.serial.clone(), stop.clone())
                .map_err(|e| RunError::Thread("serial-in".into(), e))?;
        }
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (i, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let t = run_loop::spawn(i as u32, vcpu, self.io.clone(), stop.clone(), tx.clone())
                .map_err(|e| RunError::Thread(format!("vcpu{i}"), e));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_vcpus(&stop, threads);
                    return Err(e);
                }
            }
        }
        drop(tx);
        let reason = rx.recv().unwrap_or(VmStop::Error {
            vcpu: 0,
            what: "every vCPU thread ended without a reason".into(),
        });
        stop_vcpus(&stop, threads);
        Ok(reason)
    }
}

/// Sets the stop flag and kicks each vCPU thread until it has finished.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for t in threads {
        while !t.is_finished() {
            if let Err(e) = t.kill(run_loop::kick_signal()) {
                log::warn!("kicking a vCPU thread: {e}");
                break;
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}
