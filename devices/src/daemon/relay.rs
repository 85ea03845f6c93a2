//! Serving a frontend on an already-connected socket.
//!
//! `vhost-user-backend` (0.24) only serves a connection it made itself, by accepting on a
//! listener or connecting to a path; it can't adopt a connected socket such as the
//! socketpair end bulkhead's launcher hands a device process. So for `--fd` with a connected
//! socket the daemon accepts on a private listener instead, and a relay copies vhost-user
//! messages, with their file descriptors, between that internal connection and the
//! frontend's socket.
//!
//! Only the control channel goes through the relay (feature negotiation, the memory table,
//! vring set-up, config reads): the data path is shared memory and eventfds, which the
//! relay passes on as descriptors and never touches again.
//!
//! Messages are relayed whole (a 12-byte header, then as many body bytes as the header
//! says), each with its descriptors, in one `sendmsg`: the receiving library reads a
//! message's descriptors with its header, so they must arrive on the header's bytes.
//!
//! The private listener is a Unix socket in the abstract namespace under a random name.
//! In the confined process it sits in an empty network namespace where nobody else can
//! reach it; run standalone, another process could race to connect first, so once the
//! daemon has accepted, the listener is closed and our own connection is checked to be the
//! one accepted (a connection still queued on a closed listener is hung up).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::thread::{self, JoinHandle};

use log::{debug, warn};
use vhost::vhost_user::Listener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user message header: request, flags, body size (u32 each).
const HEADER_SIZE: usize = 12;
/// Largest body relayed; vhost-user bodies are at most 4 KiB (`MAX_MSG_SIZE`), this leaves
/// room for future messages without letting a peer make us buffer much.
const MAX_BODY: usize = 64 * 1024;
/// Most descriptors one message carries (vhost's `MAX_ATTACHED_FD_ENTRIES`).
const MAX_FDS: usize = 32;

/// Why the relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Creating or connecting the internal socket failed.
    #[error("setting up the internal vhost-user socket: {0}")]
    Setup(#[source] io::Error),
    /// Another process connected to the internal socket before us.
    #[error("another process connected to the internal vhost-user socket; refusing to serve it")]
    Hijacked,
    /// Starting a relay thread failed.
    #[error("starting the vhost-user relay thread: {0}")]
    Thread(#[source] io::Error),
}

/// The private listener for the daemon, with our connection to it already queued.
pub struct Pending {
    /// What to give `VhostUserDaemon::start`.
    pub listener: Listener,
    inner: UnixStream,
}

/// Creates the private listener and connects to it, so the daemon's accept gets our
/// connection.
pub fn prepare() -> Result<Pending, RelayError> {
    let name = format!(
        "bulkhead-vhost-user-{}-{:016x}",
        std::process::id(),
        random_u64()
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(RelayError::Setup)?;
    let listener = UnixListener::bind_addr(&addr).map_err(RelayError::Setup)?;
    let inner = UnixStream::connect_addr(&addr).map_err(RelayError::Setup)?;
    Ok(Pending {
        listener: Listener::from(listener),
        inner,
    })
}

impl Pending {
    /// Call once the daemon has accepted: closes the listener, checks the daemon accepted
    /// our connection, and starts relaying between it and `frontend`.
    pub fn start(self, frontend: UnixStream) -> Result<Relay, RelayError> {
        let Pending { listener, inner } = self;
        drop(listener);
        if hung_up(&inner).map_err(RelayError::Setup)? {
            return Err(RelayError::Hijacked);
        }
        Relay::start(frontend, inner)
    }
}

/// A running relay: two threads, one per direction.
#[derive(Debug)]
pub struct Relay {
    frontend: UnixStream,
    inner: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(frontend: UnixStream, inner: UnixStream) -> Result<Relay, RelayError> {
        let clone = |s: &UnixStream| s.try_clone().map_err(RelayError::Setup);
        let mut threads = Vec::new();
        for (name, from, to) in [
            ("vu-relay-in", clone(&frontend)?, clone(&inner)?),
            ("vu-relay-out", clone(&inner)?, clone(&frontend)?),
        ] {
            let thread = thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    match pump(&from, &to) {
                        Ok(()) => debug!("{name}: peer closed"),
                        Err(e) => warn!("{name}: {e}"),
                    }
                    // Either side gone: take the other down too, so both threads end and
                    // the daemon sees the disconnect.
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                })
                .map_err(RelayError::Thread)?;
            threads.push(thread);
        }
        Ok(Relay {
            frontend,
            inner,
            threads,
        })
    }

    /// Cuts both connections and waits for the relay threads.
    pub fn stop(mut self) {
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.inner.shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Copies whole messages from `from` to `to` until `from` closes between messages.
fn pump(from: &UnixStream, to: &UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER_SIZE + MAX_BODY];
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(MAX_FDS);
    loop {
        fds.clear();
        let (header, body) = buf.split_at_mut(HEADER_SIZE);
        if !recv_exact(from, header, &mut fds)? {
            return Ok(());
        }
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if size > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("vhost-user message body of {size} bytes"),
            ));
        }
        if !recv_exact(from, &mut body[..size], &mut fds)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        send_all(to, &buf[..HEADER_SIZE + size], &fds)?;
    }
}

/// Fills `buf`, collecting any descriptors that come along. Returns false if the peer
/// closed before the first byte.
fn recv_exact(from: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
        // SAFETY: the iovec describes `rest`, which we borrow mutably for the call.
        let result = unsafe { from.recv_with_fds(&mut iov, &mut raw) };
        let (n, nfds) = match result {
            Ok(r) => r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        };
        for &fd in &raw[..nfds] {
            // SAFETY: recvmsg just installed these descriptors in our table for us to own.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors attached to one vhost-user message",
            ));
        }
        if n == 0 {
            return if got == 0 && fds.is_empty() {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    Ok(true)
}

/// Sends `buf`, the descriptors riding on its first byte.
fn send_all(to: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    let mut attach: &[RawFd] = &raw;
    while sent < buf.len() {
        match to.send_with_fds(&[&buf[sent..]], attach) {
            Ok(n) => {
                sent += n;
                attach = &[];
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(())
}

/// Whether the peer of `s` has gone (hung up or reset), without blocking.
fn hung_up(s: &UnixStream) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: poll reads and writes the one pollfd we pass, for a zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n >= 0 {
            return Ok(pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A random number for the listener's name (so names don't collide between processes).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Uniqueness, not secrecy, is what the name needs; the accept check guards the rest.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn message(request: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn messages_and_descriptors_cross_whole() {
        let pending = prepare().unwrap();
        // What the daemon does: accept on the private listener.
        let server = pending.listener.accept().unwrap().unwrap();
        let (frontend, vmm) = UnixStream::pair().unwrap();
        let relay = pending.start(frontend).unwrap();

        // Two messages in one write, the second carrying a descriptor.
        let (mut probe_a, probe_b) = UnixStream::pair().unwrap();
        let first = message(1, &[]);
        let second = message(5, &[7u8; 40]);
        vmm.send_with_fds(&[&first[..]], &[]).unwrap();
        vmm.send_with_fds(&[&second[..]], &[probe_b.as_raw_fd()])
            .unwrap();
        drop(probe_b);

        let mut got = [0u8; 12];
        let mut raw = [-1; 4];
        let mut iov = [libc::iovec {
            iov_base: got.as_mut_ptr().cast(),
            iov_len: 12,
        }];
        // SAFETY: iovec over `got`.
        let (n, nfds) = unsafe { server.recv_with_fds(&mut iov, &mut raw) }.unwrap();
        assert_eq!((n, nfds), (12, 0), "first header, no descriptor");
        assert_eq!(got[..], first[..]);
        let mut iov = [libc::iovec {
            iov_base: got.as_mut_ptr().cast(),
            iov_len: 12,
        }];
        // SAFETY: iovec over `got`.
        let (n, nfds) = unsafe { server.recv_with_fds(&mut iov, &mut raw) }.unwrap();
        assert_eq!(
            (n, nfds),
            (12, 1),
            "the descriptor arrives with its own header"
        );
        let mut body = [0u8; 40];
        (&server).read_exact(&mut body).unwrap();
        assert_eq!(body, [7u8; 40]);
        // The descriptor is the other end of our probe pair.
        // SAFETY: recvmsg gave us this descriptor.
        let mut passed = unsafe { UnixStream::from_raw_fd(raw[0]) };
        passed.write_all(b"hi").unwrap();
        let mut hi = [0u8; 2];
        probe_a.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi");

        // Replies go back.
        (&server)
            .write_all(&message(1, &8u64.to_le_bytes()))
            .unwrap();
        let mut reply = [0u8; 20];
        (&vmm).read_exact(&mut reply).unwrap();
        assert_eq!(&reply[12..], &8u64.to_le_bytes());

        // The frontend hanging up reaches the daemon's side.
        drop(vmm);
        let mut rest = Vec::new();
        (&server).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        relay.stop();
    }

    #[test]
    fn only_the_accepted_connection_survives_the_listener() {
        // The check `Pending::start` relies on: when the listener closes, a connection
        // still queued on it is hung up, an accepted one is not.
        let addr = SocketAddr::from_abstract_name(
            format!("bulkhead-relay-test-{:016x}", random_u64()).as_bytes(),
        )
        .unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let first = UnixStream::connect_addr(&addr).unwrap();
        let second = UnixStream::connect_addr(&addr).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        assert!(!hung_up(&first).unwrap());
        assert!(!hung_up(&second).unwrap());
        drop(listener);
        assert!(!hung_up(&first).unwrap(), "accepted");
        assert!(hung_up(&second).unwrap(), "left in the queue");
    }
}
