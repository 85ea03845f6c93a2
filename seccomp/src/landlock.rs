//! Landlock denying all filesystem access: a ruleset that handles every filesystem right
//! up to ABI 5 that the kernel knows, with no rule (or, for a jailer, one rule letting it
//! execute the binary it opened before confining), enforced on the calling thread.
//!
//! A program confining itself ([`crate::jail::finish_jail`]) goes through the `landlock`
//! crate, [`deny_all_fs`], with our policy on top of its best-effort compatibility: the
//! rights the kernel's ABI lacks are left out (as the kernel's own ABI would), but a kernel
//! with no landlock at all, or one that enforced nothing, is refused. A jailer's child,
//! between clone and exec where nothing may allocate, calls [`abi`] and [`deny_all`],
//! the same ruleset made with bare system calls in [`crate::sys::pre_exec`].

use std::os::fd::RawFd;

use landlock::{Access, AccessFs, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus, ABI};

use crate::jail::{Failed, Step};

/// Whether a process confines its filesystem access with landlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LandlockMode {
    /// Deny all filesystem access; refuse to start where the kernel has no landlock.
    Enforce,
    /// No landlock (an explicit opt-out).
    Off,
}

impl LandlockMode {
    /// The command-line value of this mode.
    pub fn as_flag(self) -> &'static str {
        match self {
            LandlockMode::Enforce => "enforce",
            LandlockMode::Off => "off",
        }
    }
}

/// The newest ABI whose filesystem rights are handled: ABI 5 (IOCTL_DEV), as the raw path
/// does. Later ABIs add RESOLVE_UNIX, which would change what a confined process may do.
const HANDLED_ABI: ABI = ABI::V5;

/// Why [`deny_all_fs`] did not confine the calling thread.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel has no landlock: not built in (ENOSYS) or not enabled (EOPNOTSUPP).
    #[error("{0}")]
    Unavailable(#[source] Failed),
    /// Creating or enforcing the ruleset failed.
    #[error("enforcing landlock: {0}")]
    Ruleset(#[source] landlock::RulesetError),
    /// The kernel has landlock yet enforced none of the ruleset.
    #[error("enforcing landlock: the kernel (landlock {0:?}) enforced none of the ruleset")]
    NotEnforced(LandlockStatus),
}

/// Denies the calling thread (and threads it starts later) all filesystem access through
/// the `landlock` crate; returns the ABI the ruleset was made for. Fails closed: Ok only
/// once the kernel enforces the ruleset (fully, or without the rights its ABI lacks).
/// Allocates; sets `no_new_privs` (the crate's default).
pub fn deny_all_fs() -> Result<ABI, LandlockError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(HANDLED_ABI))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| ruleset.restrict_self())
        .map_err(LandlockError::Ruleset)?;
    fail_closed(status.landlock, status.ruleset)
}

/// Our policy on the crate's best-effort outcome: the ruleset must be enforced, fully or
/// without the rights the kernel's ABI lacks; no landlock at all is refused.
fn fail_closed(landlock: LandlockStatus, ruleset: RulesetStatus) -> Result<ABI, LandlockError> {
    let abi = match landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
        LandlockStatus::NotEnabled => return Err(unavailable(libc::EOPNOTSUPP)),
        LandlockStatus::NotImplemented => return Err(unavailable(libc::ENOSYS)),
    };
    match ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(abi),
        RulesetStatus::NotEnforced => Err(LandlockError::NotEnforced(landlock)),
    }
}

fn unavailable(errno: i32) -> LandlockError {
    LandlockError::Unavailable(Failed {
        step: Step::LandlockAbi,
        errno,
    })
}

/// The kernel's landlock ABI version; fails (ENOSYS, EOPNOTSUPP) where landlock is absent
/// or disabled. Allocation-free (see [`crate::sys::pre_exec`]).
pub fn abi() -> Result<u32, Failed> {
    crate::sys::pre_exec::landlock_abi()
}

/// Every filesystem access right ABI `abi` knows, up to ABI 5.
pub fn handled_fs(abi: u32) -> u64 {
    crate::sys::pre_exec::landlock_handled_fs(abi)
}

/// Enforces a ruleset that handles every filesystem right of `abi` and grants none, except
/// execute and read on the file `exec_fd` when given (a jailer's foreign binary). Needs
/// `no_new_privs` (or CAP_SYS_ADMIN). Allocation-free, for a jailer's child between clone
/// and exec (see [`crate::sys::pre_exec`]); a program confining itself uses [`deny_all_fs`].
pub fn deny_all(abi: u32, exec_fd: Option<RawFd>) -> Result<(), Failed> {
    crate::sys::pre_exec::landlock_deny_all(abi, exec_fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_abis_handle_more_rights() {
        assert_eq!(handled_fs(1).count_ones(), 13);
        assert_eq!(handled_fs(2).count_ones(), 14);
        assert_eq!(handled_fs(3).count_ones(), 15);
        assert_eq!(handled_fs(4), handled_fs(3));
        assert_eq!(handled_fs(5).count_ones(), 16);
        assert_eq!(handled_fs(7), handled_fs(5));
    }

    #[test]
    fn a_thread_that_denies_all_cannot_open_files() {
        let Ok(abi) = abi() else {
            eprintln!("skipped: this kernel has no landlock");
            return;
        };
        // Landlock and no_new_privs are per thread: confine a thread of this test only.
        let opened = std::thread::spawn(move || {
            nix::sys::prctl::set_no_new_privs().unwrap();
            deny_all(abi, None).unwrap();
            std::fs::File::open("/proc/self/status").map(|_| ())
        })
        .join()
        .unwrap();
        assert_eq!(
            opened.unwrap_err().raw_os_error(),
            Some(libc::EACCES),
            "open after landlock"
        );
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }

    #[test]
    fn both_paths_handle_the_same_rights() {
        assert_eq!(AccessFs::from_all(HANDLED_ABI).bits(), handled_fs(5));
    }

    #[test]
    fn a_thread_confined_through_the_crate_cannot_open_files() {
        if abi().is_err() {
            eprintln!("skipped: this kernel has no landlock");
            return;
        }
        let opened = std::thread::spawn(|| {
            let abi = deny_all_fs().unwrap();
            (abi, std::fs::File::open("/proc/self/status").map(|_| ()))
        })
        .join()
        .unwrap();
        assert!(opened.0 >= ABI::V1, "{:?}", opened.0);
        assert_eq!(
            opened.1.unwrap_err().raw_os_error(),
            Some(libc::EACCES),
            "open after landlock"
        );
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }

    #[test]
    fn only_an_enforced_ruleset_is_accepted() {
        let v3 = LandlockStatus::Available {
            effective_abi: ABI::V3,
            kernel_abi: None,
        };
        let partial = fail_closed(v3, RulesetStatus::PartiallyEnforced);
        assert_eq!(partial.unwrap(), ABI::V3);
        assert!(fail_closed(v3, RulesetStatus::FullyEnforced).is_ok());
        assert!(matches!(
            fail_closed(v3, RulesetStatus::NotEnforced),
            Err(LandlockError::NotEnforced(_))
        ));
        for (status, errno) in [
            (LandlockStatus::NotImplemented, libc::ENOSYS),
            (LandlockStatus::NotEnabled, libc::EOPNOTSUPP),
        ] {
            let err = fail_closed(status, RulesetStatus::NotEnforced).unwrap_err();
            let LandlockError::Unavailable(failed) = err else {
                panic!("{err}");
            };
            assert_eq!((failed.step, failed.errno), (Step::LandlockAbi, errno));
        }
    }
}
