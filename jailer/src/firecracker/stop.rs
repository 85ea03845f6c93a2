//! The orderly stop. SIGTERM, SIGINT and SIGHUP are caught from `main`'s first instruction
//! with the launcher's own self-pipe ([`crate::stop_signals`]), so none of them is the
//! default action, which would leave the private directory and the API socket behind and
//! the VM to be stopped only by the launcher's `PR_SET_PDEATHSIG`. A stop signal ends
//! `bulkhead-firecracker` in order: the VM's launcher (if started, or starting) is sent
//! SIGTERM, its own orderly stop, and waited for at most [`LAUNCHER_GRACE`], then killed;
//! `main` then removes the API socket and the private directory; the exit status is
//! 128 + the signal's number (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP).

use std::cell::Cell;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::instance::Instance;
use crate::stop_signals::StopSignals;

/// How long the launcher gets to stop the VM after SIGTERM before it is killed: more than
/// its own bounds (the vmm's stop, then the devices'), less than the 10 s that
/// `bulkhead-jailer` gives this process after forwarding a signal.
pub const LAUNCHER_GRACE: Duration = Duration::from_secs(8);

/// The stop signals caught (none in unit tests, which catch nothing).
#[derive(Default)]
pub struct Stop {
    signals: Option<StopSignals>,
    /// A stop signal read from the pipe and not yet handled.
    caught: Cell<Option<i32>>,
}

impl Stop {
    /// Installs the handlers; call once, first thing in `main`.
    pub fn catch() -> std::io::Result<Stop> {
        Ok(Stop {
            signals: Some(StopSignals::catch()?),
            caught: Cell::new(None),
        })
    }

    /// Whether a stop signal was caught; it stays for [`Stop::requested`]. (A terminal
    /// resize, SIGWINCH, which the launcher's pipe also reports, is read and dropped.)
    pub fn caught(&self) -> bool {
        if self.caught.get().is_none() {
            let signal = self.signals.as_ref().and_then(StopSignals::stop_requested);
            self.caught.set(signal);
        }
        self.caught.get().is_some()
    }

    /// Sleeps for `d` or until a signal arrives, whichever comes first.
    pub fn wait(&self, d: Duration) {
        let Some(signals) = &self.signals else {
            std::thread::sleep(d);
            return;
        };
        let timeout = PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        // An error (EINTR) only ends the sleep early; the callers look again.
        let _ = nix::poll::poll(&mut fds, timeout);
    }

    /// The stop signal caught, if one was; taken (the stop is handled once).
    pub fn requested(&self) -> Option<i32> {
        self.caught();
        self.caught.take()
    }

    /// The fd to poll with others, if signals are caught.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.signals.as_ref().map(StopSignals::as_fd)
    }
}

/// Stops `vm` for `signal`: the launcher first (bounded), then the status to exit with.
/// Said on stderr as well as in the log (which may not be configured).
pub fn stop(vm: &mut Instance, signal: i32) -> i32 {
    let status = 128 + signal;
    let why = format!("signal {signal}: stopping (exit status {status})");
    eprintln!("bulkhead-firecracker: {why}");
    vm.logger.info("main", &why);
    if let Some(launcher) = vm.launcher.as_mut() {
        let pid = launcher.pid();
        match launcher.stop(LAUNCHER_GRACE) {
            Ok(code) => vm.logger.info(
                "main",
                &format!("the VM stopped: bulkhead run (pid {pid}) exited with {code}"),
            ),
            Err(e) => {
                eprintln!("bulkhead-firecracker: error: {e}");
                vm.logger.error("main", &e);
            }
        }
    }
    status
}
