//! A running jailed process: its pid, a pidfd to signal and reap it without pid-reuse
//! races, and its cgroup, removed once it is reaped.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::cgroup::{Cgroup, CgroupError, CgroupVersion};
use super::{ChildFailure, SpawnError, SpawnErrorKind, SpawnTimings};
use std::io::Read;

/// A process started by [`super::Jail::spawn`]. Dropping it kills (SIGKILL) and reaps the
/// process if it still runs, and removes its cgroup: no jailed process outlives its handle.
#[derive(Debug)]
pub struct JailedChild {
    id: String,
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Option<Cgroup>,
    reaped: crate::sys::pidfd::Reaped,
    timings: SpawnTimings,
    /// Its exec not yet confirmed ([`JailedChild::wait_exec`]).
    pending: Option<Pending>,
}

/// A child whose exec is not yet confirmed: the read end of its report pipe (end-of-file
/// once it executes, a [`ChildFailure`] if a step failed) and the program, for the error.
#[derive(Debug)]
pub(crate) struct Pending {
    pub report: OwnedFd,
    pub program: std::path::PathBuf,
}

impl JailedChild {
    pub(crate) fn new(
        id: String,
        pid: i32,
        pidfd: OwnedFd,
        cgroup: Option<Cgroup>,
        timings: SpawnTimings,
        pending: Option<Pending>,
    ) -> Self {
        JailedChild {
            id,
            pid,
            pidfd,
            cgroup,
            reaped: Default::default(),
            timings,
            pending,
        }
    }

    /// Whether its exec is still to be confirmed with [`JailedChild::wait_exec`].
    pub fn exec_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits until the program executes (at once if that is known already); a step of the
    /// child that failed is the error, and the child is then killed and reaped and its
    /// cgroup removed.
    pub fn wait_exec(&mut self) -> Result<(), SpawnError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut report = Vec::new();
        let kind = match std::fs::File::from(pending.report).read_to_end(&mut report) {
            Ok(_) if report.is_empty() => {
                self.timings.executing = super::now_ns();
                return Ok(());
            }
            Ok(_) => SpawnErrorKind::Child(ChildFailure::decode(&report)),
            Err(e) => SpawnErrorKind::Sync(e),
        };
        let _ = self.kill(libc::SIGKILL);
        if let Err(e) = self.wait() {
            log::error!("{e}");
        }
        if let Err(e) = self.cleanup() {
            log::error!("jail {}: {e}", self.id);
        }
        Err(SpawnError {
            id: self.id.clone(),
            program: pending.program,
            kind,
        })
    }

    /// When the steps of its start happened.
    pub fn timings(&self) -> SpawnTimings {
        self.timings
    }

    /// The jail's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process id, in the jailer's pid namespace (it is 1 in its own).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd (poll it for readability to learn that the process has ended).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The cgroup interface in use, `None` where the host offered no controllers.
    pub fn cgroup_version(&self) -> Option<CgroupVersion> {
        self.cgroup.as_ref().map(Cgroup::version)
    }

    /// The cgroup directories of the process (empty without a cgroup or once removed).
    pub fn cgroup_paths(&self) -> &[std::path::PathBuf] {
        self.cgroup.as_ref().map_or(&[], |c| c.paths())
    }

    /// Sends `signal` through the pidfd (no-op once reaped). Note that as pid 1 of its
    /// namespace the process receives only the signals it handles, and SIGKILL.
    pub fn kill(&self, signal: i32) -> io::Result<()> {
        if self.reaped.status().is_some() {
            return Ok(());
        }
        if let Err(e) = crate::sys::pidfd::send_signal(self.pidfd.as_fd(), signal) {
            return Err(io::Error::other(format!(
                "signalling jailed process {} ({}): {e}",
                self.pid, self.id
            )));
        }
        Ok(())
    }

    /// The exit status if the process has ended (reaping it), else `None`.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.wait_or_poll(false)
    }

    /// Waits for the process to end and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.wait_or_poll(true)?
            .ok_or_else(|| io::Error::other("waitid gave no status"))
    }

    fn wait_or_poll(&mut self, block: bool) -> io::Result<Option<ExitStatus>> {
        self.reaped.poll(self.pidfd.as_fd(), block).map_err(|e| {
            io::Error::other(format!(
                "waiting for jailed process {} ({}): {e}",
                self.pid, self.id
            ))
        })
    }

    /// Removes the cgroup; call once the process is reaped (drop does it too).
    pub fn cleanup(&mut self) -> Result<(), CgroupError> {
        match self.cgroup.take() {
            Some(mut cgroup) => cgroup.remove(),
            None => Ok(()),
        }
    }
}

/// The shell's convention for a status: the exit code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

impl Drop for JailedChild {
    fn drop(&mut self) {
        if self.reaped.status().is_none() {
            let _ = self.kill(libc::SIGKILL);
            if let Err(e) = self.wait() {
                log::error!("{e}");
            }
        }
        if let Err(e) = self.cleanup() {
            log::error!("jail {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            128 + libc::SIGSEGV
        );
    }
}
