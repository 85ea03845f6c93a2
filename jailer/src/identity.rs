//! One identity per VM, in the manner of systemd's `DynamicUser=`: unless `--uid/--gid`
//! force one, every process of a VM runs as a uid (and the same gid) that no other VM and
//! no other process on the host has, so that one VM's processes cannot signal another's,
//! and RLIMIT_NPROC counts only its own VM's tasks.
//!
//! A uid is taken by locking `/run/bulkhead/uids/<uid>.lock` (flock, exclusive, without
//! waiting) and holding the lock for the VM's life: two launchers never hold the same one,
//! and a launcher's uid is free again the moment it ends, however it ends (the kernel
//! drops the lock). The files are never removed, so a lock is always taken on the one
//! file of its name. Candidates are tried from where the last allocation stopped
//! (`/run/bulkhead/uids/next`, read and advanced under its own lock), round the range; one
//! is skipped when the user or group database knows it (someone else's). Each start costs
//! one or a few lock attempts, not a scan: earlier versions tried the range from its first
//! uid up (O(VMs) locks per start) and read every process's `/proc/PID/status` to skip uids
//! a process still ran as (O(processes) per start; 2 ms of each start on the CI host with
//! no VM running). The rotation is what replaces that scan: a uid is handed out again only
//! after the whole range has gone round (65536 starts by default), so the processes of a
//! VM whose launcher just died (killed with it by their parent-death signal) are long gone
//! when their uid is reused. The hint is only a starting point: a lost or garbled `next`
//! costs a longer search, never a shared uid.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::run_dir::{self, RunDirError, RUN_DIR};

/// The identities bulkhead hands out by default: 65536 of them from 0x7E000000
/// (2113929216..=2113994751). Per systemd's "Users, Groups, UIDs and GIDs" table the block
/// 1879048192..=2147352575 is unused by Linux, distributions and systemd: above its
/// container ranges (524288..=1879048191, `systemd-nspawn`) and therefore above the
/// subordinate ranges shadow's `useradd` hands out (100000 up to 600100000 + 65536), far
/// from regular (1000..=60000), system and `DynamicUser` (61184..=65519) users and from
/// nobody (65534); below systemd's foreign-image range (0x7FFE0000..) and below 2^31,
/// which some tools mishandle as negative.
pub const DEFAULT_RANGE: UidRange = UidRange {
    first: 0x7E00_0000,
    last: 0x7E00_FFFF,
};

/// Where the locks of the identities in use are.
fn uids_dir() -> PathBuf {
    Path::new(RUN_DIR).join("uids")
}

/// uids no range may include: root, nobody (shared by many services) and the two values
/// the kernel and libc treat as "no uid" ((uid_t)-1 in 16 and 32 bits).
const RESERVED: [u32; 4] = [0, 65534, 65535, u32::MAX];

/// A range of uids (each also used as the gid), `FIRST-LAST` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    /// The first.
    pub first: u32,
    /// The last (included).
    pub last: u32,
}

impl FromStr for UidRange {
    type Err = String;

    fn from_str(s: &str) -> Result<UidRange, String> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
        let number = |n: &str| {
            n.trim()
                .parse::<u32>()
                .map_err(|e| format!("{s:?}: {n:?}: {e}"))
        };
        let range = UidRange {
            first: number(first)?,
            last: number(last)?,
        };
        if range.first > range.last {
            return Err(format!("{s:?}: the first uid is above the last"));
        }
        if let Some(r) = RESERVED
            .iter()
            .find(|&&r| (range.first..=range.last).contains(&r))
        {
            return Err(format!(
                "{s:?} includes uid {r}, which must never be a VM's (root, nobody or -1)"
            ));
        }
        Ok(range)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Errors while allocating an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The lock directory or a lock file.
    #[error("allocating the VM's uid")]
    RunDir(#[from] RunDirError),
    /// The user forced root.
    #[error("--uid {uid} --gid {gid}: the processes must run unprivileged (not 0)")]
    Privileged {
        /// The uid asked for.
        uid: u32,
        /// The gid asked for.
        gid: u32,
    },
    /// Every uid of the range is taken.
    #[error(
        "allocating the VM's uid: every uid of {range} is in use (--uid-range sets another range)"
    )]
    Exhausted {
        /// The range.
        range: UidRange,
    },
}

/// The identity a VM's processes run as.
#[derive(Debug)]
pub struct Identity {
    /// Their uid.
    pub uid: u32,
    /// Their gid.
    pub gid: u32,
    /// The lock that makes an allocated uid this VM's alone (none for one forced by
    /// `--uid/--gid`); held until the identity is dropped.
    lock: Option<File>,
}

impl Identity {
    /// What `--uid`, `--gid` and `--uid-range` ask for: the identity forced (either of
    /// `uid` and `gid` alone sets both), else one allocated from `range`.
    pub fn choose(
        uid: Option<u32>,
        gid: Option<u32>,
        range: UidRange,
    ) -> Result<Identity, IdentityError> {
        let (uid, gid) = match (uid, gid) {
            (None, None) => return Identity::allocate(range),
            (Some(uid), None) => (uid, uid),
            (None, Some(gid)) => (gid, gid),
            (Some(uid), Some(gid)) => (uid, gid),
        };
        if uid == 0 || gid == 0 {
            return Err(IdentityError::Privileged { uid, gid });
        }
        Ok(Identity::forced(uid, gid))
    }

    /// An identity the user chose: not allocated, not locked, possibly shared.
    pub fn forced(uid: u32, gid: u32) -> Identity {
        Identity {
            uid,
            gid,
            lock: None,
        }
    }

    /// Whether it was allocated (so no other VM runs as it).
    pub fn is_own(&self) -> bool {
        self.lock.is_some()
    }

    /// Allocates a uid of `range` no other VM has and no user or group is; gid = uid.
    pub fn allocate(range: UidRange) -> Result<Identity, IdentityError> {
        allocate_in(&uids_dir(), range, known_to_the_database)
    }
}

/// Allocates from `range` in `dir`, skipping what `taken` says is someone else's, starting
/// where the last allocation in `dir` stopped.
fn allocate_in(
    dir: &Path,
    range: UidRange,
    taken: impl Fn(u32) -> bool,
) -> Result<Identity, IdentityError> {
    run_dir::ensure_dir(dir)?;
    let hint = Hint::lock(&dir.join("next"))?;
    let start = hint
        .read()
        .filter(|h| (range.first..=range.last).contains(h));
    let start = start.unwrap_or(range.first);
    let candidates = (start..=range.last).chain(range.first..start);
    for uid in candidates {
        if RESERVED.contains(&uid) || taken(uid) {
            continue;
        }
        let path = dir.join(format!("{uid}.lock"));
        let file = run_dir::open_lock(&path)?;
        if run_dir::try_lock(&file, &path)? {
            let next = if uid == range.last {
                range.first
            } else {
                uid + 1
            };
            hint.write(next);
            return Ok(Identity {
                uid,
                gid: uid,
                lock: Some(file),
            });
        }
    }
    Err(IdentityError::Exhausted { range })
}

/// Where the next search starts: a file holding a uid in decimal, locked while a launcher
/// allocates (allocations are serialised; each is a few lock attempts).
struct Hint {
    file: File,
}

impl Hint {
    fn lock(path: &Path) -> Result<Hint, IdentityError> {
        let file = run_dir::open_lock(path)?;
        loop {
            // Blocking: the holder is another launcher's allocation, a few lock attempts
            // long (the lock goes with the descriptor, closed on drop, or with the process).
            let Err(source) = bulkhead::sys::files::flock(file.as_fd(), libc::LOCK_EX) else {
                return Ok(Hint { file });
            };
            if source.kind() != std::io::ErrorKind::Interrupted {
                return Err(IdentityError::RunDir(RunDirError::Io {
                    what: "locking",
                    path: path.to_path_buf(),
                    source,
                }));
            }
        }
    }

    /// The uid recorded, if the file holds one.
    fn read(&self) -> Option<u32> {
        let mut buf = [0u8; 16];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(buf.get(..n)?).ok()?.trim().parse().ok()
    }

    /// Records `uid` (best effort: a failure costs the next search a few more attempts).
    fn write(&self, uid: u32) {
        let text = format!("{uid:<10}\n");
        if let Err(e) = self.file.write_all_at(text.as_bytes(), 0) {
            log::debug!("recording the next uid: {e}");
        }
    }
}

/// Whether the user or the group database (files, LDAP, ... through NSS) knows `id`.
fn known_to_the_database(id: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    // A lookup that fails (not only "no such entry") counts as unknown, as before.
    let user = User::from_uid(Uid::from_raw(id)).ok().flatten();
    user.is_some() || Group::from_gid(Gid::from_raw(id)).ok().flatten().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::tests::scratch;

    const RANGE: UidRange = UidRange {
        first: 3_000_000_000,
        last: 3_000_000_002,
    };

    /// Allocates from `dir` until it gets `uid` (for up to a second), or what it got last.
    /// Other tests of this binary start programs: a fork copies every open descriptor,
    /// a released lock's too, until the child executes, so a release shows a moment late.
    fn allocate_expecting(dir: &Path, uid: u32) -> Identity {
        let mut got = allocate_in(dir, RANGE, |_| false).unwrap();
        for _ in 0..100 {
            if got.uid == uid {
                break;
            }
            drop(got);
            std::thread::sleep(std::time::Duration::from_millis(10));
            got = allocate_in(dir, RANGE, |_| false).unwrap();
        }
        got
    }

    #[test]
    fn ranges_parse_and_never_include_root_or_nobody() {
        assert_eq!(
            "100-200".parse(),
            Ok(UidRange {
                first: 100,
                last: 200
            })
        );
        for bad in ["0-10", "65000-66000", "5-4", "x-4", "7", "1-4294967295"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
        assert_eq!(DEFAULT_RANGE.to_string().parse(), Ok(DEFAULT_RANGE));
        // The default range holds no uid of this host's users or groups at all.
        assert!(!known_to_the_database(DEFAULT_RANGE.first));
        assert!(known_to_the_database(0), "root is in every user database");
    }

    #[test]
    fn two_allocations_differ_and_a_released_one_is_reused() {
        let dir = scratch("uids");
        let free = |_| false;
        let a = allocate_in(&dir, RANGE, free).unwrap();
        let b = allocate_in(&dir, RANGE, free).unwrap();
        assert_ne!(a.uid, b.uid);
        assert_eq!((a.gid, b.gid), (a.uid, b.uid));
        assert!(a.is_own() && b.is_own());
        let first = a.uid;
        drop(a);
        let c = allocate_expecting(&dir, first);
        assert_eq!(c.uid, first, "a released uid is free again");
        // The range is exhausted while the three are held.
        let d = allocate_in(&dir, RANGE, free).unwrap();
        let none = allocate_in(&dir, RANGE, free);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(none, Err(IdentityError::Exhausted { .. })));
        assert_eq!(
            [b.uid, c.uid, d.uid]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn a_forced_identity_is_taken_as_given_but_never_root() {
        let choose = |uid, gid| Identity::choose(uid, gid, RANGE);
        let id = choose(Some(65534), Some(65534)).unwrap();
        assert_eq!((id.uid, id.gid, id.is_own()), (65534, 65534, false));
        let id = choose(Some(1000), None).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        let id = choose(None, Some(1001)).unwrap();
        assert_eq!((id.uid, id.gid), (1001, 1001));
        assert!(matches!(
            choose(Some(1000), Some(0)),
            Err(IdentityError::Privileged { uid: 1000, gid: 0 })
        ));
        assert!(choose(Some(0), None).is_err());
    }

    #[test]
    fn uids_in_use_elsewhere_are_skipped() {
        let dir = scratch("uids-skip");
        let a = allocate_in(&dir, RANGE, |id| id == RANGE.first).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(a.uid, RANGE.first + 1);
    }

    #[test]
    fn a_released_uid_waits_for_the_range_to_go_round() {
        let dir = scratch("uids-rotate");
        let wide = UidRange {
            first: 3_000_000_000,
            last: 3_000_000_099,
        };
        let a = allocate_in(&dir, wide, |_| false).unwrap();
        let first = a.uid;
        drop(a);
        // Not the one just released: the search goes on from the next.
        let b = allocate_in(&dir, wide, |_| false).unwrap();
        assert_eq!(b.uid, first + 1);
        // A garbled hint costs a search from the start, never a shared uid.
        std::fs::write(dir.join("next"), "garbage").unwrap();
        let c = allocate_in(&dir, wide, |_| false).unwrap();
        assert_ne!(c.uid, b.uid);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_allocations_never_share_a_uid() {
        let dir = scratch("uids-concurrent");
        let wide = UidRange {
            first: 3_000_000_000,
            last: 3_000_000_999,
        };
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    (0..8)
                        .map(|_| allocate_in(&dir, wide, |_| false).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let held: Vec<Identity> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let uids: std::collections::HashSet<u32> = held.iter().map(|i| i.uid).collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(uids.len(), 16 * 8, "every holder has a uid of its own");
    }

    #[test]
    fn a_program_started_by_the_holder_does_not_hold_its_uid() {
        let dir = scratch("uids-exec");
        let a = allocate_in(&dir, RANGE, |_| false).unwrap();
        let uid = a.uid;
        // A child executed while the lock is held (the launcher's processes are) gets no
        // copy of the lock: it is close-on-exec.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        drop(a);
        let again = allocate_expecting(&dir, uid);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(again.uid, uid);
    }
}
