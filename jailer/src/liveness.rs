//! Whether a launcher is still running, told by something its name cannot fake: each
//! launcher (as root) holds an exclusive lock on `/run/bulkhead/launcher-<pid>.lock` for
//! its whole life ([`LauncherLock`]), taken before it makes anything named
//! `bulkhead-<pid>-…`. The kernel releases the lock when the launcher dies, however it
//! dies, so "someone holds it" means "that launcher is running", whatever its binary is
//! called and whoever has its pid since.
//!
//! The lock file is close-on-exec and never passed to a jailed process: the VM's processes
//! die with their launcher (parent-death signal), and a process that lingered a moment
//! keeps its cgroup from being removed anyway (rmdir fails while it has members), so
//! nothing is gained by letting children hold it; and a compromised process holding it
//! could keep its launcher's leftovers from ever being reaped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::run_dir::{self, RunDirError, RUN_DIR};

/// How long taking our own lock may wait for a reaper that is removing a dead launcher's
/// file of the same name (it holds that lock only while it unlinks the file).
const TAKE_PATIENCE: Duration = Duration::from_secs(2);
/// The error of a process start time read from /proc (seconds of boot time, in whole
/// seconds, plus clock ticks).
const START_TIME_SLACK: Duration = Duration::from_secs(2);

/// The lock file of launcher `pid` in `dir`.
fn lock_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("launcher-{pid}.lock"))
}

/// This launcher's lock, held until it is dropped (then its file is removed) or the
/// process ends (then the next launcher's reaper removes it).
pub struct LauncherLock {
    /// Holds the lock while open.
    _file: File,
    path: PathBuf,
}

impl LauncherLock {
    /// Takes this process's lock in [`RUN_DIR`].
    pub fn take() -> Result<LauncherLock, RunDirError> {
        LauncherLock::take_in(Path::new(RUN_DIR), std::process::id())
    }

    fn take_in(dir: &Path, pid: u32) -> Result<LauncherLock, RunDirError> {
        run_dir::ensure_dir(dir)?;
        let path = lock_path(dir, pid);
        let deadline = std::time::Instant::now() + TAKE_PATIENCE;
        loop {
            let file = run_dir::open_lock(&path)?;
            // A reaper may hold the file of a dead launcher that had our pid, to remove it:
            // try again on the file that replaces it.
            if run_dir::try_lock(&file, &path)? && run_dir::still_linked(&file, &path) {
                return Ok(LauncherLock { _file: file, path });
            }
            if std::time::Instant::now() >= deadline {
                return Err(RunDirError::Io {
                    what: "taking the launcher lock",
                    path,
                    source: io::Error::from_raw_os_error(libc::EWOULDBLOCK),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LauncherLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody takes a lock on a file about to go.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether launcher `pid` is running. `made` is when the resource in question was made
/// (its modification time), used only for a launcher without a lock file.
pub fn is_running(pid: u32, made: Option<SystemTime>) -> bool {
    is_running_in(Path::new(RUN_DIR), pid, made)
}

fn is_running_in(dir: &Path, pid: u32, made: Option<SystemTime>) -> bool {
    lock_says_in(dir, pid).unwrap_or_else(|| without_lock(pid, made))
}

/// What launcher `pid`'s lock file says: running (`Some(true)`: held, or unreadable, so
/// that what it made is kept) or gone (`Some(false)`); `None` when it has no lock file
/// (then [`without_lock`] tells, resource by resource).
pub fn lock_says(pid: u32) -> Option<bool> {
    lock_says_in(Path::new(RUN_DIR), pid)
}

fn lock_says_in(dir: &Path, pid: u32) -> Option<bool> {
    let path = lock_path(dir, pid);
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        // Held by someone: the launcher is alive. Taken: it is gone (the lock drops with
        // the file here).
        Ok(file) => Some(!run_dir::try_lock(&file, &path).unwrap_or(false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        // Cannot tell: keep what it made.
        Err(e) => {
            log::warn!("{}: {e}", path.display());
            Some(true)
        }
    }
}

/// A launcher with no lock file (one older than the lock, or whose file someone removed):
/// running if its pid is, unless that process started after the resource was made (the
/// pid was reused: it cannot be the maker).
pub fn without_lock(pid: u32, made: Option<SystemTime>) -> bool {
    let Some(started) = start_time(pid) else {
        return false;
    };
    match made {
        Some(made) => started <= made + START_TIME_SLACK,
        None => true,
    }
}

/// When process `pid` started (wall-clock), if it exists.
fn start_time(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name (which may hold spaces); starttime is field 22,
    // the 20th after the name.
    let (_, rest) = stat.rsplit_once(')')?;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|&hz| hz > 0)?;
    let since_boot = Duration::from_millis(ticks.checked_mul(1000)? / hz);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

/// Removes the lock files of launchers that are gone; returns how many.
pub fn remove_dead_locks() -> usize {
    remove_dead_locks_in(Path::new(RUN_DIR))
}

fn remove_dead_locks_in(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_lock = name
            .strip_prefix("launcher-")
            .and_then(|n| n.strip_suffix(".lock"))
            .is_some_and(|pid| pid.parse::<u32>().is_ok());
        if !is_lock {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        // Removed while we hold its lock: a launcher taking it meanwhile sees the file
        // gone and takes a new one (LauncherLock::take_in).
        if run_dir::try_lock(&file, &path).unwrap_or(false)
            && run_dir::still_linked(&file, &path)
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::tests::scratch;

    /// A pid above pid_max: no process has it.
    const NO_PROCESS: u32 = u32::MAX;

    #[test]
    fn a_held_lock_means_running_whatever_the_process_is_called() {
        let dir = scratch("liveness");
        // This test process is not called bulkhead; while it holds the lock of some pid,
        // that launcher runs, even with no process of that pid at all.
        let lock = LauncherLock::take_in(&dir, NO_PROCESS).unwrap();
        let alive = is_running_in(&dir, NO_PROCESS, None);
        // A second launcher with the same pid cannot take it.
        let second = LauncherLock::take_in(&dir, NO_PROCESS);
        drop(lock);
        let file_removed = !lock_path(&dir, NO_PROCESS).exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(alive);
        assert!(second.is_err());
        assert!(file_removed, "a dropped lock removes its file");
    }

    #[test]
    fn an_unheld_lock_means_gone_even_when_the_pid_runs() {
        let dir = scratch("liveness-dead");
        run_dir::ensure_dir(&dir).unwrap();
        // A launcher that died: its file stays, nobody holds it. Its pid now belongs to a
        // process that runs (this one): the lock still says gone.
        let me = std::process::id();
        std::fs::write(lock_path(&dir, me), b"").unwrap();
        let gone = !is_running_in(&dir, me, Some(SystemTime::now()));
        let held = LauncherLock::take_in(&dir, NO_PROCESS).unwrap();
        let removed = remove_dead_locks_in(&dir);
        let dead_left = lock_path(&dir, me).exists();
        let live_left = lock_path(&dir, NO_PROCESS).exists();
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(gone);
        assert_eq!(removed, 1);
        assert!(!dead_left, "the dead launcher's lock file is removed");
        assert!(live_left, "a held lock file is kept");
    }

    #[test]
    fn without_a_lock_file_the_pid_and_its_start_time_decide() {
        let dir = scratch("liveness-none");
        let me = std::process::id();
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        // No such process: gone.
        assert!(!is_running_in(&dir, NO_PROCESS, None));
        // Running, and started before the resource was made: may be its maker.
        assert!(is_running_in(&dir, me, Some(SystemTime::now())));
        // Running, but started after the resource was made: the pid was reused.
        assert!(!is_running_in(&dir, me, Some(long_ago)));
        assert!(start_time(me).is_some_and(|t| t <= SystemTime::now()));
    }
}
