use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;
use crate::vsock::credit::BUF_ALLOC;

const CID: u64 = 3;

fn from_guest(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn drain(m: &mut Muxer) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    while let Some(h) = m.next_packet(&mut buf) {
        out.push((h, buf[..h.len as usize].to_vec()));
    }
    out
}

/// Turns pending epoll events into muxer events.
fn poll(m: &mut Muxer) {
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = m.epoll().wait(0, &mut events).unwrap();
        for e in &events[..n] {
            m.event(e.data(), e.event_set());
        }
        if n < events.len() {
            return;
        }
    }
}

/// A muxer whose listener is bound at a fresh path; returns it and the path.
fn with_listener() -> (Muxer, std::path::PathBuf, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("v.sock");
    let l = UnixListener::bind(&path).unwrap();
    (Muxer::new(CID, Some(l), None).unwrap(), path, dir)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "bulkhead-vsock-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A host program's CONNECT, answered by the guest: the stream established.
fn connected(m: &mut Muxer, path: &std::path::Path, guest_port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(path).unwrap();
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    poll(m);
    let p = drain(m);
    assert_eq!(p.len(), 1, "{p:?}");
    let req = p[0].0;
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (op::REQUEST, guest_port, CID, HOST_CID)
    );
    m.guest_packet(&from_guest(guest_port, req.src_port, op::RESPONSE, 0), &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    (client, req.src_port)
}

#[test]
fn host_connect_then_data_both_ways() {
    let (mut m, path, _d) = with_listener();
    let (mut client, hp) = connected(&mut m, &path, 5000);
    client.write_all(b"ping").unwrap();
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].0.op, p[0].0.len, &p[0].1[..]),
        (op::RW, 4, &b"ping"[..])
    );
    m.guest_packet(&from_guest(5000, hp, op::RW, 4), b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn a_receive_buffer_without_data_room_is_no_end_of_file() {
    let (mut m, path, _d) = with_listener();
    let (mut client, _hp) = connected(&mut m, &path, 5000);
    client.write_all(b"ping").unwrap();
    poll(&mut m);
    // The guest's buffer holds a header only: nothing to send yet, and no SHUTDOWN.
    assert_eq!(m.next_packet(&mut []), None);
    let p = drain(&mut m);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].0.op, p[0].0.len, &p[0].1[..]),
        (op::RW, 4, &b"ping"[..])
    );
}

#[test]
fn a_refused_connect_closes_the_client() {
    let (mut m, path, _d) = with_listener();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    poll(&mut m);
    let req = drain(&mut m)[0].0;
    m.guest_packet(&from_guest(9, req.src_port, op::RST, 0), &[]);
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).unwrap(), 0);
    assert_eq!(m.connections(), 0);
}

#[test]
fn never_more_than_the_guest_granted() {
    let (mut m, path, _d) = with_listener();
    let (mut client, hp) = connected(&mut m, &path, 5000);
    let mut granted = from_guest(5000, hp, op::CREDIT_UPDATE, 0);
    granted.buf_alloc = 100;
    m.guest_packet(&granted, &[]);
    client.write_all(&[7u8; 1000]).unwrap();
    poll(&mut m);
    let p = drain(&mut m);
    let sent: u32 = p.iter().map(|(h, _)| h.len).sum();
    assert_eq!(sent, 100, "{p:?}");
    // The guest consumed 60: 60 more, no more.
    granted.fwd_cnt = 60;
    m.guest_packet(&granted, &[]);
    let sent: u32 = drain(&mut m).iter().map(|(h, _)| h.len).sum();
    assert_eq!(sent, 60);
}

#[test]
fn credit_overrun_resets_only_that_stream() {
    let (mut m, path, _d) = with_listener();
    let (mut a, ha) = connected(&mut m, &path, 1);
    let (_b, _hb) = connected(&mut m, &path, 2);
    let big = vec![0u8; MAX_PAYLOAD];
    // Fill a's buffer without the host reading (a is never read here... it may take some
    // in its socket buffer, so send until an overrun).
    let mut reset = false;
    for _ in 0..(2 * BUF_ALLOC as usize / MAX_PAYLOAD + 64) {
        m.guest_packet(&from_guest(1, ha, op::RW, MAX_PAYLOAD as u32), &big);
        if m.connections() == 1 {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(m.counters.overruns, 1);
    let p = drain(&mut m);
    assert!(
        p.iter().any(|(h, _)| h.op == op::RST && h.dst_port == 1),
        "{p:?}"
    );
    let mut sink = Vec::new();
    let _ = a.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let _ = a.read_to_end(&mut sink);
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let (mut m, path, _d) = with_listener();
    let (_client, hp) = connected(&mut m, &path, 5000);
    let mut wrong = from_guest(5000, hp, op::RW, 0);
    wrong.src_cid = 99;
    m.guest_packet(&wrong, &[]);
    wrong.src_cid = CID;
    wrong.dst_cid = 7;
    m.guest_packet(&wrong, &[]);
    assert_eq!(m.counters.wrong_cid, 2);
    assert!(drain(&mut m).is_empty());
    // Unknown stream, unknown type, unknown op, len beyond the payload.
    m.guest_packet(&from_guest(1, 2, op::RW, 0), &[]);
    let mut dgram = from_guest(5000, hp, op::RW, 0);
    dgram.type_ = 2;
    m.guest_packet(&dgram, &[]);
    m.guest_packet(&from_guest(4, 4, 99, 0), &[]);
    m.guest_packet(&from_guest(5, 5, op::RW, 10), b"abc");
    let p = drain(&mut m);
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(p.iter().all(|(h, _)| h.op == op::RST));
    // An RST for nothing is not answered.
    m.guest_packet(&from_guest(1, 2, op::RST, 0), &[]);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn host_eof_is_a_shutdown_and_the_guest_finishes() {
    let (mut m, path, _d) = with_listener();
    let (client, hp) = connected(&mut m, &path, 5000);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    let mut s = from_guest(5000, hp, op::SHUTDOWN, 0);
    s.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    m.guest_packet(&s, &[]);
    assert_eq!(m.connections(), 0);
    assert_eq!(drain(&mut m)[0].0.op, op::RST);
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let (mut m, _path, _d) = with_listener();
    m.guest_packet(&from_guest(77, 6000, op::REQUEST, 0), &[]);
    let p = drain(&mut m);
    assert_eq!(
        (p[0].0.op, p[0].0.dst_port, p[0].0.src_port),
        (op::RST, 77, 6000)
    );
}

#[test]
fn guest_connect_through_the_broker() {
    let (ours, mut launcher) = UnixStream::pair().unwrap();
    let mut m = Muxer::new(CID, None, Some(Broker::new(ours).unwrap())).unwrap();
    let server = std::thread::spawn(move || {
        let mut peer = None;
        crate::vsock::broker::answer(&mut launcher, |port| {
            assert_eq!(port, 6000);
            let (a, b) = UnixStream::pair()?;
            peer = Some(b);
            Ok(a)
        })
        .unwrap();
        peer.unwrap()
    });
    m.guest_packet(&from_guest(77, 6000, op::REQUEST, 0), &[]);
    let mut peer = server.join().unwrap();
    let p = drain(&mut m);
    assert_eq!(p[0].0.op, op::RESPONSE);
    m.guest_packet(&from_guest(77, 6000, op::RW, 3), b"abc");
    let mut got = [0u8; 3];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
    peer.write_all(b"xyz").unwrap();
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(&p[0].1[..], b"xyz");
    // The peer killed: only its stream is reset.
    drop(peer);
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(p[0].0.op, op::SHUTDOWN);
}

#[test]
fn many_streams_at_once() {
    let (mut m, path, _d) = with_listener();
    let mut clients: Vec<_> = (0..64).map(|i| connected(&mut m, &path, 100 + i)).collect();
    assert_eq!(m.connections(), 64);
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.write_all(&[i as u8; 10]).unwrap();
    }
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(p.len(), 64);
    for (h, data) in &p {
        assert_eq!(data, &vec![(h.dst_port - 100) as u8; 10]);
    }
    // Killing one peer ends that stream only.
    drop(clients.remove(5));
    poll(&mut m);
    let p = drain(&mut m);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.dst_port), (op::SHUTDOWN, 105));
}

#[test]
fn silent_clients_and_unanswered_connects_time_out() {
    let (mut m, path, _d) = with_listener();
    let mut silent = UnixStream::connect(&path).unwrap();
    let mut asked = UnixStream::connect(&path).unwrap();
    asked.write_all(b"CONNECT 5000\n").unwrap();
    poll(&mut m);
    let req = drain(&mut m);
    assert_eq!(req.len(), 1);
    assert!(m.waiting());
    m.expire(std::time::Instant::now());
    assert!(m.waiting(), "not yet");
    m.expire(std::time::Instant::now() + CONNECT_TIMEOUT);
    assert!(!m.waiting());
    let p = drain(&mut m);
    assert_eq!((p[0].0.op, p[0].0.src_port), (op::RST, req[0].0.src_port));
    let mut b = [0u8; 1];
    assert_eq!(silent.read(&mut b).unwrap(), 0);
    assert_eq!(asked.read(&mut b).unwrap(), 0);
}

#[test]
fn host_ports_start_at_a_random_point_each_life() {
    let (a, b) = (first_host_port(), first_host_port());
    for p in [a, b] {
        assert!((FIRST_HOST_PORT..FIRST_HOST_PORT + HOST_PORT_SPREAD).contains(&p));
    }
    // A successor must not start where its predecessor did (chance of equal: 2^-29).
    assert_ne!(a, b);
}
