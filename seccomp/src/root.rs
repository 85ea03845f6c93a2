//! An empty, read-only root: the process sees no host file at all.
//!
//! In a mount namespace of its own (unshared here, so the host's mounts are never touched,
//! and made private so nothing propagates back), a small tmpfs is mounted over `/tmp` (as
//! bubblewrap does), entered with `pivot_root(".", ".")`, the old root is detached, and the
//! new root is remounted read-only, nosuid, nodev, noexec. Files opened before stay usable.
//!
//! Allocation-free (nix with `&CStr` paths), so a jailer's child may call it between
//! clone and exec; a program calls it through [`crate::jail::finish_jail`].

use std::ffi::CStr;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};

use crate::jail::{Failed, Step};

/// Where the empty root's tmpfs is mounted before it becomes `/`.
const STAGING: &CStr = c"/tmp";
/// Small and read-only once pivoted: nothing is ever created in it.
const TMPFS_OPTIONS: &CStr = c"mode=0555,size=16k,nr_inodes=16";
/// No source, type or data: a mount call that changes flags or propagation only.
const NONE: Option<&CStr> = None;

/// Pivots the calling process into an empty read-only root (see the module doc).
/// Needs CAP_SYS_ADMIN; the process must be single-threaded.
pub fn enter_empty_root() -> Result<(), Failed> {
    // nix passes `&CStr` paths straight through: none of these calls allocates.
    unshare(CloneFlags::CLONE_NEWNS).map_err(Failed::nix(Step::UnshareMounts))?;
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(NONE, c"/", NONE, private, NONE).map_err(Failed::nix(Step::MakeMountsPrivate))?;
    let tmpfs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some(c"tmpfs"),
        STAGING,
        Some(c"tmpfs"),
        tmpfs,
        Some(TMPFS_OPTIONS),
    )
    .map_err(Failed::nix(Step::MountEmptyRoot))?;
    chdir(STAGING).map_err(Failed::nix(Step::EnterEmptyRoot))?;
    // "." for both stacks the old root on the new one, to be detached just below (the
    // pivot_root(2) idiom); MNT_DETACH unmounts it lazily.
    pivot_root(c".", c".").map_err(Failed::nix(Step::PivotRoot))?;
    umount2(c".", MntFlags::MNT_DETACH).map_err(Failed::nix(Step::DetachOldRoot))?;
    chdir(c"/").map_err(Failed::nix(Step::ChdirRoot))?;
    let read_only = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(NONE, c"/", NONE, read_only, NONE).map_err(Failed::nix(Step::RemountRootReadOnly))?;
    Ok(())
}
