//! The last steps of a jail, applied by a process to itself after it has opened its
//! resources: an empty read-only root ([`crate::root`]), an unprivileged identity with no
//! capabilities and `no_new_privs` ([`crate::identity`]), then landlock denying all
//! filesystem access ([`crate::landlock`]).
//!
//! A program started by the jailer in `Finish::ByProgram` mode flattens [`JailArgs`] into
//! its command line and calls [`finish_jail`] once, while it is still single-threaded
//! (namespaces, identity and landlock are per thread; threads started later inherit them).
//! The jailer's child calls the same step functions itself for static foreign programs, so
//! the steps allocate nothing and report a [`Failed`] (a step and an errno) that fits a pipe.

use std::fmt;
use std::io;

use crate::landlock::{LandlockError, LandlockMode};

/// One step of a jail that can fail, named in errors; `repr(u32)` so that a child between
/// clone and exec can report it to its parent through a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// unshare(CLONE_NEWNS), so that no mount below touches the host's namespace.
    UnshareMounts,
    /// Making every mount private (MS_REC|MS_PRIVATE on /).
    MakeMountsPrivate,
    /// Mounting the small tmpfs that becomes the empty root.
    MountEmptyRoot,
    /// chdir into the new root.
    EnterEmptyRoot,
    /// pivot_root(".", ".").
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// chdir("/") in the new root.
    ChdirRoot,
    /// Remounting the root read-only, nosuid, nodev, noexec.
    RemountRootReadOnly,
    /// Clearing the ambient capabilities.
    ClearAmbientCaps,
    /// Dropping the capability bounding set.
    DropBoundingCaps,
    /// setgroups(0).
    ClearGroups,
    /// setresgid.
    SetGid,
    /// setresuid.
    SetUid,
    /// capset to empty sets.
    ClearCaps,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// Checking the identity afterwards (or refusing uid/gid 0).
    CheckIdentity,
    /// Asking the kernel for its landlock ABI.
    LandlockAbi,
    /// landlock_create_ruleset.
    LandlockRuleset,
    /// landlock_add_rule (the binary a jailer executes after confining).
    LandlockRule,
    /// landlock_restrict_self.
    LandlockRestrict,
}

impl Step {
    const ALL: [Step; 20] = [
        Step::UnshareMounts,
        Step::MakeMountsPrivate,
        Step::MountEmptyRoot,
        Step::EnterEmptyRoot,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::ChdirRoot,
        Step::RemountRootReadOnly,
        Step::ClearAmbientCaps,
        Step::DropBoundingCaps,
        Step::ClearGroups,
        Step::SetGid,
        Step::SetUid,
        Step::ClearCaps,
        Step::NoNewPrivs,
        Step::CheckIdentity,
        Step::LandlockAbi,
        Step::LandlockRuleset,
        Step::LandlockRule,
        Step::LandlockRestrict,
    ];

    /// The step with this `repr(u32)` value, if any (decoding a child's report).
    pub fn from_u32(value: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|step| *step as u32 == value)
    }

    /// What the step does, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::UnshareMounts => "unsharing the mount namespace",
            Step::MakeMountsPrivate => "making all mounts private",
            Step::MountEmptyRoot => "mounting the empty root (tmpfs on /tmp)",
            Step::EnterEmptyRoot => "entering the empty root",
            Step::PivotRoot => "pivot_root into the empty root",
            Step::DetachOldRoot => "detaching the old root",
            Step::ChdirRoot => "chdir to the new root",
            Step::RemountRootReadOnly => "remounting the root read-only",
            Step::ClearAmbientCaps => "clearing ambient capabilities",
            Step::DropBoundingCaps => "dropping the capability bounding set",
            Step::ClearGroups => "clearing supplementary groups",
            Step::SetGid => "setting the gid",
            Step::SetUid => "setting the uid",
            Step::ClearCaps => "clearing capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::CheckIdentity => "checking the unprivileged identity",
            Step::LandlockAbi => "querying the landlock ABI",
            Step::LandlockRuleset => "creating the landlock ruleset",
            Step::LandlockRule => "adding a landlock rule",
            Step::LandlockRestrict => "enforcing landlock",
        }
    }
}

/// A step of the jail failed with this errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// The step that failed.
    pub step: Step,
    /// The errno it failed with.
    pub errno: i32,
}

impl Failed {
    /// The step failed with the calling thread's current errno. Allocation-free.
    pub fn last(step: Step) -> Failed {
        Failed {
            step,
            errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
    }

    /// A nix call's error into the step's [`Failed`], for `map_err`. Allocation-free.
    pub(crate) fn nix(step: Step) -> impl FnOnce(nix::errno::Errno) -> Failed {
        move |errno| Failed {
            step,
            errno: errno as i32,
        }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.step.name(),
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for Failed {}

/// Why [`finish_jail`] refused or failed; the process must not go on.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A step failed.
    #[error("finishing the jail of process {pid}: {source}")]
    Step {
        /// This process.
        pid: u32,
        /// The step and its errno.
        #[source]
        source: Failed,
    },
    /// Other threads exist, which the per-thread steps would not cover.
    #[error("finishing the jail of process {pid}: it has {threads} threads; finish it while single-threaded (threads started later inherit the jail)")]
    Threaded {
        /// This process.
        pid: u32,
        /// How many threads /proc/self/task lists.
        threads: usize,
    },
    /// /proc/self/task could not be read.
    #[error("finishing the jail of process {pid}: counting threads in /proc/self/task: {source}")]
    CountThreads {
        /// This process.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Landlock was asked for and the kernel could not enforce it.
    #[error("finishing the jail of process {pid}: {source}")]
    Landlock {
        /// This process.
        pid: u32,
        /// What failed.
        #[source]
        source: LandlockError,
    },
    /// Landlock was asked for and the kernel has none.
    #[error("process {pid}: this kernel has no landlock ({source}); pass --landlock off to run without it")]
    LandlockUnavailable {
        /// This process.
        pid: u32,
        /// What the kernel answered.
        #[source]
        source: Failed,
    },
}

/// Command-line flags of a process that finishes its own jail; `#[command(flatten)]` them.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct JailArgs {
    /// Started by a jailer: pivot into an empty root and drop to this uid (with --jail-gid).
    #[arg(
        long,
        value_name = "UID",
        requires = "jail_gid",
        hide_short_help = true
    )]
    pub jail_uid: Option<u32>,
    /// Started by a jailer: pivot into an empty root and drop to this gid (with --jail-uid).
    #[arg(
        long,
        value_name = "GID",
        requires = "jail_uid",
        hide_short_help = true
    )]
    pub jail_gid: Option<u32>,
    /// Landlock: `enforce` denies this process all filesystem access once its resources are
    /// open (it refuses to start on a kernel without landlock); `off` opts out.
    #[arg(long, value_enum, default_value_t = LandlockMode::Enforce)]
    pub landlock: LandlockMode,
}

impl JailArgs {
    /// The flags that make a program parse back these arguments (for a launcher).
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let (Some(uid), Some(gid)) = (self.jail_uid, self.jail_gid) {
            flags.extend([
                "--jail-uid".to_string(),
                uid.to_string(),
                "--jail-gid".to_string(),
                gid.to_string(),
            ]);
        }
        flags.push("--landlock".to_string());
        flags.push(self.landlock.as_flag().to_string());
        flags
    }
}

/// Finishes this process's jail: with `--jail-uid/--jail-gid`, an empty read-only root and
/// that identity with no capabilities and `no_new_privs`; then landlock unless it is off.
/// Call it once resources are open, before handling untrusted input, while single-threaded.
pub fn finish_jail(args: &JailArgs) -> Result<(), JailError> {
    let pid = std::process::id();
    if args.jail_uid.is_none() && args.landlock == LandlockMode::Off {
        log::info!("process {pid}: not jailed and landlock is off (--landlock off)");
        return Ok(());
    }
    let threads = count_threads().map_err(|source| JailError::CountThreads { pid, source })?;
    if threads != 1 {
        return Err(JailError::Threaded { pid, threads });
    }
    let step = |source| JailError::Step { pid, source };
    if let (Some(uid), Some(gid)) = (args.jail_uid, args.jail_gid) {
        crate::root::enter_empty_root().map_err(step)?;
        crate::identity::drop_identity(uid, gid).map_err(step)?;
        log::info!(
            "process {pid}: in an empty root as uid {uid} gid {gid}, no capabilities, no_new_privs"
        );
    }
    if args.landlock == LandlockMode::Enforce {
        // Landlock needs no_new_privs unless the process holds CAP_SYS_ADMIN; set it here too
        // for a process that keeps its identity (run standalone).
        nix::sys::prctl::set_no_new_privs()
            .map_err(Failed::nix(Step::NoNewPrivs))
            .map_err(step)?;
        let abi = crate::landlock::deny_all_fs().map_err(|e| match e {
            LandlockError::Unavailable(source) => JailError::LandlockUnavailable { pid, source },
            source => JailError::Landlock { pid, source },
        })?;
        log::info!("process {pid}: landlock ABI {abi} denies all filesystem access");
    } else {
        log::warn!("process {pid}: landlock is off (--landlock off)");
    }
    if std::env::var_os(crate::thread::SELF_TEST_ENV).is_some_and(|v| v == LANDLOCK_SELF_TEST) {
        eprintln!("{}", landlock_probe());
    }
    Ok(())
}

/// Test only: the [`crate::thread::SELF_TEST_ENV`] value that makes [`finish_jail`] print
/// [`landlock_probe`]'s line on stderr, for a test to see from outside that landlock holds.
pub const LANDLOCK_SELF_TEST: &str = "landlock";

/// Lists the (empty) root directory, which only landlock can refuse once the jail is
/// finished, and no seccomp filter is installed yet to answer `openat` itself; says what
/// happened: `landlock self-test: listing / refused (os error 13)` when landlock holds.
fn landlock_probe() -> String {
    match std::fs::read_dir("/") {
        Ok(_) => "landlock self-test: listing / allowed".to_owned(),
        Err(e) => format!("landlock self-test: listing / refused ({e})"),
    }
}

fn count_threads() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        jail: JailArgs,
    }

    #[test]
    fn steps_round_trip_through_u32() {
        for step in Step::ALL {
            assert_eq!(Step::from_u32(step as u32), Some(step));
        }
        assert_eq!(Step::from_u32(Step::ALL.len() as u32), None);
    }

    #[test]
    fn flags_parse_back() {
        let args = JailArgs {
            jail_uid: Some(65534),
            jail_gid: Some(65533),
            landlock: LandlockMode::Off,
        };
        let mut argv = vec!["prog".to_string()];
        argv.extend(args.to_flags());
        assert_eq!(Cli::try_parse_from(argv).unwrap().jail, args);
    }

    #[test]
    fn uid_needs_gid() {
        assert!(Cli::try_parse_from(["prog", "--jail-uid", "1"]).is_err());
        let none = Cli::try_parse_from(["prog"]).unwrap().jail;
        assert_eq!(none.jail_uid, None);
        assert_eq!(none.landlock, LandlockMode::Enforce);
    }

    #[test]
    fn refuses_to_finish_a_multi_threaded_process() {
        // The test harness runs this on a thread of its own: at least two threads.
        let args = JailArgs {
            jail_uid: Some(65534),
            jail_gid: Some(65534),
            landlock: LandlockMode::Enforce,
        };
        let err = finish_jail(&args).unwrap_err();
        assert!(
            matches!(err, JailError::Threaded { threads, .. } if threads > 1),
            "{err}"
        );
        // Nothing was applied: this process is still root, or whoever ran the tests.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }

    #[test]
    fn failed_names_step_and_errno() {
        let failed = Failed {
            step: Step::PivotRoot,
            errno: libc::EPERM,
        };
        let text = failed.to_string();
        assert!(
            text.starts_with("pivot_root into the empty root: "),
            "{text}"
        );
        assert!(text.contains("not permitted"), "{text}");
    }
}
