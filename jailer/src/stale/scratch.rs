//! The demo's scratch directories a killed launcher left: `bulkhead-<pid>-XXXXXX` in the
//! temporary directory, each holding one sparse `scratch.img` ([`crate::demo`]). Removed
//! only when everything about them is what the demo makes, so that nothing else a name
//! could be given (a symlink, another user's directory, a directory with more in it) is
//! ever touched: the name exactly, a directory (never followed), root's, mode 0700,
//! holding the image alone, itself a regular file of root's.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::demo::SCRATCH_NAME;

/// The length of mkdtemp's random suffix (`XXXXXX`).
const SUFFIX_LEN: usize = 6;

/// The launcher pid in a scratch directory's name, `bulkhead-<pid>-XXXXXX` exactly (the
/// suffix as mkdtemp makes it: six letters or digits).
fn scratch_dir_pid(name: &str) -> Option<u32> {
    let (pid, suffix) = name.strip_prefix("bulkhead-")?.split_once('-')?;
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let random = suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| b.is_ascii_alphanumeric());
    (digits && random).then(|| pid.parse().ok())?
}

/// Removes from `tmp` the scratch directories of launchers `running` says are gone, owned
/// by `owner`; returns the directories removed.
///
/// This launcher's own pid counts as running, unlike for the other leftovers: its demo
/// made its directory before the reaper runs (the flags come from it), and the random
/// suffix means a dead launcher's directory of the same pid collides with nothing; the
/// next launcher removes it.
pub fn reap_in(
    tmp: &Path,
    owner: u32,
    running: impl Fn(u32, Option<SystemTime>) -> bool,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = scratch_dir_pid(&name.to_string_lossy()) else {
            continue;
        };
        let path = entry.path();
        // lstat: a symlink of that name is not a directory, and is not followed.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if pid == std::process::id() || running(pid, meta.modified().ok()) {
            continue;
        }
        match remove_if_scratch(&path, &meta, owner) {
            Ok(true) => removed.push(path),
            Ok(false) => {}
            Err(e) => log::warn!(
                "removing stale scratch disk directory {}: {e}",
                path.display()
            ),
        }
    }
    removed
}

/// Removes scratch directory `dir` (whose lstat is `meta`) and its image if they are
/// exactly what the demo makes; returns whether it did.
fn remove_if_scratch(dir: &Path, meta: &std::fs::Metadata, owner: u32) -> io::Result<bool> {
    if !meta.file_type().is_dir() || meta.uid() != owner || meta.mode() & 0o7777 != 0o700 {
        return Ok(false);
    }
    // Opened without following a link, then checked to be the directory just looked at:
    // what is read and removed below is inside it, through its fd.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    let fmeta = opened.metadata()?;
    if (fmeta.dev(), fmeta.ino()) != (meta.dev(), meta.ino()) {
        return Ok(false);
    }
    // The kernel resolves the fd's link itself: nothing in `dir`'s path is followed again.
    let inside = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&inside)? {
        names.push(entry?.file_name());
        if names.len() > 1 {
            return Ok(false);
        }
    }
    if names.len() != 1 || names[0] != SCRATCH_NAME {
        return Ok(false);
    }
    let image = inside.join(SCRATCH_NAME);
    let imeta = std::fs::symlink_metadata(&image)?;
    if !imeta.file_type().is_file() || imeta.uid() != owner {
        return Ok(false);
    }
    std::fs::remove_file(&image)?;
    // rmdir removes only an empty directory and does not follow a link; only root can
    // rename a directory of root's in the (sticky) temporary directory.
    std::fs::remove_dir(dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
