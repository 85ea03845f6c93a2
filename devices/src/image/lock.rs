//! QEMU-compatible image locks: open-file-description (OFD) byte-range locks, as QEMU's
//! `file-posix` driver takes them, so that QEMU, qemu-storage-daemon, qemu-img and bulkhead
//! refuse to write one image at once.
//!
//! # The scheme (QEMU's `block/file-posix.c`, `raw_apply_lock_bytes`/`raw_check_lock_bytes`)
//!
//! QEMU's block layer gives every user of a file a set of *permissions* it holds and a set
//! it *shares* with others, out of four (`BLK_PERM_*` in `include/block/block-common.h`):
//! bit 0 consistent read, bit 1 write, bit 2 write-unchanged, bit 3 resize. On the file,
//! byte `100 + n` is read-locked (a shared, `F_RDLCK`, one-byte OFD lock) for each
//! permission `n` held, and byte `200 + n` for each permission `n` *not* shared. Then it
//! checks, with `F_OFD_GETLK` and a write-lock probe (which any other description's read
//! lock on the byte conflicts with): for each permission it holds, that nobody locked
//! `200 + n` (someone refuses to share it); for each permission it does not share, that
//! nobody locked `100 + n` (someone holds it). Read locks never conflict with each other,
//! so taking them never fails; the check after taking them is what refuses, and since
//! both sides lock before they check, two processes starting at once cannot both pass.
//! Libvirt uses byte 0, hence the offsets. (QEMU 6.1 and older also locked bytes 104/204
//! for a permission since removed; QEMU 7.2 locks and checks 100..=103 and 200..=203, and
//! so does this module.)
//!
//! # Which permissions each role takes, and the QEMU configuration it matches
//!
//! The permissions land on QEMU's `file` node, the one that holds the descriptor; what
//! reaches it is the guest device's request passed down through the format node:
//!
//! | role | holds (bytes 100+n) | does not share (200+n) | QEMU's equivalent |
//! | --- | --- | --- | --- |
//! | `Writer { resize: false }` | read, write (100, 101) | write (201) | a writable `virtio-blk` on a `raw` image: the device (`blkconf_apply_backend_options`) asks for consistent read and write and shares consistent read, write-unchanged and resize; the raw format passes it through as a filter |
//! | `Writer { resize: true }` | read, write, resize (100, 101, 103) | write, resize (201, 203) | the same device on a `qcow2`: the qcow2 node's file child holds metadata, so `bdrv_default_perms_for_storage` adds write and resize (a qcow2 grows) and stops sharing write and resize |
//! | `Reader` | read (100) | write, resize (201, 203) | a `virtio-blk` with `readonly=on` on a `qcow2` (metadata child: no write or resize shared). On a raw file QEMU would share resize (no 203); bulkhead does not, because `bulkhead-blk` takes the image's size once at start, and nobody may shrink it under the guest |
//! | `Backing` | read (100) | write, resize (201, 203) | a backing file under a qcow2 (`bdrv_default_perms_for_cow`: consistent read only, shares consistent read and write-unchanged unless the parent shares write, which a guest device does not) |
//!
//! So: two writers refuse each other (each holds 101 and locks 201); a reader refuses a
//! writer and the other way round (the reader locks 201, the writer 101); readers and
//! backing users share (each holds only 100 and refuses only 101/103); a backing file
//! refuses writers, so nobody writes a base image an overlay is served on. `qemu-img info`
//! without `-U` (consistent read, shares only read and write-unchanged) is refused on an
//! image a bulkhead writer holds, exactly as on one QEMU writes.
//!
//! Locks belong to the open file description, so they stay held by whichever process holds
//! a descriptor of it (the launcher takes them, then passes the descriptor to
//! `bulkhead-blk`), and go when the last one is closed. Two descriptions of one file in one
//! process conflict just as two processes would.
//!
//! # Naming the holder
//!
//! `F_OFD_GETLK` says a lock conflicts but not whose it is (it reports pid -1 for OFD
//! locks, as `/proc/locks` does). The holder is found in `/proc/PID/fdinfo/FD`, whose
//! `lock:` lines list the locks held through that descriptor's open file description
//! (see [`holder`]). That works for every process whose `fdinfo` this one may read (all of
//! them as root), names every process sharing the description (a launcher and its
//! `bulkhead-blk` both show), and finds nothing for a holder on another host (NFS) or one
//! that has just exited; the message then says no more than that the image is in use.

mod holder;

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// `BLK_PERM_CONSISTENT_READ`.
const PERM_READ: u8 = 1 << 0;
/// `BLK_PERM_WRITE`.
const PERM_WRITE: u8 = 1 << 1;
/// `BLK_PERM_WRITE_UNCHANGED`.
const PERM_WRITE_UNCHANGED: u8 = 1 << 2;
/// `BLK_PERM_RESIZE`.
const PERM_RESIZE: u8 = 1 << 3;
/// How many permissions QEMU (7.2 and later) locks a byte for.
const PERMS: u8 = 4;
/// `RAW_LOCK_PERM_BASE`: byte `100 + n` is locked while permission `n` is held.
const PERM_BASE: i64 = 100;
/// `RAW_LOCK_SHARED_BASE`: byte `200 + n` is locked while permission `n` is not shared.
const SHARED_BASE: i64 = 200;

/// What a process does with an image, which decides the bytes it locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockRole {
    /// The image the guest writes; `resize` when its file may grow (qcow2).
    Writer {
        /// The file may grow.
        resize: bool,
    },
    /// The image the guest sees, read-only: shares reading, not writing.
    Reader,
    /// A backing file of a chain: read, and must not be written under us.
    Backing,
}

impl LockRole {
    /// The permissions held and the permissions shared (QEMU's `perm`, `shared_perm`).
    fn perms(self) -> (u8, u8) {
        match self {
            LockRole::Writer { resize: false } => (
                PERM_READ | PERM_WRITE,
                PERM_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE,
            ),
            LockRole::Writer { resize: true } => (
                PERM_READ | PERM_WRITE | PERM_RESIZE,
                PERM_READ | PERM_WRITE_UNCHANGED,
            ),
            LockRole::Reader | LockRole::Backing => (PERM_READ, PERM_READ | PERM_WRITE_UNCHANGED),
        }
    }
}

/// What permission `n` is, in a message.
fn perm_name(n: u8) -> &'static str {
    match 1 << n {
        PERM_READ => "reading",
        PERM_WRITE => "writing",
        PERM_WRITE_UNCHANGED => "unchanging writes",
        _ => "resizing",
    }
}

/// Why an image can't be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds a lock that conflicts.
    #[error("disk image {name} is in use{holder}: {what} (lock=off skips this check)")]
    Conflict {
        /// The path.
        name: String,
        /// ` by PROCESS (pid N)` where known, else empty.
        holder: String,
        /// What the other process holds, e.g. "another process has it open for writing".
        what: String,
    },
    /// `fcntl` failed.
    #[error("locking disk image {name}: {source}")]
    Os {
        /// The path.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Takes `role`'s locks on `file` (called `name` in messages), or refuses it. On a refusal
/// the bytes taken are released again (the file itself stays open).
pub fn lock(file: &File, name: &str, role: LockRole) -> Result<(), LockError> {
    let (perm, shared) = role.perms();
    let result = apply(file, name, perm, !shared).and_then(|()| check(file, name, perm, shared));
    if result.is_err() {
        // Only unlocks: it cannot conflict, and a failure leaves nothing worse than the
        // refusal already says (the locks go when the caller closes the file).
        let _ = apply_type(file, 0xff, 0xff, libc::F_UNLCK);
    }
    result
}

/// Read-locks byte `100 + n` for each permission in `perm` and `200 + n` for each in
/// `unshared`.
fn apply(file: &File, name: &str, perm: u8, unshared: u8) -> Result<(), LockError> {
    apply_type(file, perm, unshared, libc::F_RDLCK).map_err(|e| match e {
        // A write lock someone else holds on one of our bytes (not QEMU, which only ever
        // read-locks): a conflict all the same.
        Errno::EAGAIN | Errno::EACCES => LockError::Conflict {
            name: name.to_owned(),
            holder: String::new(),
            what: "another process holds a write lock on its lock bytes".into(),
        },
        e => LockError::Os {
            name: name.to_owned(),
            source: e.into(),
        },
    })
}

/// Sets lock type `l_type` on the bytes of `perm` and `unshared`.
fn apply_type(file: &File, perm: u8, unshared: u8, l_type: libc::c_int) -> Result<(), Errno> {
    for n in 0..PERMS {
        for (set, base) in [(perm, PERM_BASE), (unshared, SHARED_BASE)] {
            if set & (1 << n) != 0 {
                let lock = flock(l_type, base + i64::from(n));
                fcntl(file, FcntlArg::F_OFD_SETLK(&lock))?;
            }
        }
    }
    Ok(())
}

/// QEMU's check: nobody else refuses to share what we hold (`200 + n`), nor holds what we
/// do not share (`100 + n`).
fn check(file: &File, name: &str, perm: u8, shared: u8) -> Result<(), LockError> {
    for n in 0..PERMS {
        if perm & (1 << n) != 0 {
            let byte = SHARED_BASE + i64::from(n);
            if locked_by_another(file, name, byte)? {
                return Err(conflict(
                    file,
                    name,
                    byte,
                    format!(
                        "another process does not let others use it for {}",
                        perm_name(n)
                    ),
                ));
            }
        }
    }
    for n in 0..PERMS {
        if shared & (1 << n) == 0 {
            let byte = PERM_BASE + i64::from(n);
            if locked_by_another(file, name, byte)? {
                return Err(conflict(
                    file,
                    name,
                    byte,
                    format!("another process has it open for {}", perm_name(n)),
                ));
            }
        }
    }
    Ok(())
}

/// A conflict on `byte`, with its holder where `/proc` tells.
fn conflict(file: &File, name: &str, byte: i64, what: String) -> LockError {
    let holders = holder::holders(file, byte as u64);
    let holder = if holders.is_empty() {
        String::new()
    } else {
        let named: Vec<String> = holders.iter().map(ToString::to_string).collect();
        format!(" by {}", named.join(", "))
    };
    LockError::Conflict {
        name: name.to_owned(),
        holder,
        what,
    }
}

/// Whether another open file description holds a lock on `byte` (a write-lock probe, as
/// `qemu_lock_fd_test(fd, byte, 1, true)`; our own description's locks never conflict).
fn locked_by_another(file: &File, name: &str, byte: i64) -> Result<bool, LockError> {
    let mut probe = flock(libc::F_WRLCK, byte);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(|e| LockError::Os {
        name: name.to_owned(),
        source: e.into(),
    })?;
    Ok(i32::from(probe.l_type) != libc::F_UNLCK)
}

/// A one-byte lock request at `byte` (`l_pid` 0, as OFD locks require).
fn flock(l_type: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: `flock` is plain old data (integers); all-zero is a valid value, and every
    // field that matters is set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = l_type as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A scratch file, removed when dropped; [`Scratch::open`] gives a new open file
    /// description of it each time.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let path = std::env::temp_dir()
                .join(format!("bulkhead-lock-{tag}-{}.img", std::process::id()));
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
            Scratch(path)
        }

        fn open(&self) -> File {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0)
                .unwrap()
        }

        fn name(&self) -> String {
            self.0.display().to_string()
        }

        fn lock(&self, role: LockRole) -> Result<File, LockError> {
            let f = self.open();
            lock(&f, &self.name(), role).map(|()| f)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The lock bytes (100..=104, 200..=204) some description of `s` holds, as seen from a
    /// new one.
    fn locked_bytes(s: &Scratch) -> Vec<i64> {
        let probe = s.open();
        (100..=104)
            .chain(200..=204)
            .filter(|&b| locked_by_another(&probe, "probe", b).unwrap())
            .collect()
    }

    /// [`locked_bytes`] once they are none, or after a second: another test's thread
    /// forking (to run qemu-io) holds a copy of every descriptor until its child execs.
    fn unlocked_soon(s: &Scratch) -> Vec<i64> {
        for _ in 0..100 {
            if locked_bytes(s).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        locked_bytes(s)
    }

    const WRITER: LockRole = LockRole::Writer { resize: false };
    const QCOW2_WRITER: LockRole = LockRole::Writer { resize: true };

    #[test]
    fn each_role_locks_qemus_bytes() {
        for (role, bytes) in [
            (WRITER, vec![100, 101, 201]),
            (QCOW2_WRITER, vec![100, 101, 103, 201, 203]),
            (LockRole::Reader, vec![100, 201, 203]),
            (LockRole::Backing, vec![100, 201, 203]),
        ] {
            let s = Scratch::new("bytes");
            let held = s.lock(role).unwrap();
            assert_eq!(locked_bytes(&s), bytes, "{role:?}");
            drop(held);
            assert_eq!(unlocked_soon(&s), Vec::<i64>::new(), "{role:?} after close");
        }
    }

    #[test]
    fn two_descriptions_in_one_process_conflict_as_two_processes_would() {
        let writers = [WRITER, QCOW2_WRITER];
        let readers = [LockRole::Reader, LockRole::Backing];
        for first in writers.iter().chain(&readers) {
            for second in writers.iter().chain(&readers) {
                let s = Scratch::new("pairs");
                let _held = s.lock(*first).unwrap();
                let shares = readers.contains(first) && readers.contains(second);
                match s.lock(*second) {
                    Ok(_) => assert!(shares, "{second:?} let in beside {first:?}"),
                    Err(LockError::Conflict { name, holder, what }) => {
                        assert!(!shares, "{second:?} refused beside {first:?}: {what}");
                        assert_eq!(name, s.name());
                        // The holder is this process, through the first description.
                        let me = format!("(pid {})", std::process::id());
                        assert!(holder.contains(&me), "{holder:?} lacks {me}");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn a_refused_lock_leaves_no_bytes_behind_and_a_closed_one_frees_the_image() {
        let s = Scratch::new("refused");
        let first = s.lock(WRITER).unwrap();
        let e = s.lock(WRITER).unwrap_err().to_string();
        assert!(
            e.contains(&format!("disk image {} is in use by ", s.name()))
                && e.contains("another process does not let others use it for writing")
                && e.contains("lock=off"),
            "{e}"
        );
        // The loser keeps its file open: it must hold no lock byte.
        let loser = s.open();
        assert!(lock(&loser, &s.name(), WRITER).is_err());
        drop(first);
        assert_eq!(unlocked_soon(&s), Vec::<i64>::new());
        let _next = s.lock(WRITER).unwrap();
        drop(loser);
    }

    #[test]
    fn a_reader_refuses_a_writer_with_a_message_saying_so() {
        let s = Scratch::new("reader");
        let _reader = s.lock(LockRole::Reader).unwrap();
        let e = s.lock(WRITER).unwrap_err().to_string();
        assert!(
            e.contains("another process does not let others use it for writing"),
            "{e}"
        );
        drop(_reader);
        let _writer = s.lock(WRITER).unwrap();
        let e = s.lock(LockRole::Reader).unwrap_err().to_string();
        assert!(e.contains("another process has it open for writing"), "{e}");
    }

    #[test]
    fn a_write_lock_on_a_lock_byte_is_a_conflict() {
        let s = Scratch::new("wrlck");
        let other = s.open();
        fcntl(&other, FcntlArg::F_OFD_SETLK(&flock(libc::F_WRLCK, 100))).unwrap();
        let e = s.lock(LockRole::Reader).unwrap_err().to_string();
        assert!(e.contains("holds a write lock"), "{e}");
    }

    /// QEMU's own tools see the locks. On a raw image: `qemu-io` writing is refused
    /// beside a writer and beside a reader, `qemu-io -r` reads beside a writer (QEMU's
    /// readers share writing). On a qcow2: `qemu-img info` (which does not share writing
    /// on a qcow2; on a raw file it takes no lock at all) is refused beside a qcow2 writer
    /// and let in with `-U` and beside a reader.
    #[test]
    fn qemu_sees_the_locks() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            let msg = "qemu-img (Debian package qemu-utils) is not installed";
            assert!(std::env::var("CI").is_err(), "{msg}");
            eprintln!("SKIPPED: qemu_sees_the_locks: {msg}");
            return;
        }
        let qemu = |tool: &str, args: &[&str], s: &Scratch| {
            let out = std::process::Command::new(tool)
                .args(args)
                .arg(&s.0)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout),
            )
        };
        let write = ["-f", "raw", "-c", "write 0 512"];
        let s = Scratch::new("qemu");
        let writer = s.lock(WRITER).unwrap();
        let (ok, out) = qemu("qemu-io", &write, &s);
        assert!(!ok && out.contains("Failed to get \"write\" lock"), "{out}");
        let (ok, out) = qemu("qemu-io", &["-r", "-f", "raw", "-c", "read 0 512"], &s);
        assert!(ok, "{out}");
        drop(writer);
        let reader = s.lock(LockRole::Reader).unwrap();
        let (ok, out) = qemu("qemu-io", &write, &s);
        assert!(!ok && out.contains("Failed to get \"write\" lock"), "{out}");
        drop(reader);
        let (ok, out) = qemu("qemu-io", &write, &s);
        assert!(ok, "{out}");

        let q = Scratch::new("qemu-qcow2");
        // `qemu-img create` takes the size after the file name.
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q.0)
            .arg("1M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let writer = q.lock(QCOW2_WRITER).unwrap();
        let (ok, out) = qemu("qemu-img", &["info"], &q);
        assert!(
            !ok && out.contains("Failed to get shared \"write\" lock"),
            "{out}"
        );
        let (ok, out) = qemu("qemu-img", &["info", "-U"], &q);
        assert!(ok, "{out}");
        drop(writer);
        let _reader = q.lock(LockRole::Reader).unwrap();
        let (ok, out) = qemu("qemu-img", &["info"], &q);
        assert!(ok, "{out}");
    }
}
