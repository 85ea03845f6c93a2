//! An unprivileged identity: no supplementary groups, the given gid and uid (real,
//! effective, saved), no capabilities in any set (bounding and ambient included), and
//! `no_new_privs`, so that nothing executed later can gain privileges back.
//!
//! The set*id and capability calls are the raw ones of [`crate::sys::pre_exec`] (libc's
//! set*id wrappers signal every thread libc knows of, which after a raw clone are the
//! parent's; nix has no capset): they change the calling thread only, and the caller must
//! be single-threaded. `no_new_privs` and the read-back go through nix. Allocation-free, for
//! a jailer's child as for a program.

use nix::sys::prctl;
use nix::unistd::{getresgid, getresuid};

use crate::jail::{Failed, Step};
use crate::sys::pre_exec;

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
    pre_exec::clear_ambient_caps()?;
    // The bounding set is dropped while CAP_SETPCAP is still held.
    pre_exec::drop_bounding_caps()?;
    pre_exec::clear_groups()?;
    pre_exec::set_gid(gid)?;
    pre_exec::set_uid(uid)?;
    pre_exec::clear_caps()?;
    prctl::set_no_new_privs().map_err(Failed::nix(Step::NoNewPrivs))?;
    verify(uid, gid)
}

/// Reads the identity back: every id as asked and no capability left.
fn verify(uid: u32, gid: u32) -> Result<(), Failed> {
    let uids = getresuid().map_err(Failed::nix(Step::CheckIdentity))?;
    let uids_ok = [uids.real, uids.effective, uids.saved]
        .iter()
        .all(|id| id.as_raw() == uid);
    let gids = getresgid().map_err(Failed::nix(Step::CheckIdentity))?;
    let gids_ok = [gids.real, gids.effective, gids.saved]
        .iter()
        .all(|id| id.as_raw() == gid);
    if uids_ok && gids_ok && pre_exec::has_no_caps()? {
        Ok(())
    } else {
        Err(Failed {
            step: Step::CheckIdentity,
            errno: libc::EPERM,
        })
    }
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
