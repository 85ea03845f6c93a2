//! The connection table: packets from the guest (tx queue) turned into host socket I/O,
//! host sockets and CONNECT clients turned into packets for the guest (rx queue). Knows
//! nothing of queues or vhost-user; tests drive it with packets and real socket pairs.
//!
//! Everything here is bounded: [`MAX_CONNECTIONS`] streams, [`MAX_PENDING`] host programs
//! still sending their CONNECT line, [`MAX_CONTROL`] control packets waiting for receive
//! buffers, and per stream the credit module's buffer. Anything a guest can put in a header
//! is handled: a packet that is not for us (source CID not the guest's, destination not
//! the host) is dropped and counted; a non-stream type, an unknown operation, data for no
//! stream or beyond its credit is answered with RST (the stream, if any, is gone).
//!
//! Host sockets are registered edge-triggered with the epoll the I/O thread waits on; a
//! stream marked readable is read only when the guest has credit and a buffer for it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;

use bulkhead_ratelimit::{debug_limited, warn_limited};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::broker::Broker;
use super::connection::{Connection, Flushed, State};
use super::hybrid::{self, Line, Pending};
use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::virtio::HOST_CID;

/// Most streams at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most host programs at once that have not finished their CONNECT line.
pub const MAX_PENDING: usize = 64;
/// Most control packets waiting for receive buffers; more are dropped (and counted).
pub const MAX_CONTROL: usize = 1024;
/// Largest payload accepted from the guest or sent to it in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a host program may take to send its CONNECT line, and the guest to answer a
/// REQUEST, before the client is closed (and the guest told RST).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// First host port given to host-initiated streams (as Firecracker's).
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Host ports start at a random point this far above [`FIRST_HOST_PORT`]: a restarted
/// backend's guest may still hold streams its predecessor opened (it learns they are gone
/// at its next packet, answered RST), and a new REQUEST on the same port pair as one of
/// those would be taken for a packet of the old stream.
const HOST_PORT_SPREAD: u32 = 1 << 29;

/// Where host ports start: [`FIRST_HOST_PORT`] plus a random offset below
/// [`HOST_PORT_SPREAD`].
fn first_host_port() -> u32 {
    let mut bytes = [0u8; 4];
    let offset = if crate::sys::getrandom(&mut bytes, true).is_ok() {
        u32::from_ne_bytes(bytes) % HOST_PORT_SPREAD
    } else {
        // Not secrecy, only a different start than the predecessor's: the pid differs.
        std::process::id().wrapping_mul(7919) % HOST_PORT_SPREAD
    };
    FIRST_HOST_PORT + offset
}

/// The epoll token of the hybrid listener.
pub const LISTENER_TOKEN: u64 = u64::MAX - 1;
/// The epoll token of the I/O thread's wake eventfd.
pub const WAKE_TOKEN: u64 = u64::MAX;

/// A stream's key: (host port, guest port).
pub type Key = (u32, u32);

/// What the guest got wrong, and what was dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets whose CIDs are not guest to host.
    pub wrong_cid: u64,
    /// Packets answered with RST (unknown stream, type, operation, bad length, overrun).
    pub reset: u64,
    /// Credit overruns among them.
    pub overruns: u64,
    /// Control packets dropped because the guest gave no receive buffers.
    pub control_dropped: u64,
    /// Streams or CONNECT clients refused for lack of room.
    pub refused: u64,
}

/// The connection table.
pub struct Muxer {
    guest_cid: u64,
    epoll: Epoll,
    listener: Option<UnixListener>,
    broker: Option<Broker>,
    conns: BTreeMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, Pending>,
    control: VecDeque<Header>,
    next_host_port: u32,
    /// Where the last data packet to the guest came from (round robin).
    last: Key,
    /// What went wrong.
    pub counters: Counters,
}

impl Muxer {
    /// A table for the guest `guest_cid`: host programs connect on `listener`,
    /// guest-initiated streams go through `broker`.
    pub fn new(
        guest_cid: u64,
        listener: Option<UnixListener>,
        broker: Option<Broker>,
    ) -> io::Result<Muxer> {
        let epoll = Epoll::new()?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )?;
        }
        Ok(Muxer {
            guest_cid,
            epoll,
            listener,
            broker,
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: first_host_port(),
            last: (0, 0),
            counters: Counters::default(),
        })
    }

    /// The epoll every socket is registered with.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Streams open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles epoll event `events` on `token`.
    pub fn event(&mut self, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept();
            return;
        }
        let Ok(fd) = RawFd::try_from(token) else {
            return;
        };
        if self.pending.contains_key(&fd) {
            self.read_connect(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(c) = self.conns.get_mut(&key) {
                if events.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                ) {
                    c.readable = true;
                }
            }
            if events.contains(EventSet::OUT) {
                self.service(key);
            }
        }
    }

    fn register(&self, fd: RawFd) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        self.accept_from(&listener);
        self.listener = Some(listener);
    }

    fn accept_from(&mut self, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING {
                        self.counters.refused += 1;
                        warn_limited!(
                            "vsock: more than {MAX_PENDING} CONNECT clients waiting; closing one"
                        );
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let p = Pending::new(stream);
                    if let Err(e) = self.register(fd) {
                        warn_limited!("vsock: watching a CONNECT client: {e}");
                        continue;
                    }
                    self.pending.insert(fd, p);
                    // It may have written its line already.
                    self.read_connect(fd);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn_limited!("vsock: accepting a host program: {e}");
                    return;
                }
            }
        }
    }

    fn read_connect(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        match p.read() {
            Line::More => {}
            Line::Bad => {
                self.pending.remove(&fd);
            }
            Line::Connect(port) => {
                if let Some(p) = self.pending.remove(&fd) {
                    self.host_connect(p.stream, port);
                }
            }
        }
    }

    /// A host program on `stream` (non-blocking, registered with the epoll) asked for
    /// the guest's `port`: REQUEST sent, the stream waits for the guest's answer. Returns
    /// its host port, `None` when the table is full (the stream is closed).
    pub fn host_connect(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        port: u32,
    ) -> Option<u32> {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.counters.refused += 1;
            return None;
        }
        let host_port = self.free_host_port(port);
        let key = (host_port, port);
        let mut c = Connection::new(stream, State::Connecting);
        c.readable = false;
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
        self.send_control(key, op::REQUEST, 0);
        Some(host_port)
    }

    fn free_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = p.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    /// Queues a control packet `op` on stream `key` (with its credit, if it exists).
    fn send_control(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            self.counters.control_dropped += 1;
            return;
        }
        let mut h = self.header(key, op);
        h.flags = flags;
        self.control.push_back(h);
    }

    fn header(&mut self, key: Key, op: u16) -> Header {
        let (buf_alloc, fwd_cnt) = self.conns.get_mut(&key).map_or((0, 0), |c| c.credit.tell());
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Resets stream `key`: RST to the guest, the host socket closed.
    fn reset(&mut self, key: Key) {
        self.counters.reset += 1;
        self.remove(key);
        self.send_control(key, op::RST, 0);
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
    }

    /// Handles a packet from the guest: `hdr`, and `payload`, the bytes after the header
    /// in its chain (at most [`MAX_PAYLOAD`]; `hdr.len` may claim more).
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.counters.wrong_cid += 1;
            debug_limited!(
                "vsock: dropping a packet from CID {} to CID {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.reset(key);
            }
            return;
        }
        let len = hdr.len as usize;
        if len > payload.len() || len > MAX_PAYLOAD {
            debug_limited!(
                "vsock: packet length {len} beyond its {} bytes",
                payload.len()
            );
            if hdr.op != op::RST {
                self.reset(key);
            }
            return;
        }
        let data = &payload[..len];
        if hdr.op == op::REQUEST {
            self.guest_connect(key, hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.reset(key);
            }
            return;
        };
        c.credit.peer(hdr.buf_alloc, hdr.fwd_cnt);
        // The guest may have granted credit: a stream with bytes waiting can go on.
        match hdr.op {
            op::RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                c.readable = true;
                let line = hybrid::ok_line(key.0);
                // The socket is new and empty: a short line fits.
                if (&c.stream).write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                }
            }
            op::RST => self.remove(key),
            op::SHUTDOWN => {
                c.guest_done_sending |= hdr.flags & SHUTDOWN_SEND != 0;
                c.guest_done_receiving |= hdr.flags & SHUTDOWN_RCV != 0;
                self.service(key);
            }
            op::RW if c.state == State::Established && !c.guest_done_sending => {
                if let Err(e) = c.take(data) {
                    self.counters.overruns += 1;
                    debug_limited!("vsock: stream {key:?}: {e}");
                    self.reset(key);
                    return;
                }
                self.service(key);
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.send_control(key, op::CREDIT_UPDATE, 0),
            _ => self.reset(key),
        }
    }

    /// A guest connecting to host port `key.0`: through the broker to `<uds>_<port>`.
    fn guest_connect(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.counters.refused += 1;
            self.reset(key);
            return;
        }
        let stream = match self.broker.as_mut().map(|b| b.connect(key.0)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                debug_limited!("vsock: the guest's connection to port {}: {e}", key.0);
                self.send_control(key, op::RST, 0);
                return;
            }
            None => {
                self.send_control(key, op::RST, 0);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if stream.set_nonblocking(true).is_err() || self.register(fd).is_err() {
            self.send_control(key, op::RST, 0);
            return;
        }
        let mut c = Connection::new(stream, State::Established);
        c.credit.peer(hdr.buf_alloc, hdr.fwd_cnt);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, c);
        self.send_control(key, op::RESPONSE, 0);
    }

    /// Writes what stream `key` holds to its host socket; resets or ends it as due; tells
    /// the guest its credit when enough was freed.
    fn service(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush() == Flushed::Broken {
            self.reset(key);
            return;
        }
        if c.finished() {
            self.remove(key);
            self.send_control(key, op::RST, 0);
            return;
        }
        if c.credit.update_due() && !c.guest_done_sending {
            self.send_control(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// Whether a CONNECT client or a host-initiated stream is waiting (the caller should
    /// call [`Muxer::expire`] now and then).
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty() || self.conns.values().any(|c| c.state == State::Connecting)
    }

    /// Closes CONNECT clients that did not finish their line, and host-initiated streams
    /// the guest did not answer, within [`CONNECT_TIMEOUT`] before `now` (RST to the guest).
    pub fn expire(&mut self, now: std::time::Instant) {
        let late =
            |since: std::time::Instant| now.saturating_duration_since(since) >= CONNECT_TIMEOUT;
        self.pending.retain(|_, p| !late(p.since));
        let stale: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Connecting && late(c.since))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.remove(key);
            self.send_control(key, op::RST, 0);
        }
    }

    /// Whether a control packet waits for a receive buffer.
    pub fn control_waiting(&self) -> bool {
        !self.control.is_empty()
    }

    /// The next packet for the guest, with up to `buf.len()` bytes of data read into
    /// `buf` (its length is in the header): a control packet first, else data from a
    /// readable stream the guest has credit for (round robin). `None`: nothing to send.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        let keys: Vec<Key> = self
            .conns
            .range((
                std::ops::Bound::Excluded(self.last),
                std::ops::Bound::Unbounded,
            ))
            .chain(self.conns.range(..=self.last))
            .filter(|(_, c)| {
                c.readable
                    && c.state == State::Established
                    && !c.host_eof
                    && !c.guest_done_receiving
                    && c.credit.peer_free() > 0
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(h) = self.read_stream(key, buf) {
                self.last = key;
                return Some(h);
            }
            if let Some(h) = self.control.pop_front() {
                return Some(h);
            }
        }
        None
    }

    fn read_stream(&mut self, key: Key, buf: &mut [u8]) -> Option<Header> {
        let c = self.conns.get_mut(&key)?;
        let room = buf
            .len()
            .min(MAX_PAYLOAD)
            .min(c.credit.peer_free() as usize);
        if room == 0 {
            // No room for data (a receive buffer of a header only, or no credit): reading
            // nothing would look like the host's end-of-file.
            return None;
        }
        loop {
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    c.host_eof = true;
                    self.send_control(key, op::SHUTDOWN, SHUTDOWN_SEND);
                    self.service(key);
                    return None;
                }
                Ok(n) => {
                    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
                    c.credit.sent(n32);
                    let mut h = self.header(key, op::RW);
                    h.len = n32;
                    return Some(h);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reset(key);
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
