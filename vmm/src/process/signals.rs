//! Termination signals stop the VM cleanly (it reports `VmStop::Shutdown`).

use std::sync::mpsc;

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

use crate::devices::VmStop;

/// Signals that stop the VM.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in this thread (so every thread started later inherits the
/// mask) and starts a thread that waits for one and stops the VM through `stop`.
pub fn stop_on_signals(stop: mpsc::Sender<VmStop>) {
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
    let waiter = spawn_confined("vmm-signals", Role::VmmMain, process_mode(), move || {
        let mut signal = 0;
        // SAFETY: sigwait reads the set and writes the signal number into a local.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
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
