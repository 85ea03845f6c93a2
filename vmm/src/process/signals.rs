//! Termination signals stop the VM cleanly (it reports `VmStop::Shutdown`).

use std::sync::mpsc;

use nix::sys::signal::{SigSet, Signal};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

use crate::devices::VmStop;

/// Signals that stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn stop_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS {
        set.add(s);
    }
    set
}

/// Blocks the stop signals in the calling thread, so that every thread it starts later
/// inherits the mask. Call it before the first thread starts: a stop signal is delivered to
/// any thread that does not block it, and one delivered to a helper thread (the
/// `vhost-watchdog`, say) is lost — the vmm, init of its PID namespace, has no handler, so
/// the kernel drops it. Blocked, it stays pending until [`stop_on_signals`]' waiter takes it.
pub fn block_stop_signals() {
    // Changes only this thread's mask (pthread_sigmask), which cannot fail for these.
    let _ = stop_set().thread_block();
}

/// Blocks the stop signals in this thread (see [`block_stop_signals`]) and starts a thread
/// that waits for one and stops the VM through `stop`.
pub fn stop_on_signals(stop: mpsc::Sender<VmStop>) {
    block_stop_signals();
    let set = stop_set();
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
