//! The jailer's child, between clone and exec.
//!
//! Everything the child needs is prepared by the parent in a [`ChildPlan`] before
//! `clone3`, because the child of a multi-threaded parent may not allocate or take locks
//! (another thread may have held them at the time of the clone). The child only makes
//! syscalls on that plan, in this order: default signal mask and SIGPIPE, die with the
//! parent, enter its cgroup (v1: "0" into each `tasks`; on v2 it was born there), wait for
//! the parent's go (end-of-file: the parent is gone), join a network namespace, make
//! mounts private, set the hostname, place fds, set rlimits, optionally finish the jail
//! itself (empty root, identity, landlock), exec. A failure is written to a report pipe
//! (close-on-exec, so a successful exec reads as end-of-file) as a step and an errno.

use std::ffi::{c_char, CString};
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use bulkhead_seccomp::jail::{Failed, Step};

use super::fds::FdPlan;
use super::rlimits::{self, Limit};

/// What the child executes.
pub(crate) enum Exec {
    /// execve of a path: the program finishes its own jail.
    Path(CString),
    /// execveat of a file opened before the jail (a static binary; the child finishes).
    Fd(RawFd),
}

/// The jail steps the child applies to itself in `Finish::InChild` mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InChild {
    pub uid: u32,
    pub gid: u32,
    pub landlock: bool,
}

/// Everything the child uses, prepared before clone.
pub(crate) struct ChildPlan {
    /// Namespace clone flags.
    pub flags: u64,
    /// The network namespace to join.
    pub netns: Option<RawFd>,
    /// v2: the cgroup directory to be born in (`CLONE_INTO_CGROUP`).
    pub into_cgroup: Option<RawFd>,
    /// v1: the `tasks` file of each hierarchy, which the child writes "0" to.
    pub cgroup_tasks: Vec<RawFd>,
    /// Read end of the pipe the parent writes one byte to once the child may go on.
    pub sync_read: RawFd,
    /// The parent's end, which the child closes.
    pub sync_write: RawFd,
    /// Write end of the report pipe.
    pub report: RawFd,
    pub fds: FdPlan,
    pub rlimits: [Option<Limit>; 3],
    pub hostname: CString,
    pub exec: Exec,
    pub in_child: Option<InChild>,
    /// Null-terminated pointers into `strings`.
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    /// Owns what argv and envp point to.
    pub _strings: Vec<CString>,
}

/// A step of the child that can fail, besides the jail's own ([`Step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStep {
    /// Restoring the signal mask and SIGPIPE.
    Signals,
    /// PR_SET_PDEATHSIG.
    DeathSignal,
    /// Waiting for the parent.
    Sync,
    /// setns into the network namespace.
    JoinNetns,
    /// Making mounts private.
    PrivateMounts,
    /// sethostname.
    Hostname,
    /// Placing and closing fds.
    Fds,
    /// setrlimit.
    Rlimits,
    /// The exec itself.
    Exec,
    /// Entering its v1 cgroups.
    Cgroup,
}

impl ChildStep {
    const ALL: [ChildStep; 10] = [
        ChildStep::Signals,
        ChildStep::DeathSignal,
        ChildStep::Sync,
        ChildStep::JoinNetns,
        ChildStep::PrivateMounts,
        ChildStep::Hostname,
        ChildStep::Fds,
        ChildStep::Rlimits,
        ChildStep::Exec,
        ChildStep::Cgroup,
    ];

    fn name(self) -> &'static str {
        match self {
            ChildStep::Signals => "restoring signal handling",
            ChildStep::DeathSignal => "setting the parent-death signal",
            ChildStep::Sync => "waiting for the jailer",
            ChildStep::JoinNetns => "joining the network namespace",
            ChildStep::PrivateMounts => "making all mounts private",
            ChildStep::Hostname => "setting the hostname",
            ChildStep::Fds => "placing and closing fds",
            ChildStep::Rlimits => "setting rlimits",
            ChildStep::Exec => "executing the program",
            ChildStep::Cgroup => "entering its cgroup",
        }
    }
}

/// What the child reported before exiting instead of executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildFailure {
    /// A step of the jailer's child.
    Child {
        /// The step.
        step: ChildStep,
        /// Its errno.
        errno: i32,
    },
    /// A step of the jail it finished itself.
    Finish(Failed),
    /// A report that decodes to nothing known.
    Garbled,
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildFailure::Child { step, errno } => {
                write!(
                    f,
                    "{}: {}",
                    step.name(),
                    io::Error::from_raw_os_error(*errno)
                )
            }
            ChildFailure::Finish(failed) => failed.fmt(f),
            ChildFailure::Garbled => f.write_str("the child's failure report is garbled"),
        }
    }
}

impl std::error::Error for ChildFailure {}

const REPORT_LEN: usize = 12;

impl ChildFailure {
    fn encode(self) -> [u8; REPORT_LEN] {
        let (kind, code, errno) = match self {
            ChildFailure::Child { step, errno } => (0u32, step as u32, errno),
            ChildFailure::Finish(failed) => (1, failed.step as u32, failed.errno),
            ChildFailure::Garbled => (2, 0, 0),
        };
        let mut out = [0u8; REPORT_LEN];
        out[..4].copy_from_slice(&kind.to_ne_bytes());
        out[4..8].copy_from_slice(&code.to_ne_bytes());
        out[8..].copy_from_slice(&errno.to_ne_bytes());
        out
    }

    /// Decodes a report; anything not exactly a known report is [`ChildFailure::Garbled`].
    pub(crate) fn decode(bytes: &[u8]) -> ChildFailure {
        let Ok(bytes) = <[u8; REPORT_LEN]>::try_from(bytes) else {
            return ChildFailure::Garbled;
        };
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (kind, code, errno) = (word(0), word(4), word(8) as i32);
        match kind {
            0 => ChildStep::ALL.iter().find(|s| **s as u32 == code).map_or(
                ChildFailure::Garbled,
                |&step| ChildFailure::Child { step, errno },
            ),
            1 => Step::from_u32(code).map_or(ChildFailure::Garbled, |step| {
                ChildFailure::Finish(Failed { step, errno })
            }),
            _ => ChildFailure::Garbled,
        }
    }
}

/// `struct clone_args` of clone3(2).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones the child with `plan.flags` and a pidfd (and into its v2 cgroup); the child runs the plan and never
/// returns. Returns the child's pid (in the parent's namespace) and its pidfd.
pub(crate) fn spawn(plan: &mut ChildPlan) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: plan.flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cgroup) = plan.into_cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup as u64;
    }
    // SAFETY: a valid clone_args of the size passed; no CLONE_VM and no stack, so the child
    // runs on a copy of this stack like after fork, and only runs `child`, which never
    // returns and does not allocate.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => child(plan),
        pid => {
            // SAFETY: clone3 with CLONE_PIDFD stored a new pidfd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((pid as i32, pidfd))
        }
    }
}

fn child(plan: &mut ChildPlan) -> ! {
    let failure = match run(plan) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let report = failure.encode();
    // SAFETY: writing a stack buffer to the report pipe, then leaving without running any
    // of the parent's atexit handlers or destructors.
    unsafe {
        libc::write(plan.report, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

enum Never {}

fn run(plan: &mut ChildPlan) -> Result<Never, ChildFailure> {
    use ChildStep as S;
    // SAFETY: an empty set on the stack; the mask and SIGPIPE are reset because the jailer
    // may block or ignore signals that the program expects to receive.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        sys(
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()),
            S::Signals,
        )?;
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    sys(ret, S::DeathSignal)?;
    for &tasks in &plan.cgroup_tasks {
        // SAFETY: a `tasks` file the parent opened for writing; "0" is this thread, the
        // only one of this process.
        let n = unsafe { libc::write(tasks, c"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(last(S::Cgroup));
        }
    }
    wait_for_parent(plan)?;
    if let Some(netns) = plan.netns {
        // SAFETY: `netns` is a namespace fd opened by the parent before clone.
        let ret = unsafe { libc::setns(netns, libc::CLONE_NEWNET) };
        sys(ret, S::JoinNetns)?;
    }
    // SAFETY: changes only the propagation of this (new) mount namespace; constant strings.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    sys(ret, S::PrivateMounts)?;
    let name = plan.hostname.as_bytes();
    // SAFETY: a buffer of the length passed, in this (new) UTS namespace.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    sys(ret, S::Hostname)?;
    let mut extra = [plan.report, exec_fd(&plan.exec)];
    let keep = if extra[1] >= 0 { 2 } else { 1 };
    plan.fds
        .place(&mut extra[..keep])
        .map_err(|errno| ChildFailure::Child {
            step: S::Fds,
            errno,
        })?;
    plan.report = extra[0];
    rlimits::apply(&plan.rlimits).map_err(|errno| ChildFailure::Child {
        step: S::Rlimits,
        errno,
    })?;
    if let Some(jail) = plan.in_child {
        finish(jail, extra[1]).map_err(ChildFailure::Finish)?;
    }
    match &plan.exec {
        // SAFETY: NUL-terminated path; argv and envp are null-terminated arrays of pointers
        // into `plan.strings`, alive until exec.
        Exec::Path(path) => unsafe {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        },
        // SAFETY: as above, with the moved binary fd and an empty path (AT_EMPTY_PATH).
        Exec::Fd(_) => unsafe {
            libc::syscall(
                libc::SYS_execveat,
                extra[1],
                c"".as_ptr(),
                plan.argv.as_ptr(),
                plan.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        },
    }
    Err(last(S::Exec))
}

fn exec_fd(exec: &Exec) -> RawFd {
    match exec {
        Exec::Fd(fd) => *fd,
        Exec::Path(_) => -1,
    }
}

/// Blocks until the parent writes its byte; end-of-file means it is gone or gave up.
fn wait_for_parent(plan: &ChildPlan) -> Result<(), ChildFailure> {
    // SAFETY: the child's copy of the parent's end, closed once so that EOF can be seen.
    unsafe { libc::close(plan.sync_write) };
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte stack buffer.
        let n = unsafe { libc::read(plan.sync_read, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => break,
            // SAFETY: leaving quietly: the parent is gone or has given up on this child.
            0 => unsafe { libc::_exit(127) },
            _ if errno() == libc::EINTR => continue,
            _ => return Err(last(ChildStep::Sync)),
        }
    }
    // SAFETY: the child's read end, no longer needed.
    unsafe { libc::close(plan.sync_read) };
    Ok(())
}

/// The jail's last steps, by the child itself (for a static binary kept open in `exec_fd`).
fn finish(jail: InChild, exec_fd: RawFd) -> Result<(), Failed> {
    bulkhead_seccomp::root::enter_empty_root()?;
    bulkhead_seccomp::identity::drop_identity(jail.uid, jail.gid)?;
    if jail.landlock {
        let abi = bulkhead_seccomp::landlock::abi()?;
        bulkhead_seccomp::landlock::deny_all(abi, Some(exec_fd))?;
    }
    Ok(())
}

fn sys(ret: i32, step: ChildStep) -> Result<(), ChildFailure> {
    if ret == -1 {
        Err(last(step))
    } else {
        Ok(())
    }
}

fn last(step: ChildStep) -> ChildFailure {
    ChildFailure::Child {
        step,
        errno: errno(),
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for failure in [
            ChildFailure::Child {
                step: ChildStep::Exec,
                errno: libc::ENOENT,
            },
            ChildFailure::Finish(Failed {
                step: Step::PivotRoot,
                errno: libc::EPERM,
            }),
        ] {
            assert_eq!(ChildFailure::decode(&failure.encode()), failure);
        }
    }

    #[test]
    fn bad_reports_are_garbled() {
        assert_eq!(ChildFailure::decode(&[1, 2, 3]), ChildFailure::Garbled);
        let mut bad = ChildFailure::Child {
            step: ChildStep::Exec,
            errno: 2,
        }
        .encode();
        bad[4] = 200;
        assert_eq!(ChildFailure::decode(&bad), ChildFailure::Garbled);
        bad[0] = 7;
        assert_eq!(ChildFailure::decode(&bad), ChildFailure::Garbled);
    }

    #[test]
    fn failures_name_their_step() {
        let text = ChildFailure::Child {
            step: ChildStep::JoinNetns,
            errno: libc::EINVAL,
        }
        .to_string();
        assert!(
            text.starts_with("joining the network namespace: "),
            "{text}"
        );
    }
}
