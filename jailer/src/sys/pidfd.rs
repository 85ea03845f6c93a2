//! Signalling and reaping a child through its pidfd: `pidfd_send_signal` has no wrapper in
//! nix 0.32, and nix's `waitid` turns a real-time signal (such as the vmm's kick) into an
//! error where the exit status must be reported.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Sends `signal` to the process of `pidfd` (null siginfo, flags 0).
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a pidfd borrowed for the call; a null siginfo and flags 0 touch no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a child ended, as `waitid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// `si_code`: `CLD_EXITED`, `CLD_KILLED` or `CLD_DUMPED`.
    pub code: i32,
    /// `si_status`: the exit code or the signal.
    pub status: i32,
}

impl Ended {
    /// The same end as the `ExitStatus` a `wait` status encodes.
    pub fn exit_status(self) -> ExitStatus {
        match self.code {
            libc::CLD_EXITED => ExitStatus::from_raw((self.status & 0xff) << 8),
            libc::CLD_DUMPED => ExitStatus::from_raw((self.status & 0x7f) | 0x80),
            _ => ExitStatus::from_raw(self.status & 0x7f),
        }
    }
}

/// `waitid(P_PIDFD, pidfd, options)` (the caller includes `WEXITED`); `None` when no child
/// changed state (with `WNOHANG`).
pub fn wait(pidfd: BorrowedFd<'_>, options: i32) -> io::Result<Option<Ended>> {
    // SAFETY: siginfo_t is plain data; zeroed means "no child changed state".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a pidfd borrowed for the call and a valid siginfo_t to fill.
    let ret = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            options,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` for a child (si_pid 0 means none changed state).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(Ended {
        code: info.si_code,
        status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_signalled_child_is_reaped_with_its_signal() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("starting sleep");
        let pidfd = crate::sys::pidfd_open(child.id() as i32).expect("pidfd_open");
        let running = wait(pidfd.as_fd(), libc::WEXITED | libc::WNOHANG).expect("waitid");
        assert_eq!(running, None, "sleep reported as ended while it runs");
        send_signal(pidfd.as_fd(), libc::SIGKILL).expect("pidfd_send_signal");
        let ended = wait(pidfd.as_fd(), libc::WEXITED).expect("waitid");
        assert_eq!(
            ended,
            Some(Ended {
                code: libc::CLD_KILLED,
                status: libc::SIGKILL
            })
        );
        // Reaped through the pidfd: std's handle has nothing left to wait for.
        drop(child);
    }
}

/// A child's exit status, reaped through its pidfd once and then remembered.
#[derive(Debug, Default)]
pub struct Reaped(Option<ExitStatus>);

impl Reaped {
    /// The status, if the child of `pidfd` has ended (reaping it the first time); with
    /// `block`, waits for it to end (again after EINTR), else `None` while it runs.
    pub fn poll(&mut self, pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.0 {
            return Ok(Some(status));
        }
        let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
        loop {
            match wait(pidfd, flags) {
                Ok(Some(ended)) => {
                    self.0 = Some(ended.exit_status());
                    return Ok(self.0);
                }
                Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
                _ if !block => return Ok(None),
                _ => {}
            }
        }
    }

    /// The status, if it was reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.0
    }
}
