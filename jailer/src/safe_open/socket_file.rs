//! The file of a Unix socket bulkhead bound at a path a user named, removed when the
//! socket's user is done with it, and only if the path still names that socket: another
//! file someone put at the path meanwhile (or a socket of another bind) is kept.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which file a bound socket is: its device and inode, read (lstat) right after bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    /// The socket file at `at` (not following a link); `None` if it is not a socket.
    pub(super) fn of(at: &Path) -> io::Result<Option<SocketId>> {
        let meta = std::fs::symlink_metadata(at)?;
        Ok(meta.file_type().is_socket().then(|| SocketId {
            dev: meta.dev(),
            ino: meta.ino(),
        }))
    }
}

/// A bound socket's file, unlinked on drop if it is still the one bound.
#[derive(Debug)]
pub struct SocketFile {
    /// The path as the user gave it, for messages.
    path: PathBuf,
    /// The path through its directory's fd, as bound (nothing of the user's path is
    /// resolved again).
    at: PathBuf,
    /// That directory (keeps `at` valid).
    _dir: File,
    /// The socket bound there.
    id: SocketId,
}

impl SocketFile {
    /// The socket `id` bound at `at` in `dir`, which the user named `path`.
    pub(super) fn new(path: &Path, at: PathBuf, dir: File, id: SocketId) -> SocketFile {
        SocketFile {
            path: path.to_owned(),
            at,
            _dir: dir,
            id,
        }
    }

    /// Unlinks the socket if the path still names it; returns whether it did.
    ///
    /// lstat then unlink, through the directory's fd and with the `--open-as` identity
    /// that bound it: a link at the path is looked at, never followed. (Someone who may
    /// write the directory could still swap the file between the two calls; they could
    /// have removed that file themselves.)
    pub fn remove(&self) -> io::Result<bool> {
        crate::open_as::run(|| match SocketId::of(&self.at) {
            Ok(Some(id)) if id == self.id => std::fs::remove_file(&self.at).map(|()| true),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })?
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match self.remove() {
            Ok(true) => {}
            Ok(false) => log::info!(
                "{} kept: it is no longer the socket bulkhead made",
                self.path.display()
            ),
            Err(e) => log::warn!("removing socket {}: {e}", self.path.display()),
        }
    }
}
