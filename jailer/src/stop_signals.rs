//! The launcher's signals, caught from its first instruction of `bulkhead run` on: SIGINT,
//! SIGTERM and SIGHUP (stop the VM) and SIGWINCH (the terminal was resized) are written as
//! one byte each to a self-pipe, which the supervisor polls.
//!
//! Caught before anything is made, so a signal that arrives while the VM is starting (a
//! slow machine, an orchestrator that gives up early) is never the default action — which
//! would kill the launcher and leave its namespaces and cgroups behind — but waits in the
//! pipe: start-up looks at it between steps ([`StopSignals::stop_requested`]) and the
//! supervisor handles it as soon as it runs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signals that stop the VM.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Write end of the self-pipe the handler reports on (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local to the pipe's write end,
    // which stays open for the life of the process.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
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
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the local array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else; the write end is
        // deliberately kept open for the handler for the life of the process.
        let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        for s in STOP_SIGNALS.into_iter().chain([libc::SIGWINCH]) {
            // SAFETY: installs a handler that only calls write(2); the sigaction struct is a
            // zero-initialised local.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(StopSignals { read })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The next signal caught, if any (the pipe is non-blocking).
    pub fn next(&self) -> Option<Caught> {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local from the pipe's read end (non-blocking).
        let got = unsafe { libc::read(self.read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        (got == 1).then(|| match i32::from(byte) {
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

    #[test]
    fn a_signal_before_supervision_waits_in_the_pipe() {
        let signals = StopSignals::catch().expect("catching signals");
        assert_eq!(signals.next(), None);
        // SAFETY: raise(2) to this process, whose handler for both was installed above.
        unsafe {
            libc::raise(libc::SIGWINCH);
            libc::raise(libc::SIGHUP);
        }
        assert_eq!(signals.next(), Some(Caught::Resized));
        assert_eq!(signals.next(), Some(Caught::Stop(libc::SIGHUP)));
        // SAFETY: as above.
        unsafe {
            libc::raise(libc::SIGWINCH);
            libc::raise(libc::SIGTERM);
        }
        assert_eq!(signals.stop_requested(), Some(libc::SIGTERM));
        assert_eq!(signals.stop_requested(), None);
    }
}
