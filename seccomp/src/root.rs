//! An empty, read-only root: the process sees no host file at all.
//!
//! In a mount namespace of its own (unshared here, so the host's mounts are never touched,
//! and made private so nothing propagates back), a small tmpfs is mounted over `/tmp` (as
//! bubblewrap does), entered with `pivot_root(".", ".")`, the old root is detached, and the
//! new root is remounted read-only, nosuid, nodev, noexec. Files opened before stay usable.
//!
//! Allocation-free and made of plain syscalls, so a jailer's child may call it between
//! clone and exec; a program calls it through [`crate::jail::finish_jail`].

use std::ffi::CStr;
use std::ptr;

use crate::jail::{Failed, Step};

/// Where the empty root's tmpfs is mounted before it becomes `/`.
const STAGING: &CStr = c"/tmp";
/// Small and read-only once pivoted: nothing is ever created in it.
const TMPFS_OPTIONS: &CStr = c"mode=0555,size=16k,nr_inodes=16";

/// Pivots the calling process into an empty read-only root (see the module doc).
/// Needs CAP_SYS_ADMIN; the process must be single-threaded.
pub fn enter_empty_root() -> Result<(), Failed> {
    // SAFETY: unshare takes only flags; it changes this thread's mount namespace, which is
    // what is wanted (the caller is single-threaded).
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(ret, Step::UnshareMounts)?;
    // SAFETY: a null source/type/data with MS_REC|MS_PRIVATE only changes propagation; the
    // target is a valid NUL-terminated string.
    let ret = unsafe {
        libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    };
    check(ret, Step::MakeMountsPrivate)?;
    // SAFETY: all strings are NUL-terminated constants; tmpfs takes its options as a string.
    let ret = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            STAGING.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            TMPFS_OPTIONS.as_ptr().cast(),
        )
    };
    check(ret, Step::MountEmptyRoot)?;
    // SAFETY: a NUL-terminated constant path.
    let ret = unsafe { libc::chdir(STAGING.as_ptr()) };
    check(ret, Step::EnterEmptyRoot)?;
    // SAFETY: pivot_root takes two NUL-terminated paths; "." for both stacks the old root
    // on the new one, to be detached just below (the pivot_root(2) idiom).
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } as i32;
    check(ret, Step::PivotRoot)?;
    // SAFETY: a NUL-terminated constant path; MNT_DETACH unmounts the old root lazily.
    let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(ret, Step::DetachOldRoot)?;
    // SAFETY: a NUL-terminated constant path.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ret, Step::ChdirRoot)?;
    // SAFETY: a bind remount of "/" changes only its mount flags; null source/type/data.
    let ret = unsafe {
        libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            ptr::null(),
        )
    };
    check(ret, Step::RemountRootReadOnly)?;
    Ok(())
}

/// A syscall's `-1` into the step's [`Failed`] with errno.
pub(crate) fn check(ret: i32, step: Step) -> Result<(), Failed> {
    if ret == -1 {
        Err(Failed::last(step))
    } else {
        Ok(())
    }
}
