//! The launcher's signals, caught from its first instruction of `bulkhead run` on: SIGINT,
//! SIGTERM and SIGHUP (stop the VM) and SIGWINCH (the terminal was resized) are written as
//! one byte each to a self-pipe, which the supervisor polls.
//!
//! Caught before anything is made, so a signal that arrives while the VM is starting (a
//! slow machine, an orchestrator that gives up early) is never the default action — which
//! would kill the launcher and leave its namespaces and cgroups behind — but waits in the
//! pipe: start-up looks at it between steps ([`StopSignals::stop_requested`]) and the
//! supervisor handles it as soon as it runs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signals that stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Write end of the self-pipe the handler reports on (unset: none yet). Reading a set
/// `OnceLock` is an atomic load, safe in a signal handler.
static SIGNAL_PIPE: OnceLock<OwnedFd> = OnceLock::new();

extern "C" fn on_signal(signal: libc::c_int) {
    if let Some(fd) = SIGNAL_PIPE.get() {
        // write(2) is async-signal-safe; a full pipe drops the byte (it is non-blocking),
        // and the signals already in it will stop the VM anyway.
        let _ = nix::unistd::write(fd, &[signal as u8]);
    }
}

/// One signal read from the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    /// SIGINT, SIGTERM or SIGHUP (the number).
    Stop(libc::c_int),
    /// SIGWINCH.
    Resized,
}

/// The read end of the self-pipe.
pub struct StopSignals {
    read: OwnedFd,
}

impl AsFd for StopSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl StopSignals {
    /// Installs the handlers; call once, before the launcher makes anything.
    pub fn catch() -> std::io::Result<StopSignals> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // The write end is kept open for the handler for the life of the process.
        SIGNAL_PIPE
            .set(write)
            .map_err(|_| std::io::Error::other("stop signals caught twice"))?;
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for s in STOP_SIGNALS.into_iter().chain([Signal::SIGWINCH]) {
            // SAFETY: the handler only writes one byte to a pipe (async-signal-safe) and
            // replaces the default action, no other handler.
            unsafe { sigaction(s, &action) }?;
        }
        Ok(StopSignals { read })
    }

    /// The next signal caught, if any (the pipe is non-blocking).
    pub fn next(&self) -> Option<Caught> {
        let mut byte = [0u8];
        let got = nix::unistd::read(&self.read, &mut byte).ok();
        (got == Some(1)).then(|| match i32::from(byte[0]) {
            libc::SIGWINCH => Caught::Resized,
            s => Caught::Stop(s),
        })
    }

    /// A stop signal caught while the VM was starting, if any. Resizes read on the way are
    /// dropped: nothing serves the console's size yet, and it is read afresh when asked.
    pub fn stop_requested(&self) -> Option<libc::c_int> {
        while let Some(c) = self.next() {
            if let Caught::Stop(s) = c {
                return Some(s);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::raise;

    #[test]
    fn a_signal_before_supervision_waits_in_the_pipe() {
        let signals = StopSignals::catch().expect("catching signals");
        assert_eq!(signals.next(), None);
        raise(Signal::SIGWINCH).expect("raise");
        raise(Signal::SIGHUP).expect("raise");
        assert_eq!(signals.next(), Some(Caught::Resized));
        assert_eq!(signals.next(), Some(Caught::Stop(libc::SIGHUP)));
        raise(Signal::SIGWINCH).expect("raise");
        raise(Signal::SIGTERM).expect("raise");
        assert_eq!(signals.stop_requested(), Some(libc::SIGTERM));
        assert_eq!(signals.stop_requested(), None);
    }
}
