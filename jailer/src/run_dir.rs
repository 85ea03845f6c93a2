//! `/run/bulkhead`: where launchers keep the locks they hold for their whole life — one
//! saying the launcher is alive (`launcher-<pid>.lock`, see [`crate::liveness`]) and one per
//! identity a VM runs as (`uids/<uid>.lock`, see [`crate::identity`]). A lock is an
//! `flock(LOCK_EX)` on a file of that directory, taken without waiting; the kernel drops it
//! when the launcher ends, however it ends, so a lock can never be left behind by a
//! crash. The directory is root's alone (0700): only root may create, take or remove a lock.
//! It also holds the launchers' copy of KVM's supported CPUID (`kvm-cpuid`, see
//! `launch::kvm_cpuid`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory.
pub const RUN_DIR: &str = "/run/bulkhead";

/// Errors with the directory or a lock file in it.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Creating or opening it failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Someone else could reach into it: not ours to trust.
    #[error("{path} is not a directory that only root may write to (mode {mode:o}, owner {uid}); remove it")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
}

/// Creates `dir` (mode 0700) and its parents if missing, and checks that it is a real
/// directory (not a symlink) owned by the caller that nobody else may write to.
pub fn ensure_dir(dir: &Path) -> Result<(), RunDirError> {
    let io_err = |what| {
        move |source| RunDirError::Io {
            what,
            path: dir.to_path_buf(),
            source,
        }
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating")(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspecting"))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(RunDirError::Unsafe {
            path: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// Opens (creating it, mode 0600) lock file `path`: close-on-exec, so no program the
/// launcher starts inherits it, and never through a symlink.
pub fn open_lock(path: &Path) -> Result<File, RunDirError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // std adds O_CLOEXEC to every open.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| RunDirError::Io {
            what: "opening lock file",
            path: path.to_path_buf(),
            source,
        })
}

/// Takes `file`'s lock without waiting: `Ok(false)` when another open file holds it. The
/// lock lasts as long as the open file (std's `File::try_lock` is newer than our MSRV).
pub fn try_lock(file: &File, path: &Path) -> Result<bool, RunDirError> {
    loop {
        let Err(source) = bulkhead::sys::files::flock(file.as_fd(), libc::LOCK_EX | libc::LOCK_NB)
        else {
            return Ok(true);
        };
        match source.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => {
                return Err(RunDirError::Io {
                    what: "locking",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Whether `file` (locked) is still the file at `path`: someone who removes a lock file
/// does so holding its lock, so a lock taken on a file that was removed meanwhile is
/// worthless and must be taken again on the new one.
pub fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory for a test, removed by the caller.
    pub(crate) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-{name}-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_directory_is_private_and_checked() {
        let base = scratch("rundir");
        let dir = base.join("a/b");
        ensure_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Again: it exists and is fine.
        ensure_dir(&dir).unwrap();
        // A directory others may write to is refused, and so is a symlink to a good one.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let refused = [ensure_dir(&open), ensure_dir(&link)];
        let _ = std::fs::remove_dir_all(&base);
        for r in refused {
            assert!(matches!(r, Err(RunDirError::Unsafe { .. })), "{r:?}");
        }
    }

    #[test]
    fn a_lock_is_exclusive_until_its_file_is_closed() {
        let base = scratch("lock");
        ensure_dir(&base).unwrap();
        let path = base.join("x.lock");
        let first = open_lock(&path).unwrap();
        assert!(try_lock(&first, &path).unwrap());
        let second = open_lock(&path).unwrap();
        assert!(!try_lock(&second, &path).unwrap());
        drop(first);
        // Other tests of this binary fork: a child keeps a copy of `first` (and its lock)
        // until it executes, a moment.
        let taken = (0..100).any(|_| {
            let ok = try_lock(&second, &path).unwrap();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ok
        });
        assert!(taken);
        assert!(still_linked(&second, &path));
        std::fs::remove_file(&path).unwrap();
        assert!(!still_linked(&second, &path));
        // A lock file is never opened through a symlink.
        let link = base.join("link.lock");
        std::os::unix::fs::symlink(base.join("elsewhere"), &link).unwrap();
        let through_link = open_lock(&link);
        let _ = std::fs::remove_dir_all(&base);
        assert!(through_link.is_err());
    }
}
