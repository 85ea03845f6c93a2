//! A plain (`--jail off`) process: started from a `Command` by `sys::plain_child::spawn`
//! (the clone that shares the launcher's memory, not fork), watched and reaped through the
//! pidfd it was born with.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use bulkhead::sys::pidfd::Reaped;
use nix::sys::signal::Signal;

/// A running plain child of ours. Dropping it neither kills nor reaps it (as with
/// `std::process::Child`); `DeviceProcess` does both.
#[derive(Debug)]
pub(super) struct PlainChild {
    pid: u32,
    pidfd: OwnedFd,
    reaped: Reaped,
}

impl PlainChild {
    /// Starts `cmd` (its program, arguments and environment changes; nothing else of a
    /// `Command` is used) with the `(from, to)` fds placed, in a session of its own, and
    /// dying with the launcher (SIGKILL); fails if the launcher is already dying.
    pub(super) fn start(cmd: &Command, pairs: &[(RawFd, RawFd)]) -> io::Result<PlainChild> {
        let path = program_path(cmd)?;
        let path = c_string(path.as_os_str())?;
        let mut argv_strings = vec![c_string(cmd.get_program())?];
        for arg in cmd.get_args() {
            argv_strings.push(c_string(arg)?);
        }
        let envp_strings = environment(cmd)?;
        let argv = bulkhead::sys::exec_pointers(&argv_strings);
        let envp = bulkhead::sys::exec_pointers(&envp_strings);
        // SAFETY: argv and envp are null-terminated arrays of pointers into
        // `argv_strings` and `envp_strings`, which live until the call returns.
        let spawned = unsafe {
            bulkhead::sys::plain_child::spawn(
                &path,
                argv.as_ptr(),
                envp.as_ptr(),
                pairs,
                Signal::SIGKILL,
            )
        }?;
        Ok(PlainChild {
            pid: spawned.pid as u32,
            pidfd: spawned.pidfd,
            reaped: Reaped::default(),
        })
    }

    pub(super) fn id(&self) -> u32 {
        self.pid
    }

    /// A pidfd that becomes readable when it ends.
    pub(super) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How it ended, reaping it, if it has.
    pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reaped.poll(self.pidfd.as_fd(), false)
    }

    /// Waits for it to end and reaps it.
    pub(super) fn wait(&mut self) -> io::Result<ExitStatus> {
        self.reaped
            .poll(self.pidfd.as_fd(), true)?
            .ok_or_else(|| io::Error::other("waitid gave no status"))
    }
}

/// The file `cmd`'s program names: itself when it has a `/`, else the first executable of
/// that name in the `PATH` the child gets (as execvp looks, done before the clone: the
/// child may not allocate).
fn program_path(cmd: &Command) -> io::Result<PathBuf> {
    let program = cmd.get_program();
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let changed = cmd
        .get_envs()
        .find(|(key, _)| *key == OsStr::new("PATH"))
        .map(|(_, value)| value.map(OsStr::to_owned));
    let path = match changed {
        Some(value) => value,
        None => std::env::var_os("PATH"),
    }
    .unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// A regular file this process may execute (by its effective ids, as execve judges).
fn is_executable(path: &Path) -> bool {
    use nix::fcntl::AtFlags;
    use nix::unistd::{faccessat, AccessFlags};
    path.is_file()
        && faccessat(
            nix::fcntl::AT_FDCWD,
            path,
            AccessFlags::X_OK,
            AtFlags::AT_EACCESS,
        )
        .is_ok()
}

/// The launcher's environment with `cmd`'s changes (set or removed variables), as
/// `KEY=value` strings.
fn environment(cmd: &Command) -> io::Result<Vec<CString>> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => env.insert(key.to_owned(), value.to_owned()),
            None => env.remove(key),
        };
    }
    env.into_iter()
        .map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).map_err(|_| nul_error())
        })
        .collect()
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| nul_error())
}

fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a program path, argument or environment variable contains a NUL byte",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::ExitStatusExt;

    use nix::fcntl::OFlag;
    use nix::sys::signal::{pthread_sigmask, SigmaskHow};

    /// A pipe that children started meanwhile by other tests do not inherit.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
    }

    /// Runs `cmd` with its stdout on a pipe; returns what it wrote and how it ended.
    fn run(cmd: &Command, extra: &[(RawFd, RawFd)]) -> (String, ExitStatus) {
        let (read, write) = pipe();
        let mut pairs = vec![(write.as_raw_fd(), 1)];
        pairs.extend_from_slice(extra);
        let mut child = PlainChild::start(cmd, &pairs).unwrap();
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        (out, child.wait().unwrap())
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn the_child_gets_its_fds_and_arguments() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let mut cmd = sh("test -f /proc/self/fd/7 && echo \"$0 $1\"");
        cmd.args(["zero", "one"]);
        let (out, status) = run(&cmd, &[(file.as_raw_fd(), 7)]);
        assert!(status.success(), "{status:?}");
        assert_eq!(out, "zero one\n");
    }

    #[test]
    fn the_child_gets_the_launcher_s_environment_with_the_command_s_changes() {
        let mut parent: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        // One variable the launcher has is removed, one is added.
        let removed = parent.keys().next().cloned().expect("an environment");
        let mut cmd = Command::new("/usr/bin/env");
        cmd.env_remove(&removed).env("BULKHEAD_PLAIN_TEST", "given");
        parent.remove(&removed);
        parent.insert("BULKHEAD_PLAIN_TEST".into(), "given".into());
        let expected: String = parent
            .iter()
            .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        let (out, status) = run(&cmd, &[]);
        assert!(status.success(), "{status:?}");
        assert_eq!(out, expected);
    }

    #[test]
    fn the_child_has_its_own_session_no_blocked_signals_and_default_sigpipe() {
        // /proc/PID/stat's field 6 is the session; SigBlk the mask, SigIgn the ignored
        // signals (Rust ignores SIGPIPE in this test process: bit 13 must be clear there).
        // grep replaces the shell (exec) to read its own: dash blocks every signal around
        // the forks of its children, so the shell's mask read from a child would vary.
        let (out, status) = run(
            &sh("set -- $(cut -d' ' -f6 /proc/$$/stat); echo \"$$ $1\"; \
                 exec grep -E '^Sig(Blk|Ign)' /proc/self/status"),
            &[],
        );
        assert!(status.success(), "{status:?}");
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(ids[0], ids[1], "the child leads its own session: {out}");
        assert_eq!(lines.next().unwrap(), "SigBlk:\t0000000000000000", "{out}");
        let ignored = lines.next().unwrap().trim_start_matches("SigIgn:\t");
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn the_launcher_s_signal_mask_is_as_it_was() {
        let mask = || {
            let mut mask = nix::sys::signal::SigSet::empty();
            pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut mask)).unwrap();
            mask
        };
        let before = mask();
        let (_, status) = run(&sh("exit 0"), &[]);
        assert!(status.success());
        let _ = PlainChild::start(&Command::new("/nonexistent/program"), &[]).unwrap_err();
        assert_eq!(mask(), before);
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_the_error() {
        let e = PlainChild::start(&Command::new("/nonexistent/program"), &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let e = PlainChild::start(&Command::new("no-such-program-in-path"), &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let e = PlainChild::start(&Command::new("/proc/self"), &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }

    #[test]
    fn a_step_that_fails_before_exec_is_the_error_and_its_child_is_reaped() {
        // fd 9999 is not open here: placing it fails in the child.
        let mut cmd = sh("exit 0");
        cmd.arg("unused");
        let e = PlainChild::start(&cmd, &[(9999, 5)]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        // The child that failed is reaped: no zombie of this process is left. Children of
        // other tests may run meanwhile, so look for zombies only.
        let zombies = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() == Some(&"Z")
                    && fields.get(1) == Some(&std::process::id().to_string().as_str())
            })
            .count();
        assert_eq!(zombies, 0);
    }

    #[test]
    fn an_exit_status_and_a_signal_are_reported() {
        let (_, status) = run(&sh("exit 7"), &[]);
        assert_eq!(status.code(), Some(7));
        let (_, status) = run(&sh("kill -USR1 $$"), &[]);
        assert_eq!(status.signal(), Some(libc::SIGUSR1));
    }
}
