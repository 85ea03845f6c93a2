//! Opening a path a user named, as root, without letting the path reach a file its owner
//! could not reach: the one rule for every file and socket directory bulkhead opens on a
//! user's behalf (disk images, console and serial files, kernel, initrd, socket
//! directories).
//!
//! The path is resolved here, one component at a time (`openat` with
//! `O_PATH|O_NOFOLLOW`, symlinks read with `readlinkat` and at most [`MAX_SYMLINKS`]
//! followed), so the kernel never follows a symlink for us. Each step from one object to
//! the next is checked for an **unsafe ownership transition**: from an object owned by a
//! non-root uid U (a directory, or a symlink found there) to an object owned by another uid
//! (root included) is refused, unless U is the identity opening the file. Stepping out of
//! root-owned objects is always fine. So `~mallory/vm.img -> /root/secret.img` is refused
//! (mallory's symlink leads to root's `/`), while mallory's own file in her home opens and
//! root's `/dev/disk/by-id/*` symlinks still work. This is systemd's `CHASE_SAFE` idea.
//!
//! A hard link is not a step the walk sees, so a regular file with more than one link,
//! owned by someone other than the (non-root) owner of its directory, is refused too.
//!
//! The final open is an `openat` on the resolved parent with `O_NOFOLLOW|O_NOCTTY|
//! O_CLOEXEC`, and its `fstat` must be the object the walk checked (a swap in between is
//! refused). Sockets are bound or connected through their resolved directory's fd
//! (`/proc/self/fd/N/NAME`), so nothing is resolved twice. With `--open-as`, everything
//! here runs with that identity's file permissions ([`crate::open_as`]).
//!
//! `walk.rs` is the walk and the final open, `error.rs` what is refused and why.

mod error;
mod private_umask;
mod socket_file;
#[cfg(test)]
mod tests;
mod walk;

pub use socket_file::SocketFile;
use socket_file::SocketId;

/// The umask sockets are bound with: mode 0600.
const SOCKET_UMASK: libc::mode_t = 0o177;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub use error::SafeOpenError;
pub use walk::open_as;

/// Most symlinks followed in one path (the kernel's own limit is 40).
pub const MAX_SYMLINKS: u32 = 32;

/// How the final object is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY` (kernel, initrd, read-only disk).
    Read,
    /// `O_RDWR` (a writable disk).
    ReadWrite,
    /// `O_WRONLY|O_APPEND`, created (mode 0600) if missing (console and serial files).
    Append,
    /// The path must be a directory; an `O_PATH` descriptor of it is returned (to create a
    /// socket in).
    Directory,
}

/// Opens `path` for `access`, resolving it under the rule above, as bulkhead's own identity
/// (root) or that of `--open-as` ([`crate::open_as`]).
pub fn open(path: &Path, access: Access) -> Result<File, SafeOpenError> {
    let opener = crate::open_as::opener_uid();
    crate::open_as::run(|| open_as(path, access, opener)).map_err(|source| SafeOpenError::Io {
        path: path.to_owned(),
        what: "taking the --open-as identity to open",
        component: path.to_owned(),
        source,
    })?
}

/// A Unix socket bound at a path a user named.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listening socket.
    pub listener: UnixListener,
    /// Its path through its directory's fd ([`in_dir`]): to change or remove the socket
    /// without resolving the user's path again.
    pub at: PathBuf,
    /// That directory (keeps `at` valid).
    pub dir: File,
    /// Which file the socket is (lstat right after bind), to remove it only if it still is.
    id: SocketId,
}

impl BoundSocket {
    /// The listening socket, and its file to be removed when dropped (if the path, given
    /// here as the user named it, still names this socket).
    pub fn removed_on_drop(self, path: &Path) -> (UnixListener, SocketFile) {
        (
            self.listener,
            SocketFile::new(path, self.at, self.dir, self.id),
        )
    }
}

/// Binds a Unix socket at `path`: its directory resolved under the rule, the socket made
/// there (as the `--open-as` identity, if any) with mode 0600 from the start (a private
/// umask, [`private_umask`]): only its owner (and root) may connect. `replace_socket`: a socket left at the path
/// (by an earlier run) is removed first; anything else there makes bind fail (EADDRINUSE).
pub fn bind_socket(path: &Path, replace_socket: bool) -> Result<BoundSocket, SafeOpenError> {
    let (dir, name) = socket_dir(path)?;
    let at = in_dir(&dir, &name);
    let bound = private_umask::run(SOCKET_UMASK, || {
        crate::open_as::run(|| {
            if replace_socket
                && std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_socket())
            {
                let _ = std::fs::remove_file(&at);
            }
            UnixListener::bind(&at)
        })
    })
    .and_then(|r| r)
    .and_then(|r| r);
    let listener = bound.map_err(|source| SafeOpenError::Io {
        path: path.to_owned(),
        what: "binding",
        component: path.to_owned(),
        source,
    })?;
    // Read at once: a socket file bulkhead made, in a directory the user may write.
    let id = SocketId::of(&at)
        .and_then(|id| id.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSOCK)))
        .map_err(|source| SafeOpenError::Io {
            path: path.to_owned(),
            what: "looking at the socket just bound at",
            component: path.to_owned(),
            source,
        })?;
    Ok(BoundSocket {
        listener,
        at,
        dir,
        id,
    })
}

/// Connects to the Unix socket at `path` (a vhost-user backend someone else started): its
/// directory resolved under the rule, the socket reached through it (as the `--open-as`
/// identity, if any), so a user's symlink cannot point bulkhead at a root-only socket.
pub fn connect_socket(path: &Path) -> Result<UnixStream, SafeOpenError> {
    let (dir, name) = socket_dir(path)?;
    let at = in_dir(&dir, &name);
    crate::open_as::run(|| UnixStream::connect(&at))
        .and_then(|r| r)
        .map_err(|source| SafeOpenError::Io {
            path: path.to_owned(),
            what: "connecting to",
            component: path.to_owned(),
            source,
        })
}

/// The directory `path` as an `O_PATH` descriptor, resolved under the rule, and the file
/// name in it: where a socket at `path` is to be created.
fn socket_dir(path: &Path) -> Result<(File, OsString), SafeOpenError> {
    let name = path
        .file_name()
        .filter(|n| *n != OsStr::new(".."))
        .ok_or_else(|| SafeOpenError::Io {
            path: path.to_owned(),
            what: "a socket needs a file name:",
            component: path.to_owned(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The message names the socket's path, not only its directory.
    let dir = open(parent, Access::Directory).map_err(|e| e.for_path(path))?;
    Ok((dir, name.to_owned()))
}

/// A path under `/proc/self/fd` naming `name` in directory `dir` (from [`socket_dir`]),
/// for `bind`: the kernel resolves the fd's link itself, so nothing is followed again.
fn in_dir(dir: &File, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}
