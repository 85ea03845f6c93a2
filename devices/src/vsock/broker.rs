//! Guest-initiated streams reach host listeners through the launcher: this process may not
//! create sockets or name paths (seccomp, landlock, an empty root), so for a guest
//! connecting to CID 2 port P it asks the launcher's broker over an inherited socket, and
//! the launcher connects `<uds>_P` (under its rule for paths a user names) and passes the
//! connected socket back with SCM_RIGHTS. The process can reach no other path.
//!
//! Wire: the request is the port, 4 bytes little endian; the answer is 8 bytes, the port
//! and an errno, little endian (0: the connected socket is attached). The port in the
//! answer keeps the two sides in step: an answer that comes after its request timed out
//! (a host listener whose backlog is full makes the launcher's connect wait) is read and
//! dropped before the next request's own.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// How long the launcher may take to answer (it connects a local socket: instantly, or
/// refused).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most stale answers read before a request's own.
const STALE_ANSWERS: usize = 64;

/// The socket to the launcher's broker.
#[derive(Debug)]
pub struct Broker {
    socket: UnixStream,
}

impl Broker {
    /// A broker reached over `socket`; sets its timeouts (before any filter is installed).
    pub fn new(socket: UnixStream) -> io::Result<Broker> {
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        socket.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Broker { socket })
    }

    /// A socket connected to the host listener for guest-initiated connections to `port`.
    pub fn connect(&mut self, port: u32) -> io::Result<UnixStream> {
        self.socket.write_all(&port.to_le_bytes())?;
        // Stale answers (to requests that timed out) come first; a bounded number.
        for _ in 0..STALE_ANSWERS {
            let mut answer = [0u8; 8];
            let (n, file) = self
                .socket
                .recv_with_fd(&mut answer)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if n < answer.len() {
                self.socket.read_exact(&mut answer[n..])?;
            }
            let [p0, p1, p2, p3, e0, e1, e2, e3] = answer;
            if u32::from_le_bytes([p0, p1, p2, p3]) != port {
                continue;
            }
            return match (i32::from_le_bytes([e0, e1, e2, e3]), file) {
                (0, Some(f)) => Ok(UnixStream::from(OwnedFd::from(f))),
                (0, None) => Err(io::ErrorKind::InvalidData.into()),
                (errno, _) => Err(io::Error::from_raw_os_error(errno)),
            };
        }
        Err(io::ErrorKind::InvalidData.into())
    }
}

/// The launcher's side: answers one request read from `socket` with `connect(port)`.
/// Returns `Ok(false)` when the vsock process closed its end.
pub fn answer(
    socket: &mut UnixStream,
    connect: impl FnOnce(u32) -> io::Result<UnixStream>,
) -> io::Result<bool> {
    let mut port = [0u8; 4];
    match socket.read_exact(&mut port) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let answer = |errno: i32| {
        let mut a = [0u8; 8];
        a[..4].copy_from_slice(&port);
        a[4..].copy_from_slice(&errno.to_le_bytes());
        a
    };
    match connect(u32::from_le_bytes(port)) {
        Ok(stream) => {
            socket
                .send_with_fd(&answer(0)[..], std::os::fd::AsRawFd::as_raw_fd(&stream))
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::ECONNREFUSED);
            socket.write_all(&answer(errno))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_answer_is_dropped() {
        let (ours, mut launcher) = UnixStream::pair().unwrap();
        let mut broker = Broker::new(ours).unwrap();
        // An answer to an earlier request (port 1) is waiting before port 2's.
        let mut stale = [0u8; 8];
        stale[..4].copy_from_slice(&1u32.to_le_bytes());
        stale[4..].copy_from_slice(&libc::ETIMEDOUT.to_le_bytes());
        launcher.write_all(&stale).unwrap();
        let server = std::thread::spawn(move || {
            answer(&mut launcher, |_| {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            })
            .unwrap()
        });
        let e = broker.connect(2).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(server.join().unwrap());
    }

    #[test]
    fn a_connected_socket_comes_back_and_a_refusal_is_an_error() {
        let (ours, mut launcher) = UnixStream::pair().unwrap();
        let mut broker = Broker::new(ours).unwrap();
        let server = std::thread::spawn(move || {
            let mut peers = Vec::new();
            assert!(answer(&mut launcher, |port| {
                assert_eq!(port, 6000);
                let (a, b) = UnixStream::pair()?;
                peers.push(b);
                Ok(a)
            })
            .unwrap());
            assert!(answer(&mut launcher, |_| Err(io::Error::from_raw_os_error(
                libc::ENOENT
            )))
            .unwrap());
            assert!(!answer(&mut launcher, |_| unreachable!()).unwrap());
            peers
        });
        let mut s = broker.connect(6000).unwrap();
        let e = broker.connect(7).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        drop(broker);
        let mut peers = server.join().unwrap();
        s.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        peers[0].read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }
}
