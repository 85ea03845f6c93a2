//! The walk: a path resolved one component at a time, each step checked for an unsafe
//! ownership transition (see the module above), and the final open.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, openat, readlinkat, FcntlArg, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode};

use super::{Access, SafeOpenError, MAX_SYMLINKS};

/// An object reached by the walk: its `O_PATH` fd, its stat and its path so far.
struct Node {
    fd: OwnedFd,
    st: libc::stat,
    shown: PathBuf,
}

/// The walk over one path.
struct Walk<'a> {
    path: &'a Path,
    opener: u32,
    symlinks: u32,
}

/// As [`super::open`], for identity `opener` (its own steps are never refused).
pub fn open_as(path: &Path, access: Access, opener: u32) -> Result<File, SafeOpenError> {
    let mut walk = Walk {
        path,
        opener,
        symlinks: 0,
    };
    walk.run(access)
}

impl Walk<'_> {
    fn run(&mut self, access: Access) -> Result<File, SafeOpenError> {
        let mut todo: VecDeque<OsString> = components(self.path.as_os_str());
        let mut cur = if self.path.is_absolute() {
            self.root()?
        } else {
            self.node(AT_FDCWD, OsStr::new("."), PathBuf::from("."))?
        };
        // The directories above `cur`, for "..".
        let mut parents: Vec<Node> = Vec::new();
        while let Some(name) = todo.pop_front() {
            let last = todo.is_empty();
            if name == "." {
                continue;
            }
            if name == ".." {
                let up = match parents.pop() {
                    Some(p) => p,
                    None => self.node(cur.fd.as_fd(), OsStr::new(".."), cur.shown.join(".."))?,
                };
                self.check_step(&cur, &up)?;
                cur = up;
                continue;
            }
            let shown = cur.shown.join(&name);
            let next = match self.node(cur.fd.as_fd(), &name, shown.clone()) {
                Ok(n) => n,
                Err(e) if last && access == Access::Append && is_missing(&e) => {
                    return self.create(&cur, &name, shown);
                }
                Err(e) => return Err(e),
            };
            self.check_step(&cur, &next)?;
            match next.st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {
                    self.symlinks += 1;
                    if self.symlinks > MAX_SYMLINKS {
                        return Err(SafeOpenError::TooManySymlinks {
                            path: self.path.to_owned(),
                        });
                    }
                    let target = self.readlink(&next)?;
                    let mut rest = components(&target);
                    rest.extend(todo.drain(..));
                    todo = rest;
                    if target.as_bytes().first() == Some(&b'/') {
                        let root = self.root()?;
                        // Jumping to "/" is a step from the symlink.
                        self.check_step(&next, &root)?;
                        parents.clear();
                        cur = root;
                    } else {
                        // The target is resolved in the symlink's directory, from the
                        // symlink: its owner vouches for where it leads.
                        cur.st.st_uid = next.st.st_uid;
                        cur.shown = next.shown;
                    }
                }
                libc::S_IFDIR if !last || access == Access::Directory => {
                    parents.push(std::mem::replace(&mut cur, next));
                }
                _ if last => return self.finish(&cur, &name, &next, access),
                _ => {
                    return Err(self.io(
                        "resolving",
                        &next.shown,
                        io::Error::from_raw_os_error(libc::ENOTDIR),
                    ))
                }
            }
        }
        // The path ended on a directory (or on "." / "..").
        if access == Access::Directory && cur.st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(File::from(cur.fd));
        }
        Err(self.io(
            "opening",
            &cur.shown,
            io::Error::from_raw_os_error(if access == Access::Directory {
                libc::ENOTDIR
            } else {
                libc::EISDIR
            }),
        ))
    }

    /// The final open of `name` in `dir`, which the walk found as `seen`.
    fn finish(
        &self,
        dir: &Node,
        name: &OsStr,
        seen: &Node,
        access: Access,
    ) -> Result<File, SafeOpenError> {
        if access == Access::Directory {
            return Err(self.io(
                "opening",
                &seen.shown,
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        if seen.st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(self.io(
                "opening",
                &seen.shown,
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        // A FIFO (or a socket) where a file was meant: opening a FIFO blocks until someone
        // opens its other end, so a user who owns the directory could hang the launcher.
        if matches!(
            seen.st.st_mode & libc::S_IFMT,
            libc::S_IFIFO | libc::S_IFSOCK
        ) {
            return Err(self.io(
                "opening",
                &seen.shown,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a FIFO or socket, not a file or device",
                ),
            ));
        }
        self.check_links(dir, seen)?;
        let flags = match access {
            Access::Read => OFlag::O_RDONLY,
            Access::ReadWrite => OFlag::O_RDWR,
            _ => OFlag::O_WRONLY | OFlag::O_APPEND,
        };
        // O_NONBLOCK: a FIFO swapped in after the walk looked must not block the open either
        // (the fstat below then refuses it as another object); cleared once open.
        let file = self.openat(
            dir,
            name,
            &seen.shown,
            flags | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        let st = self.fstat(&file, &seen.shown)?;
        if (st.st_dev, st.st_ino) != (seen.st.st_dev, seen.st.st_ino) {
            return Err(SafeOpenError::Swapped {
                path: self.path.to_owned(),
                component: seen.shown.clone(),
            });
        }
        fcntl(&file, FcntlArg::F_SETFL(flags & OFlag::O_APPEND))
            .map_err(|e| self.io("opening", &seen.shown, e.into()))?;
        Ok(file)
    }

    /// Creates `name` in `dir` (mode 0600, refusing anything already there: it appeared
    /// after the walk looked, so it was not checked).
    fn create(&self, dir: &Node, name: &OsStr, shown: PathBuf) -> Result<File, SafeOpenError> {
        self.openat(
            dir,
            name,
            &shown,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        )
    }

    fn openat(
        &self,
        dir: &Node,
        name: &OsStr,
        shown: &Path,
        flags: OFlag,
        mode: Mode,
    ) -> Result<File, SafeOpenError> {
        let c = self.cstring(name, shown)?;
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        openat(&dir.fd, c.as_c_str(), flags, mode)
            .map(File::from)
            .map_err(|e| self.io("opening", shown, e.into()))
    }

    /// Refuses a regular file with several links owned by someone other than the
    /// non-root owner of its directory.
    fn check_links(&self, dir: &Node, file: &Node) -> Result<(), SafeOpenError> {
        let regular = file.st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let dir_uid = dir.st.st_uid;
        if regular && file.st.st_nlink > 1 && dir_uid != 0 && file.st.st_uid != dir_uid {
            return Err(SafeOpenError::HardLink {
                path: self.path.to_owned(),
                component: file.shown.clone(),
                owner: file.st.st_uid,
                links: file.st.st_nlink,
                dir_uid,
            });
        }
        Ok(())
    }

    /// Refuses a step from `from` to `to` that leaves a non-root user's objects.
    fn check_step(&self, from: &Node, to: &Node) -> Result<(), SafeOpenError> {
        let (a, b) = (from.st.st_uid, to.st.st_uid);
        if a == 0 || a == b || a == self.opener {
            return Ok(());
        }
        Err(SafeOpenError::UnsafeTransition {
            path: self.path.to_owned(),
            from: from.shown.clone(),
            from_uid: a,
            component: to.shown.clone(),
            to_uid: b,
        })
    }

    fn root(&self) -> Result<Node, SafeOpenError> {
        self.node(AT_FDCWD, OsStr::new("/"), PathBuf::from("/"))
    }

    /// Looks up `name` in `dir` without following it.
    fn node(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: PathBuf,
    ) -> Result<Node, SafeOpenError> {
        let c = self.cstring(name, &shown)?;
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir, c.as_c_str(), flags, Mode::empty())
            .map_err(|e| self.io("resolving", &shown, e.into()))?;
        let st = self.fstat(&fd, &shown)?;
        Ok(Node { fd, st, shown })
    }

    fn fstat(&self, fd: impl AsFd, shown: &Path) -> Result<libc::stat, SafeOpenError> {
        // O_PATH fds are allowed.
        fstat(fd).map_err(|e| self.io("examining", shown, e.into()))
    }

    fn readlink(&self, link: &Node) -> Result<OsString, SafeOpenError> {
        // An empty name: the symlink `link.fd` (an O_PATH fd of it) itself.
        readlinkat(&link.fd, c"").map_err(|e| self.io("reading symlink", &link.shown, e.into()))
    }

    fn cstring(&self, name: &OsStr, shown: &Path) -> Result<CString, SafeOpenError> {
        CString::new(name.as_bytes()).map_err(|_| {
            self.io(
                "resolving",
                shown,
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })
    }

    fn io(&self, what: &'static str, component: &Path, source: io::Error) -> SafeOpenError {
        SafeOpenError::Io {
            path: self.path.to_owned(),
            what,
            component: component.to_owned(),
            source,
        }
    }
}

/// The components of `path` ("/" separated, empty ones dropped).
fn components(path: &OsStr) -> VecDeque<OsString> {
    path.as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsStr::from_bytes(c).to_owned())
        .collect()
}

fn is_missing(e: &SafeOpenError) -> bool {
    e.io_kind() == Some(io::ErrorKind::NotFound)
}
