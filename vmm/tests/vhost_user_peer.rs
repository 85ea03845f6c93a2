//! A hostile or broken vhost-user peer: the frontend's handshake fails with an error that
//! names the device and the request — never a panic, never a hang past the reply timeout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_vmm::memory::GuestMemory;
use bulkhead_vmm::virtio::interrupts::Interrupts;
use bulkhead_vmm::virtio::vhost_user::{
    BackendSocket, SharedMemory, VhostUserDevice, REPLY_TIMEOUT,
};
use std::os::fd::AsRawFd;
use vmm_sys_util::eventfd::EventFd;

/// Connects a frontend for `disk0` to a peer played by `peer` on a thread.
fn connect_to(peer: impl FnOnce(UnixStream) + Send + 'static) -> Result<VhostUserDevice, String> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || peer(theirs));
    let memory = GuestMemory::new(1 << 20).unwrap();
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
    let result = VhostUserDevice::connect(
        "disk0",
        2,
        BackendSocket::Connected(ours),
        vec![EventFd::new(0).unwrap()],
        |n| Interrupts::shared(EventFd::new(0)?, n),
        shared,
    )
    .map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    });
    let _ = t.join();
    result
}

/// Reads one request header (and its body) from the frontend; returns the request code.
fn read_request(s: &mut UnixStream) -> Option<u32> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; size];
    s.read_exact(&mut body).ok()?;
    Some(u32::from_le_bytes(hdr[0..4].try_into().unwrap()))
}

fn reply_u64(s: &mut UnixStream, request: u32, value: u64) {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&0x5u32.to_le_bytes()); // version 1 | reply
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    let _ = s.write_all(&m);
}

#[test]
fn peer_that_hangs_up_at_once() {
    let e = connect_to(drop).err().expect("connect must fail");
    assert!(e.starts_with("disk0: vhost-user"), "{e}");
}

#[test]
fn peer_that_never_answers_times_out() {
    let start = Instant::now();
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s); // SET_OWNER (no reply expected)
        let _ = read_request(&mut s); // GET_FEATURES: never answered
        std::thread::sleep(REPLY_TIMEOUT + Duration::from_secs(1));
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
    assert!(
        start.elapsed() < REPLY_TIMEOUT + Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn peer_that_answers_garbage() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let _ = read_request(&mut s);
        let _ = s.write_all(&[0xff; 64]);
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
}

#[test]
fn peer_that_answers_the_wrong_request() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let _ = read_request(&mut s);
        reply_u64(&mut s, 15, 0); // a GET_PROTOCOL_FEATURES reply to GET_FEATURES
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
}

#[test]
fn peer_without_protocol_features_is_refused() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let req = read_request(&mut s).unwrap_or(0);
        reply_u64(&mut s, req, 1 << 32); // VERSION_1 only
    })
    .err()
    .expect("connect must fail");
    assert!(
        e.contains("does not offer VHOST_USER_F_PROTOCOL_FEATURES"),
        "{e}"
    );
}

#[test]
fn peer_without_config_space_is_refused() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s); // SET_OWNER
        let req = read_request(&mut s).unwrap_or(0); // GET_FEATURES
        reply_u64(&mut s, req, (1 << 32) | (1 << 30));
        let req = read_request(&mut s).unwrap_or(0); // GET_PROTOCOL_FEATURES
        reply_u64(&mut s, req, 0);
        let _ = read_request(&mut s); // SET_PROTOCOL_FEATURES
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("CONFIG"), "{e}");
}
