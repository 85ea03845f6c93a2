//! Termination signals stop the VM cleanly (it reports `VmStop::Shutdown`).

use std::sync::mpsc;

use nix::sys::signal::{SigSet, Signal};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

use crate::devices::VmStop;

/// Signals that stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Blocks the stop signals in this thread (so every thread started later inherits the
/// mask) and starts a thread that waits for one and stops the VM through `stop`.
pub fn stop_on_signals(stop: mpsc::Sender<VmStop>) {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS {
        set.add(s);
    }
    // Changes only this thread's mask (pthread_sigmask), which cannot fail for these.
    let _ = set.thread_block();
    let waiter = spawn_confined("vmm-signals", Role::VmmMain, process_mode(), move || {
        if let Ok(signal) = set.wait() {
            // By number, as the stop reason always said.
            let signal = signal as i32;
            log::info!("signal {signal}: stopping the VM");
            let _ = stop.send(VmStop::Shutdown {
                why: format!("signal {signal}"),
            });
        }
    });
    if let Err(e) = waiter {
        log::warn!("cannot watch for termination signals: {e}");
    }
}
