//! Starting the device processes and stopping them again: the one place where bulkhead
//! spawns a backend, so confinement (the jailer) can be added here. One file per kind of
//! backend says what it is given.

mod blk;
pub mod console;
mod net;
mod vmm;

pub use blk::start_blk;
pub use console::start_console;
pub use net::start_net;
pub use vmm::{start_vmm, VMM};

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The fd a backend finds its vhost-user socket on.
pub const SOCKET_FD: RawFd = 3;
/// The first fd of the resources passed to a backend (disk image, TAP queues, stream).
pub const FIRST_EXTRA_FD: RawFd = 4;
/// Most fds passed to one backend (socket included).
pub const MAX_PASSED_FDS: usize = 16;
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
    /// The disk image (or console file) cannot be opened.
    #[error("{name}: opening {what} {path}")]
    OpenDisk {
        /// What the file is for ("disk image", "console file").
        what: &'static str,
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

/// The backend `program` for device `name`: beside the running `bulkhead`.
pub fn backend_program(name: &str, program: &str) -> Result<PathBuf, LaunchError> {
    let path = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(program)))
        .unwrap_or_else(|| PathBuf::from(program));
    if path.exists() {
        Ok(path)
    } else {
        Err(LaunchError::Missing {
            name: name.to_owned(),
            path,
        })
    }
}

/// Starts `cmd` as the backend of device `name`: its end of a new socket pair becomes fd 3
/// (`SOCKET_FD`), `fds` become 4, 5, ... in order; it dies with the launcher. Standard input
/// is inherited when `inherit_stdin`, else /dev/null. Returns the process and the vmm's end
/// of the socket.
pub(crate) fn spawn(
    name: &str,
    mut cmd: Command,
    fds: Vec<OwnedFd>,
    inherit_stdin: bool,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    if fds.len() + 1 > MAX_PASSED_FDS {
        return Err(LaunchError::Spawn {
            name: name.to_owned(),
            program: format!("{:?}", cmd.get_program()),
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        });
    }
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
    let mut pairs = vec![(theirs.as_raw_fd(), SOCKET_FD)];
    pairs.extend(
        fds.iter()
            .zip(FIRST_EXTRA_FD..)
            .map(|(f, to)| (f.as_raw_fd(), to)),
    );
    if !inherit_stdin {
        cmd.stdin(Stdio::null());
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, dup2, setsid, prctl, getppid) on fds the parent keeps open
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&pairs)?;
            // A session of its own: terminal signals (Ctrl-C) reach only the launcher,
            // which stops the processes in order.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Die with the launcher; if it is already gone, do not run at all.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() == 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(theirs);
    drop(fds);
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
    let mut temps = [0 as RawFd; MAX_PASSED_FDS];
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
    fn fds_land_where_promised() {
        // The child checks that fd 3 is a socket and fd 4 the file it was given.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "test -S /proc/self/fd/3 && test -f /proc/self/fd/4 && ! test -e /proc/self/fd/5",
        ]);
        let (mut process, _sock) = spawn("test0", cmd, vec![OwnedFd::from(file)], false).unwrap();
        let status = loop {
            if let Some(s) = process.exited() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(status.success(), "{status:?}");
        assert_eq!(process.program, "sh");
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
        assert!(matches!(e, Some(LaunchError::OpenDisk { .. })), "{e:?}");
    }
}
