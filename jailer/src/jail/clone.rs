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
use std::os::fd::{OwnedFd, RawFd};

use bulkhead_seccomp::jail::{Failed, Step};

use super::fds::FdPlan;
use super::rlimits::{self, Limit};
use crate::sys::jail_child::{self as sys, Cloned};

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

/// Clones the child with `plan.flags` and a pidfd (and into its v2 cgroup); the child runs the plan and never
/// returns. Returns the child's pid (in the parent's namespace) and its pidfd.
pub(crate) fn spawn(plan: &mut ChildPlan) -> io::Result<(i32, OwnedFd)> {
    // SAFETY: the child only runs `child`, which uses the prepared plan, does not allocate
    // and never returns (it execs or leaves with `exit_now`).
    match unsafe { sys::clone3(plan.flags, plan.into_cgroup) }? {
        Cloned::Child => child(plan),
        Cloned::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

fn child(plan: &mut ChildPlan) -> ! {
    let failure = match run(plan) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let report = failure.encode();
    // The report is best effort: the parent reads end-of-file as an exec if it is lost.
    let _ = sys::write(plan.report, &report);
    sys::exit_now(127)
}

enum Never {}

/// The errno of a failed `step` as a report.
fn at(step: ChildStep) -> impl Fn(i32) -> ChildFailure {
    move |errno| ChildFailure::Child { step, errno }
}

fn run(plan: &mut ChildPlan) -> Result<Never, ChildFailure> {
    use ChildStep as S;
    sys::reset_signals().map_err(at(S::Signals))?;
    sys::die_with_parent().map_err(at(S::DeathSignal))?;
    for &tasks in &plan.cgroup_tasks {
        // "0" is this thread, the only one of this process.
        match sys::write(tasks, b"0") {
            Ok(1) => {}
            _ => return Err(at(S::Cgroup)(sys::errno())),
        }
    }
    wait_for_parent(plan)?;
    if let Some(netns) = plan.netns {
        sys::join_netns(netns).map_err(at(S::JoinNetns))?;
    }
    sys::make_mounts_private().map_err(at(S::PrivateMounts))?;
    sys::set_hostname(plan.hostname.as_bytes()).map_err(at(S::Hostname))?;
    let mut extra = [plan.report, exec_fd(&plan.exec)];
    let keep = if extra[1] >= 0 { 2 } else { 1 };
    plan.fds.place(&mut extra[..keep]).map_err(at(S::Fds))?;
    plan.report = extra[0];
    rlimits::apply(&plan.rlimits).map_err(at(S::Rlimits))?;
    if let Some(jail) = plan.in_child {
        finish(jail, extra[1]).map_err(ChildFailure::Finish)?;
    }
    let errno = match &plan.exec {
        // SAFETY: argv and envp are null-terminated arrays of pointers into
        // `plan._strings`, alive until exec.
        Exec::Path(path) => unsafe { sys::execve(path, plan.argv.as_ptr(), plan.envp.as_ptr()) },
        // SAFETY: as above, with the moved binary fd.
        Exec::Fd(_) => unsafe {
            sys::execveat_fd(extra[1], plan.argv.as_ptr(), plan.envp.as_ptr())
        },
    };
    Err(at(S::Exec)(errno))
}

fn exec_fd(exec: &Exec) -> RawFd {
    match exec {
        Exec::Fd(fd) => *fd,
        Exec::Path(_) => -1,
    }
}

/// Blocks until the parent writes its byte; end-of-file means it is gone or gave up.
fn wait_for_parent(plan: &ChildPlan) -> Result<(), ChildFailure> {
    // The child's copy of the parent's end, closed once so that end-of-file can be seen.
    sys::close(plan.sync_write);
    loop {
        match sys::read_byte(plan.sync_read) {
            Ok(Some(_)) => break,
            // Leaving quietly: the parent is gone or has given up on this child.
            Ok(None) => sys::exit_now(127),
            Err(libc::EINTR) => continue,
            Err(errno) => return Err(at(ChildStep::Sync)(errno)),
        }
    }
    // The child's read end, no longer needed.
    sys::close(plan.sync_read);
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
