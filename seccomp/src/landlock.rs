//! Landlock denying all filesystem access: a ruleset that handles every filesystem right
//! the kernel's ABI knows, with no rule (or, for a jailer, one rule letting it execute the
//! binary it opened before confining), enforced on the calling thread.
//!
//! Raw syscalls rather than the `landlock` crate: a jailer's child applies the same ruleset
//! between clone and exec, where nothing may allocate.

use std::os::fd::RawFd;

use crate::jail::{Failed, Step};
use crate::root::check;

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

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

/// LANDLOCK_ACCESS_FS_EXECUTE.
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
/// LANDLOCK_ACCESS_FS_READ_FILE.
const ACCESS_FS_READ_FILE: u64 = 1 << 2;
/// ABI 1: EXECUTE through MAKE_SYM, thirteen rights.
const ACCESS_FS_ABI1: u64 = (1 << 13) - 1;
/// ABI 2 adds REFER.
const ACCESS_FS_REFER: u64 = 1 << 13;
/// ABI 3 adds TRUNCATE.
const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5 adds IOCTL_DEV.
const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;

/// `struct landlock_ruleset_attr` up to `handled_access_fs` (the kernel takes a prefix).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's landlock ABI version; fails (ENOSYS, EOPNOTSUPP) where landlock is absent
/// or disabled.
pub fn abi() -> Result<u32, Failed> {
    // SAFETY: the version query takes a null attribute and size 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if ret < 1 {
        return Err(Failed::last(Step::LandlockAbi));
    }
    Ok(ret as u32)
}

/// Every filesystem access right ABI `abi` knows.
pub fn handled_fs(abi: u32) -> u64 {
    let mut access = ACCESS_FS_ABI1;
    if abi >= 2 {
        access |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        access |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        access |= ACCESS_FS_IOCTL_DEV;
    }
    access
}

/// Enforces a ruleset that handles every filesystem right of `abi` and grants none, except
/// execute and read on the file `exec_fd` when given (a jailer's foreign binary). Needs
/// `no_new_privs` (or CAP_SYS_ADMIN). Allocation-free.
pub fn deny_all(abi: u32, exec_fd: Option<RawFd>) -> Result<(), Failed> {
    let attr = RulesetAttr {
        handled_access_fs: handled_fs(abi),
    };
    // SAFETY: a valid attribute of the size passed; flags 0.
    let ruleset = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    } as i32;
    check(ruleset, Step::LandlockRuleset)?;
    let result = restrict(ruleset, exec_fd);
    // SAFETY: `ruleset` is the fd created above, owned here and closed once.
    unsafe { libc::close(ruleset) };
    result
}

fn restrict(ruleset: RawFd, exec_fd: Option<RawFd>) -> Result<(), Failed> {
    if let Some(fd) = exec_fd {
        let rule = PathBeneathAttr {
            allowed_access: ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE,
            parent_fd: fd,
        };
        // SAFETY: a valid ruleset fd and a rule of the path-beneath layout; flags 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                RULE_PATH_BENEATH,
                &rule,
                0u32,
            )
        } as i32;
        check(ret, Step::LandlockRule)?;
    }
    // SAFETY: a valid ruleset fd; flags 0.
    check(
        unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) } as i32,
        Step::LandlockRestrict,
    )
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
            // SAFETY: prctl with integer arguments only; this thread only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
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
}
