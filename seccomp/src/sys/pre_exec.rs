//! The system calls this crate still makes by hand, all for one reason: a jailer's child
//! runs [`crate::identity::drop_identity`] and [`crate::landlock::deny_all`] between
//! `clone` and `exec`, where nothing may allocate and libc's own bookkeeping belongs to
//! the parent:
//! - landlock: the `landlock` crate allocates (a program confining itself uses it, see
//!   [`crate::landlock::deny_all_fs`]); these are its three system calls, bare;
//! - setgroups/setresgid/setresuid: libc's wrappers (and so nix's) signal every thread libc
//!   knows of, which after a raw clone are the parent's; the raw calls change the calling
//!   thread only;
//! - capset/capget and the capability prctls, which nix does not have.
//!
//! Every function here is allocation-free and returns a [`Failed`] (a step and an errno).

use std::os::fd::RawFd;

use crate::jail::{Failed, Step};

/// A syscall's `-1` into the step's [`Failed`] with errno.
pub(crate) fn check(ret: i64, step: Step) -> Result<(), Failed> {
    if ret == -1 {
        Err(Failed::last(step))
    } else {
        Ok(())
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
pub fn landlock_abi() -> Result<u32, Failed> {
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

/// Every filesystem access right ABI `abi` knows (up to ABI 5, the rights
/// [`crate::landlock::deny_all_fs`] handles too).
pub fn landlock_handled_fs(abi: u32) -> u64 {
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
/// execute and read on the file `exec_fd` when given. Needs `no_new_privs`.
pub fn landlock_deny_all(abi: u32, exec_fd: Option<RawFd>) -> Result<(), Failed> {
    let attr = RulesetAttr {
        handled_access_fs: landlock_handled_fs(abi),
    };
    // SAFETY: a valid attribute of the size passed; flags 0.
    let ruleset = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    check(ruleset, Step::LandlockRuleset)?;
    let ruleset = ruleset as RawFd;
    let result = landlock_restrict(ruleset, exec_fd);
    // SAFETY: `ruleset` is the fd created above, owned here and closed once.
    unsafe { libc::close(ruleset) };
    result
}

fn landlock_restrict(ruleset: RawFd, exec_fd: Option<RawFd>) -> Result<(), Failed> {
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
        };
        check(ret, Step::LandlockRule)?;
    }
    // SAFETY: a valid ruleset fd; flags 0.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    check(ret, Step::LandlockRestrict)
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the ambient capability set. Kernels before 4.3 have none and answer EINVAL,
/// which leaves nothing to clear.
pub fn clear_ambient_caps() -> Result<(), Failed> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match check(ret.into(), Step::ClearAmbientCaps) {
        Err(f) if f.errno == libc::EINVAL => Ok(()),
        other => other,
    }
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP); EINVAL marks the end
/// of the capabilities this kernel knows.
pub fn drop_bounding_caps() -> Result<(), Failed> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        match check(ret.into(), Step::DropBoundingCaps) {
            Err(f) if f.errno == libc::EINVAL && cap > 0 => break,
            Err(f) => return Err(f),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// setgroups(0, NULL), this thread only.
pub fn clear_groups() -> Result<(), Failed> {
    // SAFETY: setgroups with size 0 does not read the (null) list.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
    check(ret, Step::ClearGroups)
}

/// setresgid(gid, gid, gid), this thread only.
pub fn set_gid(gid: u32) -> Result<(), Failed> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    check(ret, Step::SetGid)
}

/// setresuid(uid, uid, uid), this thread only. Leaving uid 0 clears the permitted and
/// effective capability sets.
pub fn set_uid(uid: u32) -> Result<(), Failed> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    check(ret, Step::SetUid)
}

/// Empties every capability set of the calling thread (inheritable included).
pub fn clear_caps() -> Result<(), Failed> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data words of the v3 layout, both valid for the call; pid 0 is
    // the calling thread.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret, Step::ClearCaps)
}

/// Whether the calling thread holds no capability in its effective, permitted and
/// inheritable sets.
pub fn has_no_caps() -> Result<bool, Failed> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two writable data words of the v3 layout.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(ret, Step::CheckIdentity)?;
    Ok(data
        .iter()
        .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0))
}
