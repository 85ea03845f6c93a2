//! `bulkhead-blk` end to end, without a VMM: the real daemon (`main_with_args`, as the
//! binary runs it) on one end of a socketpair, vhost's own frontend on the other. The test
//! plays the VMM and the guest driver: it negotiates features, shares a memfd as guest
//! memory, lays out split virtqueues in it, kicks, waits for the call eventfd, and checks
//! the used ring, the status bytes and the image file's bytes.

mod common;

use std::fs::File;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bulkhead_devices::block::{main_with_args, CONFIG_SPACE_SIZE, SEG_MAX};
use common::{guest_memory, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 256;
const DISK_SIZE: u64 = 1 << 20;

fn pattern(i: u64) -> u8 {
    (i as u8) ^ ((i >> 9) as u8).wrapping_mul(13)
}

fn image() -> TempFile {
    let f = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(f.as_path(), bytes).unwrap();
    f
}

/// Starts the daemon in a thread, as the process would run; returns its exit status.
fn daemon(args: Vec<String>) -> JoinHandle<i32> {
    common::daemon("bulkhead-blk", main_with_args, args)
}

fn header(mem: &Mem, at: u64, request_type: u32, sector: u64) {
    mem.write_obj(request_type, GuestAddress(at)).unwrap();
    mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
}

/// SET_OWNER, features, protocol features, memory table: what every frontend does first.
fn negotiate(fe: &mut Frontend, mem: &Mem, memfd: &File) -> u64 {
    let want = (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | PROTOCOL_FEATURES_BIT;
    let needed = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    common::negotiate(fe, mem, memfd, want, needed, |offered| {
        offered & (want | (1 << VIRTIO_BLK_F_MQ))
    })
}

fn config(fe: &mut Frontend) -> Vec<u8> {
    common::config(fe, CONFIG_SPACE_SIZE)
}

#[test]
fn serves_a_guest_over_a_connected_socketpair() {
    let img = image();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd();
    let d = daemon(vec![
        "--fd".into(),
        fd.to_string(),
        "--blk-file".into(),
        img.as_path().display().to_string(),
        "--serial".into(),
        "bulkhead-e2e".into(),
        "--queues".into(),
        "2".into(),
    ]);
    let mut fe = Frontend::from_stream(ours, 2);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let offered = negotiate(&mut fe, &mem, &memfd);
    assert_ne!(offered & (1 << VIRTIO_BLK_F_MQ), 0, "two queues offer MQ");
    assert_eq!(offered & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(fe.get_queue_num().unwrap(), 2);

    let cfg = config(&mut fe);
    assert_eq!(cfg.len(), CONFIG_SPACE_SIZE);
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        DISK_SIZE / 512
    );
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), SEG_MAX);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(cfg[34..36].try_into().unwrap()), 2);

    let mut q0 = Ring::new(0, 0, QUEUE_SIZE);
    let mut q1 = Ring::new(1, 0x8000, QUEUE_SIZE);
    q0.set_up(&mut fe, &mem);
    q1.set_up(&mut fe, &mem);

    // OUT: 8 KiB of 0xc3 at sector 10, over two data descriptors.
    let (hdr, data, status) = (0x10000u64, 0x20000u64, 0x18000u64);
    mem.write_slice(&[0xc3u8; 8192], GuestAddress(data))
        .unwrap();
    header(&mem, hdr, VIRTIO_BLK_T_OUT, 10);
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let head = q0.add(
        &mem,
        &[
            (hdr, 16, false),
            (data, 4096, false),
            (data + 4096, 4096, false),
            (status, 1, true),
        ],
    );
    assert_eq!(q0.kick_and_wait(&mem, 1), vec![(u32::from(head), 1)]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let bytes = std::fs::read(img.as_path()).unwrap();
    assert!(bytes[5120..5120 + 8192].iter().all(|&b| b == 0xc3));
    assert!(bytes[..5120]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    assert!(bytes[5120 + 8192..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern((5120 + 8192 + i) as u64)));

    // IN on the second queue reads it back (and the untouched sector before it).
    let (hdr, data, status) = (0x30000u64, 0x40000u64, 0x38000u64);
    header(&mem, hdr, VIRTIO_BLK_T_IN, 9);
    let head = q1.add(
        &mem,
        &[(hdr, 16, false), (data, 4608, true), (status, 1, true)],
    );
    assert_eq!(q1.kick_and_wait(&mem, 1), vec![(u32::from(head), 4609)]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let mut back = vec![0u8; 4608];
    mem.read_slice(&mut back, GuestAddress(data)).unwrap();
    assert!(back[..512]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(4608 + i as u64)));
    assert!(back[512..].iter().all(|&b| b == 0xc3));

    // A batch on queue 0: GET_ID, an unknown type, a read past the end; one kick.
    let id_buf = 0x50000u64;
    header(&mem, 0x11000, VIRTIO_BLK_T_GET_ID, 0);
    header(&mem, 0x11100, 99, 0);
    header(&mem, 0x11200, VIRTIO_BLK_T_IN, DISK_SIZE / 512);
    let a = q0.add(
        &mem,
        &[(0x11000, 16, false), (id_buf, 20, true), (0x12000, 1, true)],
    );
    let b = q0.add(&mem, &[(0x11100, 16, false), (0x12001, 1, true)]);
    let c = q0.add(
        &mem,
        &[(0x11200, 16, false), (data, 512, true), (0x12002, 1, true)],
    );
    let used = q0.kick_and_wait(&mem, 3);
    assert_eq!(
        used,
        vec![(u32::from(a), 21), (u32::from(b), 1), (u32::from(c), 1)]
    );
    let mut statuses = [0u8; 3];
    mem.read_slice(&mut statuses, GuestAddress(0x12000))
        .unwrap();
    assert_eq!(
        statuses,
        [
            VIRTIO_BLK_S_OK as u8,
            VIRTIO_BLK_S_UNSUPP as u8,
            VIRTIO_BLK_S_IOERR as u8
        ]
    );
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(id_buf)).unwrap();
    assert_eq!(&id[..13], b"bulkhead-e2e\0");

    // Stopping a ring returns where the device got to.
    assert_eq!(fe.get_vring_base(0).unwrap(), 4);
    assert_eq!(fe.get_vring_base(1).unwrap(), 1);

    // The frontend hanging up ends the process with status 0.
    drop(fe);
    assert_eq!(d.join().unwrap(), 0);
}

#[test]
fn read_only_over_a_listening_fd() {
    let img = image();
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("blk.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.into_raw_fd();
    // --once: it exits when this frontend goes (otherwise it would wait for the next).
    let d = daemon(vec![
        "--once".into(),
        "--fd".into(),
        fd.to_string(),
        "--disk".into(),
        img.as_path().display().to_string(),
        "--read-only".into(),
    ]);
    let mut fe = Frontend::connect(&path, 1).unwrap();
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let offered = negotiate(&mut fe, &mem, &memfd);
    assert_ne!(offered & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(offered & (1 << VIRTIO_BLK_F_MQ), 0);
    let mut q = Ring::new(0, 0, QUEUE_SIZE);
    q.set_up(&mut fe, &mem);
    mem.write_slice(&[0u8; 512], GuestAddress(0x20000)).unwrap();
    header(&mem, 0x10000, VIRTIO_BLK_T_OUT, 0);
    q.add(
        &mem,
        &[
            (0x10000, 16, false),
            (0x20000, 512, false),
            (0x18000, 1, true),
        ],
    );
    assert_eq!(q.kick_and_wait(&mem, 1)[0].1, 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x18000)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    let bytes = std::fs::read(img.as_path()).unwrap();
    assert!(bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    drop(fe);
    assert_eq!(d.join().unwrap(), 0);
}

#[test]
fn socket_path_and_disk_fd() {
    let img = image();
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("blk.sock");
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img.as_path())
        .unwrap();
    let disk_fd = disk.into_raw_fd();
    // --once: it exits when this frontend goes (otherwise it would wait for the next).
    let d = daemon(vec![
        "--once".into(),
        "--socket-path".into(),
        path.display().to_string(),
        "--disk-fd".into(),
        disk_fd.to_string(),
        "--logical-block-size".into(),
        "4096".into(),
    ]);
    let mut fe = connect_when_listening(&path);
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    fe.set_features(features).unwrap();
    let cfg = config(&mut fe);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 4096);
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        DISK_SIZE / 512
    );
    drop(fe);
    assert_eq!(d.join().unwrap(), 0);
}

fn connect_when_listening(path: &Path) -> Frontend {
    for _ in 0..500 {
        if let Ok(fe) = Frontend::connect(path, 1) {
            return fe;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("the daemon never listened on {}", path.display());
}

#[test]
fn start_up_errors_exit_with_status_1() {
    let odd = TempFile::new().unwrap();
    odd.as_file().set_len(1000).unwrap();
    let good = image();
    let good = good.as_path().to_str().unwrap();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd().to_string();
    for args in [
        vec!["--fd", &fd, "--blk-file", odd.as_path().to_str().unwrap()],
        vec!["--fd", &fd, "--blk-file", "/nonexistent.img"],
        vec!["--fd", "987654", "--blk-file", good],
        vec!["--fd", &fd],
        vec![
            "--fd",
            &fd,
            "--disk",
            "/x",
            "--serial",
            "123456789012345678901",
        ],
        vec!["--no-such-flag"],
    ] {
        let argv: Vec<String> = std::iter::once("bulkhead-blk")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        assert_eq!(main_with_args(argv), 1, "{args:?}");
    }
    assert_eq!(main_with_args(["bulkhead-blk", "--print-capabilities"]), 0);
    assert_eq!(main_with_args(["bulkhead-blk", "--help"]), 0);
}

#[test]
fn termination_while_serving_exits_cleanly() {
    use bulkhead_devices::block::{run_with, Config, Image};
    use bulkhead_devices::daemon::{Ended, Endpoint, Termination};
    let img = image();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let config = Config {
        endpoint: Endpoint::Fd(theirs.into_raw_fd()),
        image: Image::Path(img.as_path().to_owned()),
        format: None,
        backing: Vec::new(),
        lock: true,
        read_only: false,
        serial: [0; 20],
        queues: 1,
        direct: false,
        logical_block_size: 512,
        poll: Duration::from_micros(32),
        stall_after: None,
    };
    let termination = Termination::manual();
    let t = termination.clone();
    let d = thread::spawn(move || run_with(config, &t));
    let mut fe = Frontend::from_stream(ours, 1);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    negotiate(&mut fe, &mem, &memfd);
    let q = Ring::new(0, 0, QUEUE_SIZE);
    q.set_up(&mut fe, &mem);
    termination.trigger();
    assert_eq!(d.join().unwrap().unwrap(), Ended::Terminated);
    // The frontend sees the connection go.
    assert!(fe.get_features().is_err());
}
