//! An unprivileged identity: no supplementary groups, the given gid and uid (real,
//! effective, saved), no capabilities in any set (bounding and ambient included), and
//! `no_new_privs`, so that nothing executed later can gain privileges back.
//!
//! Raw syscalls, not libc's set*id wrappers: those signal every thread libc knows of, which
//! after a raw clone are the parent's. So these change the calling thread only, and the
//! caller must be single-threaded. Allocation-free, for a jailer's child as for a program.

use crate::jail::{Failed, Step};
use crate::root::check;

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

/// Drops the calling process to `uid`/`gid` with no capabilities and `no_new_privs`.
/// Refuses uid or gid 0 (that would not be unprivileged). Needs CAP_SETUID, CAP_SETGID and
/// CAP_SETPCAP to start with (root).
pub fn drop_identity(uid: u32, gid: u32) -> Result<(), Failed> {
    if uid == 0 || gid == 0 {
        return Err(Failed {
            step: Step::CheckIdentity,
            errno: libc::EINVAL,
        });
    }
    // SAFETY: prctl with integer arguments only. Kernels before 4.3 have no ambient set and
    // answer EINVAL, which leaves nothing to clear.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if ret == -1 && errno() != libc::EINVAL {
        return Err(Failed::last(Step::ClearAmbientCaps));
    }
    // The bounding set is dropped while CAP_SETPCAP is still held; EINVAL marks the end of
    // the capabilities this kernel knows.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == -1 {
            if errno() == libc::EINVAL && cap > 0 {
                break;
            }
            return Err(Failed::last(Step::DropBoundingCaps));
        }
    }
    // SAFETY: setgroups with size 0 does not read the (null) list.
    let ret =
        unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) } as i32;
    check(ret, Step::ClearGroups)?;
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } as i32;
    check(ret, Step::SetGid)?;
    // SAFETY: integer arguments only. Leaving uid 0 clears the permitted and effective sets.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } as i32;
    check(ret, Step::SetUid)?;
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data words of the v3 layout, both valid for the call; pid 0 is
    // the calling thread. Empties the inheritable set as well.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as i32;
    check(ret, Step::ClearCaps)?;
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret, Step::NoNewPrivs)?;
    verify(uid, gid)
}

/// Reads the identity back: every id as asked and no capability left.
fn verify(uid: u32, gid: u32) -> Result<(), Failed> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: three valid u32 out-pointers.
    let ret = unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) } as i32;
    check(ret, Step::CheckIdentity)?;
    let uids_ok = r == uid && e == uid && s == uid;
    // SAFETY: three valid u32 out-pointers.
    let ret = unsafe { libc::syscall(libc::SYS_getresgid, &mut r, &mut e, &mut s) } as i32;
    check(ret, Step::CheckIdentity)?;
    let gids_ok = r == gid && e == gid && s == gid;
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two writable data words of the v3 layout.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } as i32;
    check(ret, Step::CheckIdentity)?;
    let no_caps = data
        .iter()
        .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0);
    if uids_ok && gids_ok && no_caps {
        Ok(())
    } else {
        Err(Failed {
            step: Step::CheckIdentity,
            errno: libc::EPERM,
        })
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_root_ids() {
        assert_eq!(drop_identity(0, 100).unwrap_err().step, Step::CheckIdentity);
        assert_eq!(drop_identity(100, 0).unwrap_err().step, Step::CheckIdentity);
    }
}
