//! Where the frontend comes from: a socket path to listen on, or an inherited descriptor
//! that is either a listening socket (QEMU's `--fd` convention) or an already-connected
//! one (a socketpair end, as bulkhead's launcher passes).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use vhost::vhost_user::Listener;

/// How to reach the frontend, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `--socket-path PATH`: create a socket there and accept one frontend.
    Path(PathBuf),
    /// `--fd N`: an inherited socket, listening or connected.
    Fd(RawFd),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Path(p) => write!(f, "socket {}", p.display()),
            Endpoint::Fd(n) => write!(f, "socket fd {n}"),
        }
    }
}

/// The socket, ready for the daemon.
pub enum Connection {
    /// Accept one frontend on it.
    Listening(Listener),
    /// The frontend is already at the other end.
    Connected(UnixStream),
}

/// Why the socket can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Binding the socket path failed.
    #[error("listening on socket {path}: {source}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// The error from vhost.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The descriptor is not open, or not a socket.
    #[error("--fd {fd}: {source}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor is a socket, but not a Unix stream socket.
    #[error("--fd {fd}: not a Unix-domain stream socket")]
    NotUnixStream {
        /// The descriptor.
        fd: RawFd,
    },
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Listening(l) => write!(f, "Listening(fd {})", l.as_raw_fd()),
            Connection::Connected(s) => write!(f, "Connected({s:?})"),
        }
    }
}

impl Connection {
    /// Opens the endpoint. For `Endpoint::Fd` this takes ownership of the descriptor.
    pub fn open(endpoint: &Endpoint) -> Result<Connection, ConnectionError> {
        match endpoint {
            Endpoint::Path(path) => listen(path),
            Endpoint::Fd(fd) => {
                let owned =
                    take_fd(*fd).map_err(|source| ConnectionError::BadFd { fd: *fd, source })?;
                from_fd(owned, *fd)
            }
        }
    }
}

fn listen(path: &Path) -> Result<Connection, ConnectionError> {
    // `unlink = true`: a stale socket file from an earlier run would make bind fail.
    Listener::new(path, true)
        .map(Connection::Listening)
        .map_err(|source| ConnectionError::Listen {
            path: path.to_owned(),
            source,
        })
}

/// Takes ownership of an inherited descriptor, after checking that it is open.
pub fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    crate::sys::check_open(fd)?;
    // SAFETY: the descriptor is open (checked above) and was handed to this process on the
    // command line for it to own; the caller takes each number once, so nothing else in the
    // process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not for any child we might start.
    let _ = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    Ok(owned)
}

fn sockopt(fd: &OwnedFd, option: libc::c_int) -> io::Result<libc::c_int> {
    crate::sys::socket_int_option(fd, option)
}

/// Classifies an inherited socket: listening (SO_ACCEPTCONN) or connected.
fn from_fd(owned: OwnedFd, fd: RawFd) -> Result<Connection, ConnectionError> {
    let bad = |source| ConnectionError::BadFd { fd, source };
    if sockopt(&owned, libc::SO_DOMAIN).map_err(bad)? != libc::AF_UNIX
        || sockopt(&owned, libc::SO_TYPE).map_err(bad)? != libc::SOCK_STREAM
    {
        return Err(ConnectionError::NotUnixStream { fd });
    }
    if sockopt(&owned, libc::SO_ACCEPTCONN).map_err(bad)? != 0 {
        Ok(Connection::Listening(Listener::from(UnixListener::from(
            owned,
        ))))
    } else {
        Ok(Connection::Connected(UnixStream::from(owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn connected_and_listening_fds_are_told_apart() {
        let (a, _b) = UnixStream::pair().unwrap();
        let n = a.into_raw_fd();
        assert!(matches!(
            Connection::open(&Endpoint::Fd(n)).unwrap(),
            Connection::Connected(_)
        ));

        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let l = UnixListener::bind(dir.as_path().join("s")).unwrap();
        let n = l.into_raw_fd();
        assert!(matches!(
            Connection::open(&Endpoint::Fd(n)).unwrap(),
            Connection::Listening(_)
        ));
    }

    #[test]
    fn bad_fds_are_refused_with_the_number() {
        let err = Connection::open(&Endpoint::Fd(987_654)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--fd 987654: Bad file descriptor (os error 9)"
        );

        let f = std::fs::File::open("/dev/null").unwrap();
        let n = f.into_raw_fd();
        let err = Connection::open(&Endpoint::Fd(n)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("--fd {n}: ")), "{err}");

        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let n = d.into_raw_fd();
        let err = Connection::open(&Endpoint::Fd(n)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("--fd {n}: not a Unix-domain stream socket")
        );
    }

    #[test]
    fn socket_path_in_a_missing_directory_is_named() {
        let err = Connection::open(&Endpoint::Path("/nonexistent/dir/s.sock".into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("listening on socket /nonexistent/dir/s.sock: "),
            "{err}"
        );
    }
}
