//! A scripted vhost-user peer for the frontend's tests: speaks the set-up as a backend
//! would, answering what it is asked from a [`Script`], and can be told to misbehave at a
//! chosen request (by its place or by its code), and records every request it received.
//! Used by `vhost_user_peer_kinds.rs` (net and console devices) and `vhost_user_peer.rs`
//! (disks, reconnection).

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bulkhead_vmm::memory::GuestMemory;
use bulkhead_vmm::virtio::interrupts::Interrupts;
use bulkhead_vmm::virtio::vhost_user::{BackendSocket, SharedMemory, VhostUserDevice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user request codes.
pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const SET_INFLIGHT_FD: u32 = 32;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const F_PROTOCOL: u64 = 1 << 30;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_BLK_F_FLUSH.
pub const BLK_F_FLUSH: u64 = 1 << 9;
/// What the driver acks of a disk in these tests.
pub const ACKED: u64 = F_VERSION_1 | F_EVENT_IDX | BLK_F_FLUSH;
/// Protocol features: MQ, REPLY_ACK, CONFIG.
pub const P_MQ: u64 = 1 << 0;
pub const P_REPLY_ACK: u64 = 1 << 3;
pub const P_CONFIG: u64 = 1 << 9;
pub const P_INFLIGHT: u64 = 1 << 12;
/// The NEED_REPLY header flag.
const NEED_REPLY: u32 = 1 << 3;

/// One request from the frontend.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its code.
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// Its body.
    pub body: Vec<u8>,
    /// Whether it carried an fd.
    pub fd: bool,
}

/// Every request a peer received, in order.
pub type Log = Arc<Mutex<Vec<Request>>>;

/// Reads one request (header, body and the fd it carries, if any); `None` when the
/// frontend hung up.
pub fn recv(s: &mut UnixStream) -> Option<(Request, Option<File>)> {
    let mut hdr = [0u8; 12];
    let (n, file) = s.recv_with_fd(&mut hdr).ok()?;
    if n == 0 {
        return None;
    }
    s.read_exact(&mut hdr[n..]).ok()?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let mut body = vec![0u8; word(8) as usize];
    s.read_exact(&mut body).ok()?;
    let fd = file.is_some();
    let request = Request {
        code: word(0),
        flags: word(4),
        body,
        fd,
    };
    Some((request, file))
}

/// Reads one request (header and body); `None` when the frontend hung up.
pub fn read_request(s: &mut UnixStream) -> Option<Request> {
    recv(s).map(|(request, _)| request)
}

/// Sends a reply to `code` carrying `body`.
pub fn reply(s: &mut UnixStream, code: u32, body: &[u8]) {
    reply_with(s, code, body, None);
}

/// Sends a reply to `code` carrying `body` and, if given, `fd`.
pub fn reply_with(s: &mut UnixStream, code: u32, body: &[u8], fd: Option<&File>) {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&0x5u32.to_le_bytes()); // version 1 | reply
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    match fd {
        Some(f) => {
            let _ = s.send_with_fd(&m[..], f.as_raw_fd());
        }
        None => {
            let _ = s.write_all(&m);
        }
    }
}

/// A memfd of `size` bytes, its size sealed if `seal`.
pub fn memfd(size: u64, seal: bool) -> File {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"peer-inflight".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd nothing else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    if seal {
        // SAFETY: fcntl(F_ADD_SEALS) on our own memfd.
        unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
    }
    f
}

/// How the inflight region is answered (GET_INFLIGHT_FD).
#[derive(Clone, Copy, Debug)]
pub enum Region {
    /// A sealed memfd of the size claimed.
    Sound,
    /// Claims more than its memfd holds.
    Short,
}

/// What the peer answers.
#[derive(Clone)]
pub struct Script {
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES.
    pub protocol: u64,
    /// GET_QUEUE_NUM.
    pub queues: u64,
    /// GET_CONFIG: the config space (answered from offset 0).
    pub config: Vec<u8>,
    /// On the n-th request (from 0), do this instead of answering.
    pub misbehave_at: Option<(usize, Misbehave)>,
    /// GET_INFLIGHT_FD.
    pub region: Region,
    /// Hangs up on receiving this request.
    pub die_on: Option<u32>,
    /// Never answers this request (waits until the frontend gives up).
    pub silent_on: Option<u32>,
    /// Refuses this request (a non-zero REPLY_ACK).
    pub nack_on: Option<u32>,
}

/// How the peer misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehave {
    /// Closes the connection.
    HangUp,
    /// Stops answering (keeps the connection open for `secs`).
    Silence(u64),
    /// Sends 64 bytes of 0xff.
    Garbage,
    /// Answers as if it had been asked GET_PROTOCOL_FEATURES.
    WrongReply,
    /// Answers a GET_CONFIG with a header promising the whole config and only part of it,
    /// then waits `secs` and hangs up.
    ShortConfig(u64),
}

impl Script {
    /// A well-behaved backend offering `features` and `protocol`, with `queues` queues.
    pub fn new(features: u64, protocol: u64, queues: u64) -> Script {
        Script {
            features,
            protocol,
            queues,
            config: vec![0; 16],
            misbehave_at: None,
            region: Region::Sound,
            die_on: None,
            silent_on: None,
            nack_on: None,
        }
    }

    /// A well-behaved disk backend offering `ACKED` (VERSION_1, EVENT_IDX, BLK_F_FLUSH),
    /// protocol features, bit 6 and the inflight region, with 4 queues and a config space
    /// whose byte i is i.
    pub fn disk() -> Script {
        Script {
            config: (0..=255).collect(),
            ..Script::new(
                ACKED | F_PROTOCOL | (1 << 6),
                P_MQ | P_REPLY_ACK | P_CONFIG | P_INFLIGHT,
                4,
            )
        }
    }

    /// Plays this script on `s` until the frontend hangs up or the script says stop.
    pub fn play(self, s: UnixStream) {
        self.serve(s, Log::default());
    }

    /// Plays this script on `s`, recording every request in `log`, until the frontend
    /// hangs up or the script says stop.
    pub fn serve(self, mut s: UnixStream, log: Log) {
        let mut n = 0usize;
        while let Some((req, _file)) = recv(&mut s) {
            log.lock().unwrap().push(req.clone());
            if let Some((at, how)) = self.misbehave_at {
                if n == at {
                    match how {
                        Misbehave::HangUp => return,
                        Misbehave::Silence(secs) => {
                            std::thread::sleep(std::time::Duration::from_secs(secs));
                            return;
                        }
                        Misbehave::Garbage => {
                            let _ = s.write_all(&[0xff; 64]);
                            return;
                        }
                        Misbehave::WrongReply => {
                            reply(&mut s, GET_PROTOCOL_FEATURES, &0u64.to_le_bytes());
                            return;
                        }
                        Misbehave::ShortConfig(secs) => {
                            let mut body = req.body.clone();
                            body.truncate(body.len().saturating_sub(2));
                            let mut m = Vec::new();
                            m.extend_from_slice(&req.code.to_le_bytes());
                            m.extend_from_slice(&0x5u32.to_le_bytes());
                            m.extend_from_slice(&(req.body.len() as u32).to_le_bytes());
                            m.extend_from_slice(&body);
                            let _ = s.write_all(&m);
                            std::thread::sleep(std::time::Duration::from_secs(secs));
                            return;
                        }
                    }
                }
            }
            n += 1;
            if self.die_on == Some(req.code) {
                return;
            }
            if self.silent_on == Some(req.code) {
                // Until the frontend hangs up.
                let _ = s.read_to_end(&mut Vec::new());
                return;
            }
            match req.code {
                GET_FEATURES => reply(&mut s, req.code, &self.features.to_le_bytes()),
                GET_PROTOCOL_FEATURES => reply(&mut s, req.code, &self.protocol.to_le_bytes()),
                GET_QUEUE_NUM => reply(&mut s, req.code, &self.queues.to_le_bytes()),
                GET_CONFIG if req.body.len() >= 12 => {
                    let size =
                        u32::from_le_bytes([req.body[4], req.body[5], req.body[6], req.body[7]]);
                    let mut payload = self.config.clone();
                    payload.resize(size as usize, 0);
                    let mut body = req.body[..12].to_vec();
                    body[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
                    body.extend_from_slice(&payload);
                    reply(&mut s, req.code, &body);
                }
                GET_VRING_BASE => reply(&mut s, req.code, &req.body),
                GET_INFLIGHT_FD => {
                    let size = 4160u64;
                    let file = match self.region {
                        Region::Sound => memfd(size, true),
                        Region::Short => memfd(size / 2, true),
                    };
                    let mut b = Vec::new();
                    b.extend_from_slice(&size.to_le_bytes());
                    b.extend_from_slice(&0u64.to_le_bytes());
                    // The queue count and size asked for, echoed.
                    b.extend_from_slice(req.body.get(16..24).unwrap_or(&[0u8; 8]));
                    reply_with(&mut s, req.code, &b, Some(&file));
                }
                _ if req.flags & NEED_REPLY != 0 => {
                    let refused = u64::from(self.nack_on == Some(req.code));
                    reply(&mut s, req.code, &refused.to_le_bytes());
                }
                _ => {}
            }
        }
    }
}

/// `script` played on a thread: our end of the connection, what the peer receives, the
/// thread.
pub fn spawn(script: Script) -> (UnixStream, Log, JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let log = Log::default();
    let l = log.clone();
    let t = std::thread::spawn(move || script.serve(theirs, l));
    (ours, log, t)
}

/// The codes of the requests in `log`.
pub fn codes(log: &Log) -> Vec<u32> {
    log.lock().unwrap().iter().map(|r| r.code).collect()
}

/// `memory` as the frontend is given it.
pub fn shared(memory: &GuestMemory) -> SharedMemory {
    SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    }
}

/// The error's whole chain, as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// A device `name` of `device_type` with `queues` queues, connected to a peer played by
/// `peer` on a thread, then given `mac` and `queue_size` as the launcher would for an
/// external backend. The peer's thread is left running (it ends when the device is
/// dropped and the connection closes).
pub fn connect_kind(
    name: &str,
    device_type: u32,
    queues: usize,
    mac: Option<[u8; 6]>,
    queue_size: Option<u16>,
    peer: impl FnOnce(UnixStream) + Send + 'static,
) -> Result<VhostUserDevice, String> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || peer(theirs));
    let memory = GuestMemory::new(1 << 20).unwrap();
    let shared = shared(&memory);
    // The memfd must outlive the device: leaked for the test's lifetime.
    std::mem::forget(memory);
    VhostUserDevice::connect(
        name,
        device_type,
        BackendSocket::Connected(ours),
        (0..queues).map(|_| EventFd::new(0).unwrap()).collect(),
        |n| Interrupts::shared(EventFd::new(0)?, n),
        shared,
    )
    .and_then(|d| d.with_local(mac, queue_size))
    .map_err(|e| chain(&e))
}
