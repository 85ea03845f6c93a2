//! The jailer: starts a program confined, in the manner of Firecracker's jailer.
//!
//! [`Jail::spawn`] clones a child into new mount, PID, IPC and UTS namespaces and a network
//! namespace ([`NetNs`]), tied to the jailer's life (PR_SET_PDEATHSIG), placed in a cgroup
//! with limits where the host offers one ([`cgroup`]), with only the fds it is given
//! ([`fds`]), rlimits ([`Rlimits`]), hostname `bulkhead` and only the environment it is
//! given, and executes the program. The rest of the jail (an empty root, an unprivileged
//! identity, landlock) is applied by:
//! - the program itself, [`Finish::ByProgram`]: ours are dynamically linked and open their
//!   resources first, then call `bulkhead_seccomp::jail::finish_jail` (pass it
//!   [`Jail::finish_flags`]);
//! - the child before exec, [`Finish::InChild`], for a foreign static binary, which is
//!   opened before the pivot and executed from its fd.

pub mod cgroup;
mod child;
mod clone;
mod fds;
mod netns;
mod rlimits;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bulkhead_seccomp::jail::JailArgs;
use bulkhead_seccomp::landlock::LandlockMode;

pub use cgroup::{CgroupEntry, CgroupError, CgroupLimits, CgroupVersion};
pub use child::{exit_code, JailedChild};
pub use clone::{ChildFailure, ChildStep};
pub use fds::FdPlanError;
pub use netns::{NetNs, NetNsError};
pub use rlimits::Rlimits;

/// Who applies the jail's last steps (empty root, identity, landlock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Finish {
    /// The program, after opening its resources (`finish_jail`).
    #[default]
    ByProgram,
    /// The child, before executing a static binary from an fd.
    InChild,
}

/// What a jailed process gets.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Names the jail: its cgroup `bulkhead/<id>`, and errors. Letters, digits, `-`, `_`.
    pub id: String,
    /// The unprivileged uid it runs as (not 0).
    pub uid: u32,
    /// The unprivileged gid it runs as (not 0).
    pub gid: u32,
    /// Its network namespace.
    pub netns: NetNs,
    /// Its cgroup limits.
    pub cgroup: CgroupLimits,
    /// Where the cgroup filesystems are ([`cgroup::CGROUP_ROOT`]).
    pub cgroup_root: PathBuf,
    /// How the process gets into its cgroup.
    pub cgroup_entry: CgroupEntry,
    /// Its rlimits.
    pub rlimits: Rlimits,
    /// Who finishes the jail.
    pub finish: Finish,
    /// Landlock, for [`Finish::InChild`] (a program is told by [`Jail::finish_flags`]).
    pub landlock: LandlockMode,
    /// The hostname in its UTS namespace.
    pub hostname: String,
}

impl Jail {
    /// A jail with a new empty network namespace, no limits, finished by the program.
    pub fn new(id: &str, uid: u32, gid: u32) -> Jail {
        Jail {
            id: id.to_string(),
            uid,
            gid,
            netns: NetNs::New,
            cgroup: CgroupLimits::default(),
            cgroup_root: PathBuf::from(cgroup::CGROUP_ROOT),
            cgroup_entry: CgroupEntry::Born,
            rlimits: Rlimits::default(),
            finish: Finish::ByProgram,
            landlock: LandlockMode::Enforce,
            hostname: "bulkhead".to_string(),
        }
    }

    /// The flags telling a program that finishes its own jail ([`Finish::ByProgram`]) which
    /// identity to take and whether to enforce landlock.
    pub fn finish_flags(&self) -> Vec<String> {
        JailArgs {
            jail_uid: Some(self.uid),
            jail_gid: Some(self.gid),
            landlock: self.landlock,
        }
        .to_flags()
    }

    /// Starts `program` with `args` (argv[1..]; argv[0] is its file name) in this jail,
    /// keeping only the fds in `fds` as (fd here, fd number in the child) pairs (include
    /// (0, 0), (1, 1), (2, 2) to keep stdio) and only the environment in `env`. Returns once
    /// the program is executing, or with the step that failed.
    ///
    /// Needs root (CAP_SYS_ADMIN and friends). Call it from a thread that lives as long as
    /// the child, such as the main thread: the parent-death signal follows the thread that
    /// cloned, not the process. Safe to call from a multi-threaded process: the child
    /// allocates nothing between clone and exec.
    pub fn spawn(
        &self,
        program: &Path,
        args: &[OsString],
        fds: &[(RawFd, RawFd)],
        env: &[(OsString, OsString)],
    ) -> Result<JailedChild, SpawnError> {
        let mut child = self.start(program, args, fds, env)?;
        child.wait_exec()?;
        Ok(child)
    }

    /// [`Jail::spawn`] without waiting for the exec: returns once the child is cloned (in
    /// its cgroup, going on by itself), so that a launcher can start the next process
    /// meanwhile. [`JailedChild::wait_exec`] says whether the program is executing or which
    /// step failed (a failed child is killed and reaped there, or when the handle drops).
    pub fn start(
        &self,
        program: &Path,
        args: &[OsString],
        fds: &[(RawFd, RawFd)],
        env: &[(OsString, OsString)],
    ) -> Result<JailedChild, SpawnError> {
        let err = |kind| SpawnError {
            id: self.id.clone(),
            program: program.to_path_buf(),
            kind,
        };
        self.check().map_err(err)?;
        let mut timings = SpawnTimings {
            start: now_ns(),
            ..SpawnTimings::default()
        };
        let mut cgroup = cgroup::Cgroup::create(&self.cgroup_root, &self.id, &self.cgroup)
            .map_err(|e| err(SpawnErrorKind::Cgroup(e)))?;
        timings.cgroup_made = now_ns();
        let (born, moved) = match self.cgroup_entry {
            CgroupEntry::Born => (cgroup.as_ref(), None),
            CgroupEntry::Moved => (None, cgroup.as_ref()),
        };
        let started = Prepared::new(self, program, args, fds, env, born)
            .and_then(|prepared| prepared.start(moved, &mut timings));
        match started {
            Ok((pid, pidfd, report)) => {
                log::info!(
                    "jail {}: {} started as pid {pid}",
                    self.id,
                    program.display()
                );
                Ok(JailedChild::new(
                    self.id.clone(),
                    pid,
                    pidfd,
                    cgroup,
                    timings,
                    Some(child::Pending {
                        report,
                        program: program.to_path_buf(),
                    }),
                ))
            }
            Err(kind) => {
                if let Some(cgroup) = cgroup.as_mut() {
                    if let Err(e) = cgroup.remove() {
                        log::error!("jail {}: {e}", self.id);
                    }
                }
                Err(err(kind))
            }
        }
    }

    fn check(&self) -> Result<(), SpawnErrorKind> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(SpawnErrorKind::BadId);
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(SpawnErrorKind::Privileged);
        }
        Ok(())
    }
}

/// Why a jailed process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("jail {id}: starting {}: {kind}", program.display())]
pub struct SpawnError {
    /// The jail's id.
    pub id: String,
    /// The program.
    pub program: PathBuf,
    /// What went wrong.
    #[source]
    pub kind: SpawnErrorKind,
}

/// What went wrong starting a jailed process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnErrorKind {
    /// The id is not a safe path component.
    #[error("the id must be 1 to 64 letters, digits, '-' or '_'")]
    BadId,
    /// uid or gid 0.
    #[error("uid and gid must be unprivileged (not 0)")]
    Privileged,
    /// An argument, variable or hostname holds a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// The fd pairs.
    #[error(transparent)]
    Fds(#[from] FdPlanError),
    /// The network namespace.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// The static binary could not be opened.
    #[error("opening the program: {0}")]
    Open(#[source] io::Error),
    /// A pipe to the child could not be made.
    #[error("creating a pipe to the child: {0}")]
    Pipe(#[source] io::Error),
    /// The cgroup.
    #[error(transparent)]
    Cgroup(CgroupError),
    /// clone3 failed.
    #[error("clone3 into new namespaces: {0}")]
    Clone(#[source] io::Error),
    /// Talking to the child failed.
    #[error("synchronising with the child: {0}")]
    Sync(#[source] io::Error),
    /// The child reported a failed step instead of executing.
    #[error("{0}")]
    Child(#[source] ChildFailure),
}

/// When the steps of one start happened (CLOCK_MONOTONIC, ns; 0: not reached), for
/// start-up traces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpawnTimings {
    /// `spawn` was called.
    pub start: u64,
    /// The cgroup was made (with its limits).
    pub cgroup_made: u64,
    /// `clone3` returned in the parent.
    pub cloned: u64,
    /// The child executed the program (it entered its cgroup before).
    pub executing: u64,
}

/// CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC always exists: the error cannot happen (0 if it did).
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// Everything allocated for the child, kept alive until it has executed.
struct Prepared {
    plan: clone::ChildPlan,
    _netns: Option<OwnedFd>,
    _cgroup: Option<cgroup::Entry>,
    _program: Option<File>,
    sync_read: OwnedFd,
    sync_write: OwnedFd,
    report_read: OwnedFd,
    report_write: OwnedFd,
}

impl Prepared {
    fn new(
        jail: &Jail,
        program: &Path,
        args: &[OsString],
        fds: &[(RawFd, RawFd)],
        env: &[(OsString, OsString)],
        cgroup: Option<&cgroup::Cgroup>,
    ) -> Result<Prepared, SpawnErrorKind> {
        let netns = jail.netns.prepare()?;
        let entry = cgroup
            .map(cgroup::Cgroup::entry)
            .transpose()
            .map_err(SpawnErrorKind::Cgroup)?;
        let (into_cgroup, cgroup_tasks) = match &entry {
            Some(cgroup::Entry::Clone(dir)) => (Some(dir.as_raw_fd()), Vec::new()),
            Some(cgroup::Entry::Tasks(files)) => {
                (None, files.iter().map(|f| f.as_raw_fd()).collect())
            }
            None => (None, Vec::new()),
        };
        let (sync_read, sync_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        let (exec, program_file) = match jail.finish {
            Finish::ByProgram => (
                clone::Exec::Path(cstring(program.as_os_str(), "the program path")?),
                None,
            ),
            Finish::InChild => {
                let file = File::open(program).map_err(SpawnErrorKind::Open)?;
                (clone::Exec::Fd(file.as_raw_fd()), Some(file))
            }
        };
        let argv0 = program.file_name().unwrap_or(program.as_os_str());
        let mut strings = vec![cstring(argv0, "the program name")?];
        for arg in args {
            strings.push(cstring(arg, "an argument")?);
        }
        let argc = strings.len();
        for (name, value) in env {
            let mut var = name.clone();
            var.push("=");
            var.push(value);
            strings.push(cstring(&var, "an environment variable")?);
        }
        let mut extra = vec![report_write.as_raw_fd()];
        extra.extend(program_file.as_ref().map(|f| f.as_raw_fd()));
        let plan = clone::ChildPlan {
            flags: (libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS) as u64
                | netns.clone_flag,
            netns: netns.join.as_ref().map(|fd| fd.as_raw_fd()),
            into_cgroup,
            cgroup_tasks,
            sync_read: sync_read.as_raw_fd(),
            sync_write: sync_write.as_raw_fd(),
            report: report_write.as_raw_fd(),
            fds: fds::FdPlan::new(fds, &extra)?,
            rlimits: jail.rlimits.prepare(),
            hostname: cstring(OsStr::new(&jail.hostname), "the hostname")?,
            exec,
            in_child: (jail.finish == Finish::InChild).then_some(clone::InChild {
                uid: jail.uid,
                gid: jail.gid,
                landlock: jail.landlock == LandlockMode::Enforce,
            }),
            argv: crate::sys::exec_pointers(&strings[..argc]),
            envp: crate::sys::exec_pointers(&strings[argc..]),
            _strings: strings,
        };
        Ok(Prepared {
            plan,
            _netns: netns.join,
            _cgroup: entry,
            _program: program_file,
            sync_read,
            sync_write,
            report_read,
            report_write,
        })
    }

    /// Clones the child (which enters its cgroup itself) and lets it go on; returns its pid,
    /// pidfd and the read end of its report pipe (end-of-file once it executes). `move_into`: a cgroup the parent moves it into first
    /// ([`CgroupEntry::Moved`]).
    fn start(
        mut self,
        move_into: Option<&cgroup::Cgroup>,
        timings: &mut SpawnTimings,
    ) -> Result<(i32, OwnedFd, OwnedFd), SpawnErrorKind> {
        let (pid, pidfd) = clone::spawn(&mut self.plan).map_err(SpawnErrorKind::Clone)?;
        timings.cloned = now_ns();
        drop(self.sync_read);
        drop(self.report_write);
        let abort = |pidfd: &OwnedFd| {
            // Best effort: kill and reap our own child through its pidfd.
            let _ = crate::sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = crate::sys::pidfd::wait(pidfd.as_fd(), libc::WEXITED);
        };
        if let Some(cgroup) = move_into {
            if let Err(e) = cgroup.add(pid) {
                abort(&pidfd);
                return Err(SpawnErrorKind::Cgroup(e));
            }
        }
        let mut sync = File::from(self.sync_write);
        if let Err(e) = sync.write_all(&[1]) {
            abort(&pidfd);
            return Err(SpawnErrorKind::Sync(e));
        }
        drop(sync);
        Ok((pid, pidfd, self.report_read))
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnErrorKind> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnErrorKind::Pipe(e.into()))
}

fn cstring(s: &OsStr, what: &'static str) -> Result<CString, SpawnErrorKind> {
    CString::new(s.as_bytes()).map_err(|_| SpawnErrorKind::Nul(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsafe_ids_and_root() {
        let spawn = |jail: &Jail| {
            jail.spawn(Path::new("/bin/true"), &[], &[], &[])
                .unwrap_err()
                .kind
        };
        assert!(matches!(
            spawn(&Jail::new("../x", 1000, 1000)),
            SpawnErrorKind::BadId
        ));
        assert!(matches!(
            spawn(&Jail::new("", 1000, 1000)),
            SpawnErrorKind::BadId
        ));
        assert!(matches!(
            spawn(&Jail::new("ok", 0, 1000)),
            SpawnErrorKind::Privileged
        ));
    }

    /// cgroup v2: `clone3(CLONE_INTO_CGROUP)` puts the child in the cgroup before its
    /// first instruction; the program (cat) reads its own membership. Needs root and a
    /// unified hierarchy (a v2 cgroup holds processes without any controller enabled).
    #[test]
    fn a_child_is_born_in_its_v2_cgroup() {
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .map(Path::new)
            .into_iter()
            .find(|p| p.join("cgroup.subtree_control").is_file());
        let (Some(unified), true) = (unified, nix::unistd::geteuid().as_raw() == 0) else {
            eprintln!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let name = format!("bulkhead-born-test-{}", std::process::id());
        let leaf = unified.join(&name);
        std::fs::create_dir(&leaf).unwrap();
        let cgroup = cgroup::Cgroup::v2_at(leaf.clone());
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut jail = Jail::new("born-v2", 65534, 65534);
        jail.netns = NetNs::Host;
        let prepared = Prepared::new(
            &jail,
            Path::new("/bin/cat"),
            &["/proc/self/cgroup".into()],
            &[(writer.as_raw_fd(), 1)],
            &[],
            Some(&cgroup),
        )
        .unwrap();
        let mut timings = SpawnTimings::default();
        let (pid, pidfd, report) = prepared.start(None, &mut timings).unwrap();
        drop(writer);
        let mut child = JailedChild::new(
            "born-v2".into(),
            pid,
            pidfd,
            None,
            timings,
            Some(child::Pending {
                report,
                program: "/bin/cat".into(),
            }),
        );
        child.wait_exec().unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut reader, &mut out).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        let _ = std::fs::remove_dir(&leaf);
        assert!(
            out.lines().any(|l| l == format!("0::/{name}")),
            "not born in /{name}:\n{out}"
        );
    }

    #[test]
    fn finish_flags_name_the_identity() {
        let flags = Jail::new("x", 1000, 1001).finish_flags();
        assert_eq!(
            flags,
            [
                "--jail-uid",
                "1000",
                "--jail-gid",
                "1001",
                "--landlock",
                "enforce"
            ]
        );
    }
}
