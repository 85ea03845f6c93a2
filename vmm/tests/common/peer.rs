//! A scripted vhost-user peer for the frontend's tests: speaks the set-up as a backend
//! would, answering what it is asked from a [`Script`], and can be told to misbehave at a
//! chosen request. Used by `vhost_user_peer_kinds.rs` (net and console devices); the older
//! `vhost_user_peer.rs` (disks) keeps its own few lines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use bulkhead_vmm::memory::GuestMemory;
use bulkhead_vmm::virtio::interrupts::Interrupts;
use bulkhead_vmm::virtio::vhost_user::{BackendSocket, SharedMemory, VhostUserDevice};
use vmm_sys_util::eventfd::EventFd;

/// vhost-user request codes.
pub const GET_FEATURES: u32 = 1;
pub const SET_OWNER: u32 = 3;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const GET_QUEUE_NUM: u32 = 17;
pub const GET_CONFIG: u32 = 24;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const F_PROTOCOL: u64 = 1 << 30;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// Protocol features: MQ, REPLY_ACK, CONFIG.
pub const P_MQ: u64 = 1 << 0;
pub const P_REPLY_ACK: u64 = 1 << 3;
pub const P_CONFIG: u64 = 1 << 9;
/// The NEED_REPLY header flag.
const NEED_REPLY: u32 = 1 << 3;

/// One request from the frontend.
pub struct Request {
    /// Its code.
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// Its body.
    pub body: Vec<u8>,
}

/// Reads one request (header and body); `None` when the frontend hung up.
pub fn read_request(s: &mut UnixStream) -> Option<Request> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let mut body = vec![0u8; word(8) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Request {
        code: word(0),
        flags: word(4),
        body,
    })
}

/// Sends a reply to `code` carrying `body`.
pub fn reply(s: &mut UnixStream, code: u32, body: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&0x5u32.to_le_bytes()); // version 1 | reply
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    let _ = s.write_all(&m);
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
        }
    }

    /// Plays this script on `s` until the frontend hangs up or the script says stop.
    pub fn play(self, mut s: UnixStream) {
        let mut n = 0usize;
        while let Some(req) = read_request(&mut s) {
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
                _ if req.flags & NEED_REPLY != 0 => {
                    reply(&mut s, req.code, &0u64.to_le_bytes());
                }
                _ => {}
            }
        }
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
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
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
