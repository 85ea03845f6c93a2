//! Starting the device processes and stopping them again: the one place where bulkhead
//! spawns a backend, so confinement (the jailer) can be added here.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The fd a backend finds its vhost-user socket on.
pub const SOCKET_FD: RawFd = 3;
/// The fd a block backend finds its disk image on.
pub const DISK_FD: RawFd = 4;
/// How long a backend gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Errors while starting a device process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The backend binary is not where it should be.
    #[error(
        "{name}: backend program {path} not found (it is built and installed beside bulkhead)"
    )]
    Missing {
        /// Device name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The disk image cannot be opened.
    #[error("{name}: opening disk image {path}")]
    OpenDisk {
        /// Device name.
        name: String,
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's size cannot be served.
    #[error("{name}: disk image {path} is {size} bytes, {why}")]
    BadImage {
        /// Device name.
        name: String,
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Creating the socket pair or the process failed.
    #[error("{name}: starting {program}")]
    Spawn {
        /// Device name.
        name: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running backend process.
pub struct DeviceProcess {
    /// Device name (`disk0`).
    pub name: String,
    /// Program name for messages.
    pub program: String,
    /// Whether its failure was already reported to the user.
    pub reported: bool,
    child: Child,
}

impl DeviceProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it already has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM), then kills it after a grace period; returns how it ended.
    pub fn stop(mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped (try_wait
        // just said it is running), so the pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// Describes how a process ended, e.g. `was killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSYS => "SIGSYS",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Where the backend programs are: beside the running `bulkhead`.
pub fn backend_program(program: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(program)))
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Starts `bulkhead-blk` on the image at `path`: the launcher opens the image (so the
/// backend needs no access to the filesystem) and hands it over as fd 4, with its end of a
/// socket pair as fd 3. Returns the process and the vmm's end of the socket.
pub fn start_blk(
    name: &str,
    path: &Path,
    readonly: bool,
    serial: Option<&str>,
    queues: u16,
    direct: bool,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = backend_program("bulkhead-blk");
    if !program.exists() {
        return Err(LaunchError::Missing {
            name: name.to_owned(),
            path: program,
        });
    }
    let disk = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|source| LaunchError::OpenDisk {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    check_image_size(name, path, &disk)?;
    let mut cmd = Command::new(&program);
    cmd.args([
        "--fd",
        &SOCKET_FD.to_string(),
        "--disk-fd",
        &DISK_FD.to_string(),
    ]);
    cmd.arg("--queues").arg(queues.to_string());
    if readonly {
        cmd.arg("--read-only");
    }
    if direct {
        cmd.arg("--direct");
    }
    if let Some(s) = serial {
        cmd.args(["--serial", s]);
    }
    spawn(name, cmd, disk)
}

/// Refuses, naming the file, an image the block backend would refuse by its fd alone.
fn check_image_size(name: &str, path: &Path, mut disk: &File) -> Result<(), LaunchError> {
    use std::io::Seek;
    // Seeking to the end gives the size of block devices too.
    let size = disk
        .seek(std::io::SeekFrom::End(0))
        .and_then(|size| disk.rewind().map(|()| size))
        .map_err(|source| LaunchError::OpenDisk {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    let why = if size == 0 {
        "empty"
    } else if size % 512 != 0 {
        "not a multiple of 512 (the image must be a whole number of 512-byte sectors)"
    } else {
        return Ok(());
    };
    Err(LaunchError::BadImage {
        name: name.to_owned(),
        path: path.to_owned(),
        size,
        why,
    })
}

fn spawn(
    name: &str,
    mut cmd: Command,
    disk: File,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spawn_err = |source| LaunchError::Spawn {
        name: name.to_owned(),
        program: program.clone(),
        source,
    };
    let (ours, theirs) = UnixStream::pair().map_err(spawn_err)?;
    let (sock_fd, disk_fd) = (theirs.as_raw_fd(), disk.as_raw_fd());
    cmd.stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, dup2, prctl, getppid) on fds the parent keeps open
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&[(sock_fd, SOCKET_FD), (disk_fd, DISK_FD)])?;
            // Die with the launcher; if it is already gone, do not run at all.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() == 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(theirs);
    drop(disk);
    log::info!("{name}: started {program} (pid {})", child.id());
    Ok((
        DeviceProcess {
            name: name.to_owned(),
            program,
            reported: false,
            child,
        },
        ours,
    ))
}

/// In a forked child: makes each `(from, to)` fd available as `to`, inheritable. Goes
/// through temporary copies so that a `from` equal to another pair's `to` is not clobbered.
fn place_fds(pairs: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    const TEMP_BASE: RawFd = 100;
    let mut temps = [0 as RawFd; 4];
    if pairs.len() > temps.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (i, (from, _)) in pairs.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open fd; no memory is touched.
        let t = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, TEMP_BASE) };
        if t < 0 {
            return Err(std::io::Error::last_os_error());
        }
        temps[i] = t;
    }
    for (i, (_, to)) in pairs.iter().enumerate() {
        // SAFETY: dup2 between open fds of this (child) process; the new fd does not have
        // FD_CLOEXEC, so it survives exec.
        if unsafe { libc::dup2(temps[i], *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_exits() {
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }

    #[test]
    fn missing_image_is_named() {
        let e = start_blk(
            "disk0",
            Path::new("/nonexistent/d.img"),
            false,
            None,
            1,
            false,
        )
        .err();
        if let Some(LaunchError::OpenDisk { path, .. }) = e {
            assert_eq!(path, Path::new("/nonexistent/d.img"));
        }
    }
}
