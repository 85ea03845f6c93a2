//! `bulkhead run --open-as UID:GID`: the paths a user names are opened with that identity's
//! permissions instead of root's (libvirt's answer: open as the VM's owner), on top of the
//! ownership rule of [`crate::safe_open`], which applies either way.
//!
//! Linux keeps credentials per thread (glibc only makes `setuid` and friends look
//! process-wide by repeating them on every thread). So each open runs on a short-lived
//! thread of its own that first takes the identity for file access alone: its supplementary
//! groups cleared, fsgid and fsuid set by raw system calls. A non-root fsuid loses the
//! capabilities that bypass file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
//! CAP_FOWNER, ...), so the kernel checks that identity's permissions; the thread ends with
//! the open, and the fd it made is the launcher's like any other.

use std::io;
use std::sync::OnceLock;

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

/// An identity to open paths as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Parses `UID:GID`.
pub fn parse(s: &str) -> Result<Identity, String> {
    let (uid, gid) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected UID:GID (numbers)"))?;
    let number = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|&n| n != u32::MAX)
            .ok_or_else(|| format!("{s:?}: {v:?} is not a uid or gid number"))
    };
    Ok(Identity {
        uid: number(uid)?,
        gid: number(gid)?,
    })
}

/// Opens every path from now on as `identity` (once; later calls are ignored).
pub fn configure(identity: Identity) {
    let _ = IDENTITY.set(identity);
}

/// The identity paths are opened as: `--open-as`, or this process's own.
pub fn opener_uid() -> u32 {
    match IDENTITY.get() {
        Some(id) => id.uid,
        None => nix::unistd::geteuid().as_raw(),
    }
}

/// Runs `f` with the file-access identity of `--open-as` (on a thread of its own), or
/// here when there is none.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let Some(id) = IDENTITY.get().copied() else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("open-as".into())
            .spawn_scoped(s, move || {
                take(id)?;
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("the open-as thread panicked"))?
    })
}

/// Takes `id` for file access on this thread only.
fn take(id: Identity) -> io::Result<()> {
    // The system call, changing this thread's groups only (glibc's wrapper would change
    // every thread's).
    bulkhead::sys::drop_groups_this_thread()?;
    // setfsgid/setfsuid (per-thread by nature; glibc's wrappers are the bare system calls)
    // return the previous value whether or not they succeeded: asking again with an invalid
    // id (-1, which changes nothing) tells what is in force.
    setfsgid(Gid::from_raw(id.gid));
    let gid = setfsgid(Gid::from_raw(u32::MAX)).as_raw();
    setfsuid(Uid::from_raw(id.uid));
    let uid = setfsuid(Uid::from_raw(u32::MAX)).as_raw();
    if (gid, uid) != (id.gid, id.uid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("could not take fsuid {} fsgid {}", id.uid, id.gid),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            parse("4242:100"),
            Ok(Identity {
                uid: 4242,
                gid: 100
            })
        );
        for bad in ["4242", "a:b", "1:", ":1", "4294967295:1", "-1:1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_thread_takes_the_identity_and_loses_root_s_reach() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let path = std::env::temp_dir().join(format!("bulkhead-open-as-{}", std::process::id()));
        std::fs::write(&path, b"root only").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let id = Identity {
            uid: 4242,
            gid: 4242,
        };
        let denied = std::thread::scope(|s| {
            s.spawn(|| {
                take(id).unwrap();
                std::fs::File::open(&path).map(drop)
            })
            .join()
            .unwrap()
        });
        // This thread is still root.
        assert!(std::fs::File::open(&path).is_ok());
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            denied.map_err(|e| e.kind()),
            Err(io::ErrorKind::PermissionDenied)
        );
    }
}
