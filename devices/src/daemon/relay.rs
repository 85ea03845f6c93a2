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
//! For a backend that tracks inflight I/O ([`super::inflight`]), the relay also offers
//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, hides it from the library (which would drop
//! the connection on GET/SET_INFLIGHT_FD), answers those two messages itself, and tells the
//! queues when SET_VRING_BASE restarts one. Replies from both threads go out whole under
//! one lock, and a message the relay answers is answered before the next one is read, so
//! the frontend sees its replies in order.
//!
//! The private listener is a Unix socket in the abstract namespace under a random name.
//! In the confined process it sits in an empty network namespace where nobody else can
//! reach it; run standalone, another process could race to connect first, so once the
//! daemon has accepted, the listener is closed and our own connection is checked to be the
//! one accepted (a connection still queued on a closed listener is hung up).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use log::{debug, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{FrontendReq, VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::Listener;
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::inflight::{InflightSlot, INFLIGHT_SHMFD};
use crate::sys;

/// vhost-user message header: request, flags, body size (u32 each).
const HEADER_SIZE: usize = 12;
/// Largest body relayed; vhost-user bodies are at most 4 KiB (`MAX_MSG_SIZE`), this leaves
/// room for future messages without letting a peer make us buffer much.
const MAX_BODY: usize = 64 * 1024;
/// Most descriptors one message carries (vhost's `MAX_ATTACHED_FD_ENTRIES`).
const MAX_FDS: usize = 32;
/// Header flags: protocol version 1, a reply, the frontend wants an ack.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

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
    /// With `inflight`, the relay handles inflight tracking for the backend (see the
    /// module's documentation).
    pub fn start(
        self,
        frontend: UnixStream,
        inflight: Option<Arc<InflightSlot>>,
    ) -> Result<Relay, RelayError> {
        let Pending { listener, inner } = self;
        drop(listener);
        if hung_up(&inner).map_err(RelayError::Setup)? {
            return Err(RelayError::Hijacked);
        }
        Relay::start(frontend, inner, inflight)
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
    fn start(
        frontend: UnixStream,
        inner: UnixStream,
        inflight: Option<Arc<InflightSlot>>,
    ) -> Result<Relay, RelayError> {
        let clone = |s: &UnixStream| s.try_clone().map_err(RelayError::Setup);
        // Held while a whole message goes to the frontend, from either thread.
        let to_frontend = Arc::new(Mutex::new(()));
        let mut threads = Vec::new();
        for (name, from, to, inbound) in [
            ("vu-relay-in", clone(&frontend)?, clone(&inner)?, true),
            ("vu-relay-out", clone(&inner)?, clone(&frontend)?, false),
        ] {
            let mut hook = Hook {
                slot: inflight.clone(),
                inbound,
                acked: false,
                reply_ack: false,
                lock: Arc::clone(&to_frontend),
            };
            let thread = thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    match pump(&from, &to, &mut hook) {
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

/// What one relay thread does besides copying: nothing without an inflight slot.
struct Hook {
    slot: Option<Arc<InflightSlot>>,
    /// Frontend to daemon (else daemon to frontend).
    inbound: bool,
    /// The frontend acked INFLIGHT_SHMFD.
    acked: bool,
    /// The frontend acked REPLY_ACK (NEED_REPLY is then honoured).
    reply_ack: bool,
    /// Held while a whole message goes to the frontend.
    lock: Arc<Mutex<()>>,
}

/// What to do with a message.
enum Verdict {
    /// Pass it on.
    Forward,
    /// Answered (or dropped) here.
    Handled,
}

impl Hook {
    /// Sends a whole message to the frontend under the lock.
    fn send_to_frontend(&self, to: &UnixStream, buf: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        send_raw(to, buf, fds)
    }

    /// Looks at (and may change or answer) one message. `frontend` is the frontend's end.
    fn on_message(
        &mut self,
        header: &[u8],
        body: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        frontend: &UnixStream,
    ) -> io::Result<Verdict> {
        let Some(slot) = self.slot.clone() else {
            return Ok(Verdict::Forward);
        };
        let code = le_u32(&header[0..4]);
        let flags = le_u32(&header[4..8]);
        let Ok(request) = FrontendReq::try_from(code) else {
            return Ok(Verdict::Forward);
        };
        if !self.inbound {
            // The library's answer to GET_PROTOCOL_FEATURES gains the inflight bit.
            if request == FrontendReq::GET_PROTOCOL_FEATURES
                && flags & REPLY != 0
                && body.len() == 8
            {
                let offered = le_u64(body) | INFLIGHT_SHMFD;
                body.copy_from_slice(&offered.to_le_bytes());
            }
            return Ok(Verdict::Forward);
        }
        match request {
            FrontendReq::SET_PROTOCOL_FEATURES if body.len() == 8 => {
                let acked = le_u64(body);
                self.acked = acked & INFLIGHT_SHMFD != 0;
                self.reply_ack = acked & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
                // The library never offered the bit: it must not see it acked.
                body.copy_from_slice(&(acked & !INFLIGHT_SHMFD).to_le_bytes());
                Ok(Verdict::Forward)
            }
            FrontendReq::SET_VRING_BASE if body.len() == 8 => {
                slot.vring_base(le_u32(&body[0..4]));
                Ok(Verdict::Forward)
            }
            FrontendReq::GET_INFLIGHT_FD | FrontendReq::SET_INFLIGHT_FD => {
                if !self.acked {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{request:?} without INFLIGHT_SHMFD negotiated"),
                    ));
                }
                let Some(asked) = inflight_body(body) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{request:?} with a {}-byte body", body.len()),
                    ));
                };
                if request == FrontendReq::GET_INFLIGHT_FD {
                    self.answer_get(&slot, code, &asked, frontend)?;
                } else {
                    let result = slot.set(&asked, fds.pop());
                    if let Err(e) = &result {
                        warn!("SET_INFLIGHT_FD refused: {e}");
                    } else {
                        debug!(
                            "inflight region set: {} queues of {}",
                            asked.num_queues, asked.queue_size
                        );
                    }
                    if self.reply_ack && flags & NEED_REPLY != 0 {
                        let status = u64::from(result.is_err());
                        let reply = message(code, &status.to_le_bytes());
                        self.send_to_frontend(frontend, &reply, &[])?;
                    }
                }
                Ok(Verdict::Handled)
            }
            _ => Ok(Verdict::Forward),
        }
    }

    /// GET_INFLIGHT_FD: the answer with the memfd, or (refused) a zero-sized answer with
    /// no descriptor, which the frontend takes as a failure.
    fn answer_get(
        &self,
        slot: &InflightSlot,
        code: u32,
        asked: &VhostUserInflight,
        frontend: &UnixStream,
    ) -> io::Result<()> {
        match slot.get(asked) {
            Ok((answer, file)) => {
                let reply = message(code, answer.as_slice());
                self.send_to_frontend(frontend, &reply, &[file.as_raw_fd()])
            }
            Err(e) => {
                warn!("GET_INFLIGHT_FD refused: {e}");
                let refused = VhostUserInflight::default();
                let reply = message(code, refused.as_slice());
                self.send_to_frontend(frontend, &reply, &[])
            }
        }
    }
}

/// A reply: `code`, version 1 with the reply flag, `body`.
fn message(code: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_SIZE + body.len());
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn inflight_body(body: &[u8]) -> Option<VhostUserInflight> {
    let mut value = VhostUserInflight::default();
    // Copied: the body sits unaligned in the relay's buffer.
    let bytes = value.as_mut_slice();
    if body.len() != bytes.len() {
        return None;
    }
    bytes.copy_from_slice(body);
    Some(value)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Copies whole messages from `from` to `to` until `from` closes between messages, letting
/// `hook` look at (change, or answer) each first.
fn pump(from: &UnixStream, to: &UnixStream, hook: &mut Hook) -> io::Result<()> {
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
        if let Verdict::Handled = hook.on_message(header, &mut body[..size], &mut fds, from)? {
            continue;
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if hook.inbound {
            send_raw(to, &buf[..HEADER_SIZE + size], &raw)?;
        } else {
            hook.send_to_frontend(to, &buf[..HEADER_SIZE + size], &raw)?;
        }
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
fn send_raw(to: &UnixStream, buf: &[u8], raw: &[RawFd]) -> io::Result<()> {
    let mut sent = 0;
    let mut attach: &[RawFd] = raw;
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
    let mut pfd = [PollFd::new(s.as_fd(), sys::POLLRDHUP)];
    loop {
        match poll(&mut pfd, PollTimeout::ZERO) {
            Ok(_) => {
                return Ok(sys::peer_hung_up(
                    &pfd[0],
                    PollFlags::POLLHUP | PollFlags::POLLERR,
                ))
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A random number for the listener's name (so names don't collide between processes).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if sys::getrandom(&mut bytes, false).is_err() {
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

    /// Receives one message's header into `got`, with the descriptors that came with it.
    fn recv_header(s: &UnixStream, got: &mut [u8; 12]) -> (usize, Vec<RawFd>) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut iov = [std::io::IoSliceMut::new(got)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg =
            recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let fds = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds,
                _ => Vec::new(),
            })
            .collect();
        (msg.bytes, fds)
    }

    #[test]
    fn messages_and_descriptors_cross_whole() {
        let pending = prepare().unwrap();
        // What the daemon does: accept on the private listener.
        let server = pending.listener.accept().unwrap().unwrap();
        let (frontend, vmm) = UnixStream::pair().unwrap();
        let relay = pending.start(frontend, None).unwrap();

        // Two messages in one write, the second carrying a descriptor.
        let (mut probe_a, probe_b) = UnixStream::pair().unwrap();
        let first = message(1, &[]);
        let second = message(5, &[7u8; 40]);
        vmm.send_with_fds(&[&first[..]], &[]).unwrap();
        vmm.send_with_fds(&[&second[..]], &[probe_b.as_raw_fd()])
            .unwrap();
        drop(probe_b);

        let mut got = [0u8; 12];
        let (n, raw) = recv_header(&server, &mut got);
        assert_eq!((n, raw.len()), (12, 0), "first header, no descriptor");
        assert_eq!(got[..], first[..]);
        let (n, raw) = recv_header(&server, &mut got);
        assert_eq!(
            (n, raw.len()),
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
