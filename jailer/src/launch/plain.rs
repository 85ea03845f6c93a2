//! A plain (`--jail off`) process: started from a `Command` by `sys::plain_child::spawn`
//! (the clone that shares the launcher's memory, not fork), watched and reaped through the
//! pidfd it was born with.

use std::collections::BTreeMap;
use std::ffi::{c_char, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use nix::sys::signal::Signal;

/// A running plain child of ours. Dropping it neither kills nor reaps it (as with
/// `std::process::Child`); `DeviceProcess` does both.
#[derive(Debug)]
pub(super) struct PlainChild {
    pid: u32,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

impl PlainChild {
    /// Starts `cmd` (its program, arguments and environment changes; nothing else of a
    /// `Command` is used) with the `(from, to)` fds placed, in a session of its own, and
    /// dying with the launcher (SIGKILL); fails if the launcher is already dying.
    pub(super) fn start(cmd: &Command, pairs: &[(RawFd, RawFd)]) -> io::Result<PlainChild> {
        let path = program_path(cmd.get_program())?;
        let path = c_string(path.as_os_str())?;
        let mut argv_strings = vec![c_string(cmd.get_program())?];
        for arg in cmd.get_args() {
            argv_strings.push(c_string(arg)?);
        }
        let envp_strings = environment(cmd)?;
        let argv = pointers(&argv_strings);
        let envp = pointers(&envp_strings);
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
            status: None,
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
        self.wait_flags(libc::WNOHANG)
    }

    /// Waits for it to end and reaps it.
    pub(super) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.wait_flags(0)? {
                return Ok(status);
            }
        }
    }

    fn wait_flags(&mut self, flags: i32) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        match bulkhead::sys::pidfd::wait(self.pidfd.as_fd(), libc::WEXITED | flags) {
            Ok(Some(ended)) => {
                self.status = Some(ended.exit_status());
                Ok(self.status)
            }
            Ok(None) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The file `program` names: itself when it has a `/`, else the first executable of that
/// name in `PATH` (as execvp looks, done before the clone: the child may not allocate).
fn program_path(program: &OsStr) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
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

/// Null-terminated pointers to `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::ExitStatusExt;

    /// Runs `sh -c script` with its stdout on a pipe; returns what it wrote and how it
    /// ended.
    fn run_sh(script: &str, extra: &[(RawFd, RawFd)]) -> (String, ExitStatus) {
        let (read, write) = nix::unistd::pipe().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let mut pairs = vec![(write.as_raw_fd(), 1)];
        pairs.extend_from_slice(extra);
        let mut child = PlainChild::start(&cmd, &pairs).unwrap();
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        (out, child.wait().unwrap())
    }

    #[test]
    fn the_child_gets_its_fds_arguments_and_environment() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let mut cmd_env = Command::new("sh");
        cmd_env
            .env("BULKHEAD_PLAIN_TEST", "given")
            .env_remove("HOME");
        let (read, write) = nix::unistd::pipe().unwrap();
        cmd_env.args([
            "-c",
            "test -f /proc/self/fd/7 && echo \"$0 $BULKHEAD_PLAIN_TEST ${HOME-unset}\"",
            "zero",
        ]);
        let pairs = [(write.as_raw_fd(), 1), (file.as_raw_fd(), 7)];
        let mut child = PlainChild::start(&cmd_env, &pairs).unwrap();
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(out, "zero given unset\n");
    }

    #[test]
    fn the_child_has_its_own_session_no_blocked_signals_and_default_sigpipe() {
        // /proc/self/stat's field 6 is the session; SigBlk the mask, SigIgn the ignored
        // signals (Rust ignores SIGPIPE in the launcher: bit 13 must be clear here).
        let (out, status) = run_sh(
            "set -- $(cut -d' ' -f6 /proc/$$/stat); echo \"$$ $1\"; \
             grep -E '^Sig(Blk|Ign)' /proc/$$/status",
            &[],
        );
        assert!(status.success(), "{status:?}");
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(ids[0], ids[1], "the child leads its own session: {out}");
        assert_eq!(lines.next().unwrap(), "SigBlk:\t0000000000000000", "{out}");
        let ignored =
            u64::from_str_radix(lines.next().unwrap().trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
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
    fn an_exit_status_and_a_signal_are_reported() {
        let (_, status) = run_sh("exit 7", &[]);
        assert_eq!(status.code(), Some(7));
        let (_, status) = run_sh("kill -USR1 $$", &[]);
        assert_eq!(status.signal(), Some(libc::SIGUSR1));
    }
}
