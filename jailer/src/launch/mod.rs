//! Starting the VM's processes and stopping them again: [`spawn`] is the one place where
//! bulkhead starts one, through the jailer ([`confine`]) unless `--jail off`. One file per
//! kind of process says what it is given.

mod blk;
pub mod chain;
pub mod confine;
pub mod console;
pub mod kvm_cpuid;
mod net;
mod plain;
pub mod ready;
pub mod recipe;
mod spawn;
mod stderr;
pub mod trace;
mod vmm;
pub mod vsock;

pub(crate) use spawn::spawn;
use spawn::spawn_as;

pub use blk::{open_swap_image, start_blk};
pub use chain::ImageOptions;
pub use console::start_console;
pub use net::start_net;
pub use recipe::Recipe;
pub use vmm::{start_vmm, VMM};
pub use vsock::start_vsock;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bulkhead::jail::JailedChild;
use bulkhead_protocol::{LauncherChannel, ToLauncher};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

pub use confine::{configure, confinement, Confinement, Needs};

/// The fd a backend finds its vhost-user socket on.
pub const SOCKET_FD: RawFd = 3;
/// The first fd of the resources passed to a backend (disk image, TAP queues, stream).
pub const FIRST_EXTRA_FD: RawFd = 4;
/// Most fds passed to one backend (socket and control socket included): room for a disk's
/// longest backing chain.
pub const MAX_PASSED_FDS: usize = bulkhead_devices::image::chain::MAX_CHAIN + 4;
/// How long a process gets for its handshake and to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The disk image (or console file) cannot be used once open.
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
    /// A file or socket directory the user named was refused or cannot be opened (see
    /// [`crate::safe_open`]).
    #[error("{name}: opening {what}")]
    Open {
        /// What the path is for ("disk image", "console file", "kernel").
        what: &'static str,
        /// Device name (or `vmm`).
        name: String,
        /// Why (names the path).
        #[source]
        source: crate::safe_open::SafeOpenError,
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
    /// A disk image (or a file of its backing chain) can't be served: its format, chain,
    /// size or locks (see [`chain`]).
    /// (Not a `source`: its message already holds its causes, in the devices crate's
    /// style, and a printer of causes would repeat them.)
    #[error("{name}: {error}")]
    Image {
        /// Device name.
        name: String,
        /// What is wrong (names the file).
        error: Box<chain::ImageError>,
    },
    /// The jailer could not start it.
    #[error("{name}: {source}")]
    Jail {
        /// Device name.
        name: String,
        /// What failed.
        #[source]
        source: Box<bulkhead::jail::SpawnError>,
    },
    /// It ended before saying it was confined and serving.
    #[error("{name}: {program} (pid {pid}) {how}")]
    NotReady {
        /// Device name.
        name: String,
        /// The program.
        program: String,
        /// Its pid.
        pid: u32,
        /// What happened.
        how: String,
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

/// Opens `path` (for `what` of process `name`) under the rule for paths a user names.
pub fn open_named(
    name: &str,
    what: &'static str,
    path: &Path,
    access: crate::safe_open::Access,
) -> Result<File, LaunchError> {
    crate::safe_open::open(path, access).map_err(|source| LaunchError::Open {
        what,
        name: name.to_owned(),
        source,
    })
}

/// A started process: jailed, or plain with `--jail off`.
enum Child {
    Plain(plain::PlainChild),
    Jailed(JailedChild),
}

/// A running process of the VM.
pub struct DeviceProcess {
    /// Device name (`disk0`, or `vmm`).
    pub name: String,
    /// Program name for messages.
    pub program: String,
    /// Whether its failure was already reported to the user.
    pub reported: bool,
    child: Child,
    heard: stderr::Heard,
    /// Its reports (`--control-fd`), for a backend.
    control: Option<LauncherChannel>,
    /// Whether it said it is confined and serving.
    pub ready: bool,
    /// Whether the control socket's handshake is done (it is done when the process first
    /// speaks, so that starting one process never waits for another).
    shaken: bool,
    /// Whether the supervisor watches for its end (it stops once it dealt with it).
    pub watched: bool,
    /// Whether its end was dealt with (its device given up, the VM going on): not a
    /// failure of the VM.
    pub settled: bool,
    /// The RLIMIT_FSIZE it was given (`None`: none).
    file_size_limit: Option<u64>,
    /// How to start another copy (a device process bulkhead may restart).
    recipe: Option<Box<Recipe>>,
}

impl DeviceProcess {
    /// Its pid (in bulkhead's pid namespace).
    pub fn pid(&self) -> u32 {
        match &self.child {
            Child::Plain(c) => c.id(),
            Child::Jailed(c) => c.pid() as u32,
        }
    }

    /// Keeps `recipe`, from which another copy can be started.
    pub fn keep_recipe(&mut self, recipe: Recipe) {
        self.recipe = Some(Box::new(recipe));
    }

    /// Takes its recipe (for a restart), if it has one.
    pub fn take_recipe(&mut self) -> Option<Recipe> {
        self.recipe.take().map(|r| *r)
    }

    /// Its recipe, if it has one.
    pub fn recipe_mut(&mut self) -> Option<&mut Recipe> {
        self.recipe.as_deref_mut()
    }

    /// A pidfd that becomes readable when the process ends (every process has one; kept an
    /// `Option` for callers that watch any fd).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.child {
            Child::Plain(c) => Some(c.pidfd()),
            Child::Jailed(c) => Some(c.pidfd()),
        }
    }

    /// Sends it SIGKILL (if not reaped yet).
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::SIGKILL);
        }
    }

    /// Waits up to `grace` for it to end (reaping it); once ended, its cgroup is removed.
    pub fn wait_for_end(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Some(s) = self.exited() {
                break s;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Child::Jailed(c) = &mut self.child {
            if let Err(e) = c.cleanup() {
                log::warn!("{}: {e}", self.name);
            }
        }
        Some(status)
    }

    /// Asks it to stop over its control socket (`Shutdown`) and gives it `grace` to end;
    /// a refusal (any answer), no control socket or the grace period running out goes on
    /// as [`DeviceProcess::stop`] (SIGTERM, then SIGKILL). Returns how it ended.
    pub fn stop_as_asked(&mut self, grace: Duration) -> Option<ExitStatus> {
        let asked = self
            .control
            .as_mut()
            .is_some_and(|c| c.send(&bulkhead_protocol::ToProcess::Shutdown, &[]).is_ok());
        let deadline = Instant::now() + grace;
        while asked && Instant::now() < deadline {
            if let Some(status) = self.wait_for_end(Duration::ZERO) {
                return Some(status);
            }
            if self.control_answered(Duration::from_millis(5)) {
                // Ready/Exited are notes; anything else is its refusal.
                match self.control.as_mut().map(|c| c.recv()) {
                    Some(Ok((ToLauncher::Exited { .. } | ToLauncher::Ready { .. }, _))) => {}
                    Some(Ok((answer, _))) => {
                        log::info!(
                            "{}: {} answered Shutdown with {}",
                            self.name,
                            self.program,
                            crate::untrusted::sanitize(&format!("{answer:?}"))
                        );
                        break;
                    }
                    // Its end closes the socket: seen on the next round.
                    Some(Err(_)) | None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.stop()
    }

    /// Whether its control socket has something to read within `timeout`.
    fn control_answered(&self, timeout: Duration) -> bool {
        let Some(channel) = self.control.as_ref() else {
            return false;
        };
        let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        nix::poll::poll(&mut fds, timeout).is_ok_and(|n| n > 0)
    }

    /// How it ended, for messages: the exit status or signal and, for a process seccomp
    /// killed, the call it was refused.
    pub fn describe(&self, status: ExitStatus) -> String {
        let mut how = describe(status);
        if status.signal() == Some(libc::SIGSYS) {
            if let Some(v) = self.heard.violation(Duration::from_millis(500)) {
                // The report is the process's own text: defused like the rest of it.
                let text = crate::untrusted::sanitize;
                how.push_str(&format!(
                    ": seccomp refused system call {} ({}) in thread {} (role {})",
                    text(&v.name),
                    v.nr,
                    text(&v.thread),
                    text(&v.role)
                ));
            }
        }
        how
    }

    /// Waits until the process says it is confined and serving (`Ready`); an `Error` it
    /// reports, or its end, is the error. Processes without a control socket are ready.
    /// (Several at once: [`ready::wait_all`].)
    pub fn wait_ready(&mut self) -> Result<(), LaunchError> {
        while !self.advance()? {}
        Ok(())
    }

    /// Confirms that a jailed process is executing its program (the jailer started it
    /// without waiting); a step of its jail that failed is the error, named. At once for a
    /// process confirmed already or started plainly.
    pub fn executed(&mut self) -> Result<(), LaunchError> {
        if let Child::Jailed(c) = &mut self.child {
            if c.exec_pending() {
                c.wait_exec().map_err(|e| {
                    self.reported = true;
                    LaunchError::Jail {
                        name: self.name.clone(),
                        source: Box::new(e),
                    }
                })?;
                trace::mark_at(c.timings().executing, &self.name, "exec-confirmed");
            }
        }
        Ok(())
    }

    /// One step towards `Ready`, waiting (up to [`READY_TIMEOUT`]) for the process to
    /// speak: the handshake if it is not done, else one message. True once it is ready.
    pub(crate) fn advance(&mut self) -> Result<bool, LaunchError> {
        self.executed()?;
        enum Next {
            Ready,
            More,
            Failed(String),
            Ended,
        }
        let next = match self.control.as_mut() {
            None => Next::Ready,
            Some(channel) if !self.shaken => match channel.handshake() {
                Ok(()) => {
                    self.shaken = true;
                    trace::mark(&self.name, "handshake");
                    Next::More
                }
                Err(e) if e.is_timeout() => {
                    Next::Failed(format!("did not say it was ready within {READY_TIMEOUT:?}"))
                }
                Err(e) => {
                    // Its end explains it.
                    log::debug!("{}: handshake: {e}", self.name);
                    Next::Ended
                }
            },
            Some(channel) => match channel.recv() {
                Ok((ToLauncher::Ready { .. }, _)) => Next::Ready,
                Ok((ToLauncher::Error { message }, _)) => Next::Failed(format!(
                    "could not start: {}",
                    crate::untrusted::sanitize(&message)
                )),
                Ok((other, _)) => {
                    log::debug!(
                        "{}: {} before Ready",
                        self.name,
                        crate::untrusted::sanitize(&format!("{other:?}"))
                    );
                    Next::More
                }
                Err(e) if e.is_timeout() => {
                    Next::Failed(format!("did not say it was ready within {READY_TIMEOUT:?}"))
                }
                Err(_) => Next::Ended,
            },
        };
        let how = match next {
            Next::Ready => {
                if !self.ready {
                    self.ready = true;
                    trace::mark(&self.name, "ready");
                }
                return Ok(true);
            }
            Next::More => return Ok(false),
            Next::Failed(how) => how,
            Next::Ended => wait_briefly(250, || self.exited())
                .map_or_else(|| "closed its control socket".into(), |s| self.describe(s)),
        };
        Err(self.not_ready(how))
    }

    /// The error of a process that did not get to `Ready`, `how` (marked reported).
    pub(crate) fn not_ready(&mut self, how: String) -> LaunchError {
        self.reported = true;
        LaunchError::NotReady {
            name: self.name.clone(),
            program: self.program.clone(),
            pid: self.pid(),
            how,
        }
    }

    /// The launcher's end of its control socket, if it has one.
    pub(crate) fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        self.control.as_ref().map(|c| c.as_fd())
    }

    /// How it ended, if it already has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match &mut self.child {
            Child::Plain(c) => c.try_wait().ok().flatten(),
            Child::Jailed(c) => c.try_wait().ok().flatten(),
        }
    }

    /// Sends `request` (with `fds`) over its control socket and waits for the answer
    /// (any message but `Ready`/`Exited`, which are noted); for a backend with reports only.
    pub fn ask(
        &mut self,
        request: &bulkhead_protocol::ToProcess,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<ToLauncher, String> {
        let name = self.name.clone();
        let Some(channel) = self.control.as_mut() else {
            return Err(format!("{name}: no control socket to ask it over"));
        };
        channel
            .send(request, fds)
            .map_err(|e| format!("{name}: {e}"))?;
        loop {
            match channel.recv() {
                Ok((ToLauncher::Ready { .. }, _)) => {}
                Ok((ToLauncher::Exited { .. }, _)) => return Err(format!("{name} is exiting")),
                Ok((answer, _)) => return Ok(answer),
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
    }

    /// Lets it write files up to `size` bytes: RLIMIT_FSIZE, set at start to its image's
    /// size, is raised (never lowered) for a larger image swapped in. That takes
    /// CAP_SYS_RESOURCE (the process runs as another uid); without it a larger image is
    /// refused, since writes past the limit would kill the process (SIGXFSZ).
    pub fn allow_file_size(&mut self, size: u64) -> Result<(), String> {
        let Some(limit) = self.file_size_limit.filter(|&l| l < size) else {
            return Ok(());
        };
        // Our own unreaped child, so the pid is still its.
        if let Err(e) = bulkhead::sys::set_file_size_limit(self.pid() as i32, size) {
            return Err(format!(
                "{}: the new image is {size} bytes, larger than the {limit} bytes {} may \
                 write (RLIMIT_FSIZE), and raising that limit failed: {}",
                self.name, self.program, e
            ));
        }
        self.file_size_limit = Some(size);
        if let Some(recipe) = self.recipe.as_deref_mut() {
            recipe.allow_file_size(size);
        }
        Ok(())
    }

    fn signal(&self, signal: Signal) {
        match &self.child {
            Child::Plain(c) => {
                let _ = bulkhead::sys::pidfd::send_signal(c.pidfd(), signal as i32);
            }
            Child::Jailed(c) => {
                let _ = c.kill(signal as i32);
            }
        }
    }

    /// Asks it to stop (SIGTERM), then kills it after a grace period; returns how it ended,
    /// and logs it (info: the order in which a VM's processes stopped, which tests check).
    /// A jailed process's cgroup is removed once it is reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut how = "on its own";
        let status = self.exited().or_else(|| {
            how = "on SIGTERM";
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Some(s) = self.exited() {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            how = "on SIGKILL after the grace period";
            self.signal(Signal::SIGKILL);
            match &mut self.child {
                Child::Plain(c) => c.wait().ok(),
                Child::Jailed(c) => c.wait().ok(),
            }
        });
        let ended = status.map_or_else(|| "could not be reaped".to_owned(), describe);
        log::info!(
            "{}: {} (pid {}) stopped {how}: {ended}",
            self.name,
            self.program,
            self.pid()
        );
        if let Child::Jailed(c) = &mut self.child {
            if let Err(e) = c.cleanup() {
                log::warn!("{}: {e}", self.name);
            }
        }
        status
    }
}

/// Calls `f` up to `attempts` times, 2 ms apart, until it gives an answer.
pub fn wait_briefly<T>(attempts: u32, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..attempts {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
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
        libc::SIGXFSZ => "SIGXFSZ",
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

#[cfg(test)]
mod tests {
    use super::spawn::spawn_with;
    use super::*;
    use std::os::fd::OwnedFd;
    use std::process::Command;

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
            "test -S /proc/self/fd/3 && test -f /proc/self/fd/4 && ! test -e /proc/self/fd/5 \
             && test \"$(readlink /proc/self/fd/0)\" = /dev/null",
        ]);
        let plain = Confinement {
            jail: false,
            ..Confinement::default()
        };
        let (mut process, _sock) = spawn_with(
            "test0",
            cmd,
            vec![OwnedFd::from(file)],
            false,
            &Needs::default(),
            &plain,
        )
        .unwrap();
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
    fn a_backend_that_ends_before_ready_is_named_with_how() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken >&2; exit 3"]);
        let plain = Confinement {
            jail: false,
            ..Confinement::default()
        };
        let needs = Needs {
            reports: true,
            ..Needs::default()
        };
        let (mut process, _sock) = spawn_with("disk9", cmd, vec![], false, &needs, &plain).unwrap();
        let e = process.wait_ready().unwrap_err().to_string();
        assert!(
            e.starts_with("disk9: sh (pid ") && e.ends_with("exited with status 3"),
            "{e}"
        );
        assert!(!process.ready);
    }

    #[test]
    fn a_process_that_ignores_the_stop_request_is_killed_after_the_grace_period() {
        // No control socket to ask over (a child without the launcher protocol) and
        // SIGTERM ignored: it goes on as `stop` does, SIGKILL after STOP_GRACE.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        let plain = Confinement {
            jail: false,
            ..Confinement::default()
        };
        let (mut process, _sock) =
            spawn_with("disk8", cmd, vec![], false, &Needs::default(), &plain).unwrap();
        assert!(
            process.pidfd().is_some(),
            "a plain child has a pidfd to watch"
        );
        // Time for the shell to set its trap.
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let status = process.stop_as_asked(Duration::from_secs(30)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let took = started.elapsed();
        assert!(took >= STOP_GRACE && took < STOP_GRACE * 3, "{took:?}");
    }

    #[test]
    fn missing_image_is_named() {
        let e = start_blk(
            "disk0",
            Path::new("/nonexistent/d.img"),
            ImageOptions {
                readonly: false,
                format: None,
                lock: true,
            },
            None,
            1,
            false,
        )
        .err();
        assert!(matches!(e, Some(LaunchError::Open { .. })), "{e:?}");
        let msg = e.map(|e| crate::run::chain(&e)).unwrap_or_default();
        assert!(
            msg.contains("disk0: opening disk image: /nonexistent/d.img"),
            "{msg}"
        );
    }
}
