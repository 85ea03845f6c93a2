//! Starting `bulkhead-firecracker` in the jail and watching it: its command line with the
//! API socket and config file inside the chroot, the network namespace, cgroup and rlimits
//! applied between fork and exec, `--daemonize` (a new session, stdio on /dev/null), and
//! the jailer staying its parent to forward SIGTERM/SIGINT/SIGHUP and remove what it made.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::args::{JailerArgs, Rlimit, EXEC_NAME};
use super::cgroup::FcCgroup;
use super::chroot::Chroot;

/// Firecracker's default API socket, inside the chroot.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// How long a forwarded signal may take to end the program before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// The variables the jailed program keeps from the jailer's environment.
const KEPT_ENV: &[&str] = &["PATH", "RUST_LOG"];

/// Runs the jail to its end; the program's exit status (128 + signal if killed).
pub fn run(args: &JailerArgs) -> Result<i32, String> {
    let exec = std::fs::canonicalize(&args.exec_file).map_err(|e| {
        format!(
            "Failed to canonicalize path {}: {e}",
            args.exec_file.display()
        )
    })?;
    if let Some(path) = &args.netns {
        join_netns(path)?;
    }
    let mut chroot = Chroot::prepare(args)?;
    let fc_args = fc_args(args, &mut chroot)?;
    let parent = args
        .parent_cgroup
        .clone()
        .unwrap_or_else(|| EXEC_NAME.to_owned());
    let mut cgroup = match FcCgroup::create(&parent, &args.id, args.cgroup_version, &args.cgroups) {
        Ok(c) => c,
        Err(e) => {
            chroot.clean();
            return Err(e);
        }
    };
    let result = scratch_dir(&args.id).and_then(|tmp| {
        let r = start_and_wait(args, &exec, fc_args, &mut chroot, cgroup.as_ref(), &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        r
    });
    if let Some(c) = cgroup.as_mut() {
        c.remove();
    }
    chroot.clean();
    result
}

/// Firecracker's arguments with the paths it opens at start made host paths in the chroot.
fn fc_args(args: &JailerArgs, chroot: &mut Chroot) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    let mut it = args.fc_args.iter();
    let mut api_sock = None;
    let no_api = args.fc_args.iter().any(|a| a == "--no-api");
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "--api-sock" || a == "--config-file" || a == "--metadata" {
            let Some(v) = it.next() else { break };
            if a == "--api-sock" {
                api_sock = Some(PathBuf::from(v));
            }
            out.push(chroot.resolve(Path::new(v)).into_os_string());
        }
    }
    if !no_api {
        let sock = match api_sock {
            Some(s) => s,
            None => {
                out.push("--api-sock".into());
                out.push(chroot.resolve(Path::new(DEFAULT_API_SOCK)).into_os_string());
                PathBuf::from(DEFAULT_API_SOCK)
            }
        };
        chroot.make_parents(&sock, args.uid, args.gid)?;
        chroot.remove_at_end(&sock);
    }
    Ok(out)
}

fn start_and_wait(
    args: &JailerArgs,
    exec: &Path,
    fc_args: Vec<OsString>,
    chroot: &mut Chroot,
    cgroup: Option<&FcCgroup>,
    tmp: &Path,
) -> Result<i32, String> {
    let procs: Vec<File> = cgroup
        .map(|c| c.procs())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            File::options()
                .write(true)
                .open(p)
                .map_err(|e| format!("opening {}: {e}", p.display()))
        })
        .collect::<Result<_, _>>()?;
    if args.daemonize {
        daemonize()?;
    }
    let signals = block_signals()?;
    let mut cmd = Command::new(exec);
    cmd.args(&fc_args)
        .current_dir(chroot.root())
        .env_clear()
        .env("TMPDIR", tmp)
        .env(crate::firecracker::jailed::CHROOT_ENV, chroot.root())
        .env(
            crate::firecracker::jailed::OPEN_AS_ENV,
            format!("{}:{}", args.uid, args.gid),
        );
    for name in KEPT_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let limits: Vec<(Resource, u64)> = args
        .rlimits
        .iter()
        .map(|r| match *r {
            Rlimit::Fsize(n) => (Resource::RLIMIT_FSIZE, n),
            Rlimit::NoFile(n) => (Resource::RLIMIT_NOFILE, n),
        })
        .collect();
    // SAFETY: between fork and exec only async-signal-safe system calls run (prctl,
    // sigprocmask, write, setrlimit, through nix's allocation-free wrappers) on fds and
    // values prepared before the fork; the cgroup files stay open until after the spawn,
    // so the borrowed fds are valid; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            for &fd in &procs_fds {
                // "0": the writing process itself joins the cgroup.
                if nix::unistd::write(BorrowedFd::borrow_raw(fd), b"0")? != 1 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
            }
            for &(resource, n) in &limits {
                setrlimit(resource, n, n)?;
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("Failed to exec into {}: {e}", exec.display()))?;
    drop(procs);
    if args.new_pid_ns {
        if let Err(e) = chroot.write_pid(child.id()) {
            terminate(&mut child);
            return Err(e);
        }
    }
    Ok(supervise(&mut child, &signals))
}

/// The jailed program's `TMPDIR` (its private directory and the launcher's live there),
/// removed with everything in it at the end, even if the program was killed. Mode 0711:
/// the launcher binds its socket in a directory of the jail identity's inside it.
fn scratch_dir(id: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("bulkhead-jailer-{id}-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `--netns PATH`: the jailer joins it (as Firecracker's does), so everything it starts is
/// there; the TAPs named in API requests are opened in it.
fn join_netns(path: &Path) -> Result<(), String> {
    let ns =
        File::open(path).map_err(|e| format!("Failed to open netns {}: {e}", path.display()))?;
    // The jailer has a single thread, so the whole process moves.
    if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
        return Err(format!(
            "Failed to join netns {}: {} (not a network namespace?)",
            path.display(),
            std::io::Error::from(e)
        ));
    }
    Ok(())
}

/// `--daemonize`: a new session, stdio on /dev/null.
fn daemonize() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {}", std::io::Error::from(e)))?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {e}"))?;
    for dup in [
        nix::unistd::dup2_stdin,
        nix::unistd::dup2_stdout,
        nix::unistd::dup2_stderr,
    ] {
        dup(&null).map_err(|e| format!("dup2 /dev/null: {}", std::io::Error::from(e)))?;
    }
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGHUP (to be forwarded); the set, for `sigtimedwait`.
fn block_signals() -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    // Changes only this thread's mask (the jailer's only thread).
    set.thread_block()
        .map_err(|e| format!("blocking signals: {}", std::io::Error::from(e)))?;
    Ok(set)
}

/// Waits for the child, forwarding the blocked signals; SIGKILL [`GRACE`] after one.
fn supervise(child: &mut Child, signals: &SigSet) -> i32 {
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        if let Some(sig) = bulkhead::sys::sigtimedwait(signals, Duration::from_millis(50)) {
            // The child is not reaped yet (try_wait saw it running), so its pid names no
            // other process.
            let _ = kill(child_pid(child), sig);
            kill_at.get_or_insert(Instant::now() + GRACE);
        }
        if kill_at.is_some_and(|t| Instant::now() > t) {
            let _ = child.kill();
        }
    }
}

/// Our child's pid, for kill(2).
fn child_pid(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}

fn terminate(child: &mut Child) {
    // As in `supervise`: our unreaped child.
    let _ = kill(child_pid(&*child), Signal::SIGTERM);
    let _ = child.wait();
}
