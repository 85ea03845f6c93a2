//! `bulkhead-net` end to end, without a VMM: the real daemon (`main_with_args`, as the
//! binary runs it) on one end of a socketpair and vhost's frontend on the other, serving a
//! real TAP in a network namespace the test makes for itself (`unshare(CLONE_NEWNET)` on a
//! thread of its own: the namespace, and the TAP with it, go when that thread and the
//! descriptors end). A frame the "guest" puts on TX is read on the TAP with an AF_PACKET
//! socket; a frame sent into the TAP turns up in an RX buffer behind a valid header; then
//! the TAP is deleted and the backend exits with status 1 naming it.
//!
//! Needs root and /dev/net/tun; otherwise skips (tests/common/skip.rs: a failure under CI).

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bulkhead_devices::net::{main_with_args, CONFIG_SPACE_SIZE, NET_HDR_SIZE};
use common::{config, guest_memory, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 64;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const TAP_NAME: &str = "bhnet0";
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// IEEE 802 "local experimental" ethertype: nothing else on the TAP uses it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const MQ_TAP_NAME: &str = "bhmq0";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> IfReq {
    let mut req = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    req
}

/// Why this host can't run the test, if it can't.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

/// Moves the calling thread into a new network namespace.
fn new_netns() -> std::io::Result<()> {
    // SAFETY: unshare takes flags only; CLONE_NEWNET moves just this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the TAP as the launcher does; returns its descriptor.
fn create_tap() -> OwnedFd {
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    create_tap_with(0x0002 | 0x1000 | 0x4000)
}

fn create_tap_with(flags: libc::c_short) -> OwnedFd {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = ifreq(TAP_NAME, flags);
    // SAFETY: TUNSETIFF reads and writes an ifreq, valid for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    OwnedFd::from(file)
}

/// Brings the TAP up (SIOCSIFFLAGS IFF_UP).
fn link_up(name: &str) {
    // SAFETY: a new socket, owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: fresh descriptor.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = ifreq(name, 0);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq, valid for the call.
    unsafe {
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
        req.flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req), 0);
    }
}

/// An AF_PACKET socket bound to the TAP, seeing every frame on it.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: a new socket, owned below.
    let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        s >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh descriptor.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name valid for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0);
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binds to an address valid for the call, of the size given.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0);
    s
}

/// The next frame with our ethertype on `s`, within 5 s.
fn recv_ours(s: &OwnedFd) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "our frame never showed up on the TAP");
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd valid for the call.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } != 1 {
            continue;
        }
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 14 && buf[12..14] == ETHERTYPE {
            return buf[..n as usize].to_vec();
        }
    }
}

/// Starts the daemon in a thread; returns the thread and a channel its exit status comes on.
fn daemon(args: Vec<String>) -> (JoinHandle<()>, mpsc::Receiver<i32>) {
    common::daemon_reporting("bulkhead-net", main_with_args, args)
}

fn negotiate(fe: &mut Frontend, mem: &Mem, memfd: &File, extra: u64) -> u64 {
    let want = (1 << VIRTIO_F_VERSION_1) | VIRTIO_NET_F_MAC | PROTOCOL_FEATURES_BIT | extra;
    let needed = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    common::negotiate(fe, mem, memfd, want, needed, |offered| {
        assert_ne!(offered & VIRTIO_NET_F_MRG_RXBUF, 0);
        want
    })
}

fn our_frame(src: [u8; 6], payload: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6]; // broadcast
    f.extend(src);
    f.extend(ETHERTYPE);
    f.extend((0..len - 14).map(|i| payload ^ i as u8));
    f
}

/// Runs `body` on a thread of its own (so a namespace it enters is its alone and goes
/// when it ends), unless the host does not permit these tests (then skips or fails, as
/// `common::skip` says): what `body` returned.
fn if_permitted<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if let Some(reason) = unsupported() {
        common::skip::skip_or_fail(common::skip::SkipKind::NotPermitted, &reason);
        return None;
    }
    Some(thread::spawn(body).join().unwrap())
}

/// Moves this thread into a new network namespace; false (having skipped or failed, as
/// `common::skip` says) if it cannot.
fn enter_netns() -> bool {
    if let Err(e) = new_netns() {
        common::skip::skip_or_fail(
            common::skip::SkipKind::NotPermitted,
            &format!("unshare(CLONE_NEWNET): {e}"),
        );
        return false;
    }
    true
}

/// The frontend leaves: the backend must exit with status 0 within 10 s.
fn ends_cleanly(fe: Frontend, done_rx: &mpsc::Receiver<i32>) {
    drop(fe);
    let status = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the backend did not exit within 10 s of its frontend leaving");
    assert_eq!(status, 0);
}

/// The four rings of two pairs (RX 0, TX 0, RX 1, TX 1), set up.
fn two_pairs(fe: &mut Frontend, mem: &Mem) -> Vec<Ring> {
    let rings: Vec<Ring> = (0..4)
        .map(|i| Ring::new(i, 0x8000 * i as u64, QUEUE_SIZE))
        .collect();
    for r in &rings {
        r.set_up(fe, mem);
    }
    rings
}

/// Sends `hdr` + `frame` (written at `at`) on TX ring `tx`; the chain must come back
/// used, with nothing written.
fn transmit(mem: &Mem, tx: &mut Ring, at: u64, hdr: &[u8; NET_HDR_SIZE], frame: &[u8]) {
    mem.write_slice(hdr, GuestAddress(at)).unwrap();
    mem.write_slice(frame, GuestAddress(at + NET_HDR_SIZE as u64))
        .unwrap();
    let head = tx.add_one(mem, at, (NET_HDR_SIZE + frame.len()) as u32, false);
    tx.kick();
    assert_eq!(tx.wait_one_used(mem), (u32::from(head), 0));
}

fn run_in_netns() {
    if !enter_netns() {
        return;
    }
    let tap = create_tap();
    link_up(TAP_NAME);
    let sniffer = packet_socket(TAP_NAME);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let (sock_fd, tap_fd) = (theirs.into_raw_fd(), tap.into_raw_fd());
    let (stderr_hint, done_rx) = daemon(vec![
        "--fd".into(),
        sock_fd.to_string(),
        "--tap-fd".into(),
        tap_fd.to_string(),
        "--mac".into(),
        "52:54:00:12:34:56".into(),
    ]);

    let mut fe = Frontend::from_stream(ours, 2);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    negotiate(&mut fe, &mem, &memfd, 0);
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    let cfg = config(&mut fe, CONFIG_SPACE_SIZE);
    assert_eq!(cfg[..6], MAC);
    assert_eq!(
        cfg[6..12],
        [1, 0, 1, 0, 0xdc, 0x05],
        "link up, 1 pair, MTU 1500"
    );

    let mut rx = Ring::new(0, 0, QUEUE_SIZE);
    let mut tx = Ring::new(1, 0x8000, QUEUE_SIZE);
    rx.set_up(&mut fe, &mem);
    tx.set_up(&mut fe, &mem);

    // A bad virtio-net header (an unknown GSO type): the TAP refuses the frame, the
    // chain comes back, and the queue goes on.
    let bad = our_frame(MAC, 0xbd, 200);
    let at = 0x18_0000u64;
    let mut hdr = [0u8; NET_HDR_SIZE];
    hdr[1] = 0x55;
    transmit(&mem, &mut tx, at, &hdr, &bad);

    // TX: header (all zero: no offload) + frame.
    let frame = our_frame(MAC, 0x5a, 200);
    let at = 0x10_0000u64;
    transmit(&mem, &mut tx, at, &[0; NET_HDR_SIZE], &frame);
    assert_eq!(recv_ours(&sniffer), frame, "the guest's frame on the TAP");

    // RX: buffers for whatever the host sends (IPv6 autoconfiguration may come first).
    for i in 0..16u64 {
        rx.add_one(&mem, 0x20_0000 + i * 0x1000, 2048, true);
    }
    rx.kick();
    let host_frame = our_frame([0x02, 0, 0, 0, 0, 1], 0xa5, 300);
    // SAFETY: `host_frame` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            sniffer.as_raw_fd(),
            host_frame.as_ptr().cast(),
            host_frame.len(),
            0,
        )
    };
    assert_eq!(n, host_frame.len() as isize);
    let found = (0..16).find_map(|_| {
        let (id, len) = rx.wait_one_used(&mem);
        let base = 0x20_0000 + u64::from(id) * 0x1000;
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, GuestAddress(base)).unwrap();
        (buf.len() >= NET_HDR_SIZE + 14 && buf[NET_HDR_SIZE + 12..NET_HDR_SIZE + 14] == ETHERTYPE)
            .then_some(buf)
    });
    let buf = found.expect("the host's frame in an RX buffer");
    assert_eq!(buf[NET_HDR_SIZE..], host_frame[..], "frame intact");
    assert_eq!(buf[1], 0, "gso_type NONE");
    assert_eq!(buf[10..12], [1, 0], "num_buffers 1");

    // The TAP disappears: the backend says so and exits with status 1. (`ip` runs in this
    // thread's namespace, which its child inherits.)
    let deleted = std::process::Command::new("ip")
        .args(["link", "delete", TAP_NAME])
        .status()
        .expect("running ip");
    assert!(deleted.success(), "ip link delete {TAP_NAME}: {deleted:?}");
    let status = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the backend did not exit within 10 s of its TAP being deleted");
    assert_eq!(status, 1);
    let _ = stderr_hint.join();
    drop(fe);
}

fn host_send(sniffer: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is valid for reads of its length.
    let n = unsafe { libc::send(sniffer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize);
}

/// Whether an RX buffer of `len` bytes at `base` holds `frame` behind a header.
fn rx_holds(mem: &Mem, base: u64, len: u32, frame: &[u8]) -> bool {
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(base)).unwrap();
    buf.len() == NET_HDR_SIZE + frame.len() && buf[NET_HDR_SIZE..] == *frame
}

/// `--tap NAME --queue-pairs 2`: the backend opens a multi-queue TAP, offers MQ, and both
/// pairs carry frames.
fn multiqueue_in_netns() {
    if !enter_netns() {
        return;
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let sock_fd = theirs.into_raw_fd();
    let (daemon, done_rx) = daemon(vec![
        "--fd".into(),
        sock_fd.to_string(),
        "--tap".into(),
        MQ_TAP_NAME.into(),
        "--queue-pairs".into(),
        "2".into(),
    ]);
    let mut fe = Frontend::from_stream(ours, 4);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let offered = negotiate(&mut fe, &mem, &memfd, VIRTIO_NET_F_MQ);
    assert_ne!(offered & VIRTIO_NET_F_MQ, 0);
    assert_eq!(fe.get_queue_num().unwrap(), 4);
    let cfg = config(&mut fe, CONFIG_SPACE_SIZE);
    assert_eq!(cfg[0] & 3, 2, "a random locally administered unicast MAC");
    assert_eq!(cfg[8..10], [2, 0], "max_virtqueue_pairs");
    // The backend has set the TAP up by now (features negotiated): bring the link up.
    link_up(MQ_TAP_NAME);
    let sniffer = packet_socket(MQ_TAP_NAME);

    let mut rings = two_pairs(&mut fe, &mem);
    // TX on each pair.
    for (pair, tx) in [(0u8, 1usize), (1, 3)] {
        let frame = our_frame(MAC, 0x30 + pair, 100 + usize::from(pair));
        let at = 0x10_0000 + 0x1000 * u64::from(pair);
        transmit(&mem, &mut rings[tx], at, &[0; NET_HDR_SIZE], &frame);
        assert_eq!(recv_ours(&sniffer), frame, "TX of pair {pair}");
    }
    // RX: buffers on both pairs; the TAP picks a queue by flow hash.
    for rx in [0usize, 2] {
        for i in 0..8u64 {
            rings[rx].add_one(
                &mem,
                0x20_0000 + 0x8_0000 * rx as u64 + i * 0x1000,
                2048,
                true,
            );
        }
        rings[rx].kick();
    }
    let host_frame = our_frame([0x02, 0, 0, 0, 0, 1], 0x77, 120);
    host_send(&sniffer, &host_frame);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = false;
    while !found && Instant::now() < deadline {
        for rx in [0usize, 2] {
            let used_idx = rings[rx].used_idx(&mem);
            while rings[rx].used_seen != used_idx {
                let (id, len) = rings[rx].pop_used(&mem);
                let base = 0x20_0000 + 0x8_0000 * rx as u64 + u64::from(id) * 0x1000;
                found |= rx_holds(&mem, base, len, &host_frame);
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert!(found, "the host's frame in an RX buffer of either pair");
    ends_cleanly(fe, &done_rx);
    let _ = daemon.join();
}

#[test]
fn multiqueue_tap_opened_by_name() {
    if_permitted(multiqueue_in_netns);
}

#[test]
fn frames_cross_a_real_tap_in_a_private_namespace() {
    if_permitted(run_in_netns);
}

#[test]
fn a_tap_without_vnet_headers_is_refused() {
    let Some(status) = if_permitted(|| {
        new_netns().unwrap();
        let tap = create_tap_with(0x0002 | 0x1000); // IFF_TAP | IFF_NO_PI only
        let (_ours, theirs) = UnixStream::pair().unwrap();
        main_with_args([
            "bulkhead-net".to_string(),
            "--landlock".into(),
            "off".into(),
            "--seccomp".into(),
            "off".into(),
            "--fd".into(),
            theirs.into_raw_fd().to_string(),
            "--tap-fd".into(),
            tap.into_raw_fd().to_string(),
        ])
    }) else {
        return;
    };
    assert_eq!(status, 1);
}

/// The configuration Linux guests use: mergeable RX buffers and event indexes. A frame
/// larger than one buffer spreads over two, the first header saying so.
fn mergeable_in_netns() {
    new_netns().unwrap();
    let tap = create_tap();
    link_up(TAP_NAME);
    let sniffer = packet_socket(TAP_NAME);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (sock_fd, tap_fd) = (theirs.into_raw_fd(), tap.into_raw_fd());
    let (_daemon, done_rx) = daemon(vec![
        "--fd".into(),
        sock_fd.to_string(),
        "--tap-fd".into(),
        tap_fd.to_string(),
        "--mac".into(),
        "52:54:00:12:34:56".into(),
    ]);
    let mut fe = Frontend::from_stream(ours, 2);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    negotiate(
        &mut fe,
        &mem,
        &memfd,
        VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
    );
    let mut rx = Ring::new(0, 0, QUEUE_SIZE);
    let mut tx = Ring::new(1, 0x8000, QUEUE_SIZE);
    rx.set_up(&mut fe, &mem);
    tx.set_up(&mut fe, &mem);

    for i in 0..16u64 {
        rx.add_one(&mem, 0x20_0000 + i * 0x1000, 1024, true);
    }
    rx.kick();
    let host_frame = our_frame([0x02, 0, 0, 0, 0, 1], 0x3c, 1400);
    host_send(&sniffer, &host_frame);
    let mut found = false;
    for _ in 0..16 {
        let (id, len) = rx.wait_one_used(&mem);
        let base = 0x20_0000 + u64::from(id) * 0x1000;
        let mut head = vec![0u8; len as usize];
        mem.read_slice(&mut head, GuestAddress(base)).unwrap();
        let num_buffers = u16::from_le_bytes([head[10], head[11]]);
        let mut frame = head[NET_HDR_SIZE..].to_vec();
        for _ in 1..num_buffers {
            let (id, len) = rx.wait_one_used(&mem);
            let mut more = vec![0u8; len as usize];
            mem.read_slice(&mut more, GuestAddress(0x20_0000 + u64::from(id) * 0x1000))
                .unwrap();
            frame.extend(more);
        }
        if frame.len() >= 14 && frame[12..14] == ETHERTYPE {
            assert_eq!((len, num_buffers), (1024, 2), "split over two buffers");
            assert_eq!(frame, host_frame, "frame intact");
            found = true;
            break;
        }
    }
    assert!(found, "the host's frame in the RX buffers");

    // TX still works with event indexes, twice (the second kick must be noticed too).
    for n in 0..2u8 {
        let frame = our_frame(MAC, 0x40 + n, 300);
        let at = 0x10_0000 + 0x1000 * u64::from(n);
        transmit(&mem, &mut tx, at, &[0; NET_HDR_SIZE], &frame);
        assert_eq!(recv_ours(&sniffer), frame);
    }
    ends_cleanly(fe, &done_rx);
}

#[test]
fn mergeable_buffers_and_event_idx_on_a_real_tap() {
    if_permitted(mergeable_in_netns);
}

const DETACH_TAP_NAME: &str = "bhmq1";

/// How many queues of TAP `name` are attached: the kernel sets the interface's real queue
/// count to that, and sysfs lists one `rx-<n>` per queue. Sysfs shows the namespace of
/// whoever mounted it, so the caller mounts one of its own (see [`private_sysfs`]).
fn attached_queues(sysfs: &std::path::Path, name: &str) -> usize {
    std::fs::read_dir(sysfs.join("class/net").join(name).join("queues"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count()
}

/// Sysfs as this thread's network namespace sees it, mounted in a mount namespace of the
/// thread's own (gone with the thread), at a fresh directory.
fn private_sysfs() -> std::path::PathBuf {
    // SAFETY: unshare takes flags only; CLONE_NEWNS moves just this thread (it has its
    // own fs_struct afterwards).
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
    let root = std::ffi::CString::new("/").unwrap();
    // SAFETY: NUL-terminated strings valid for the call; makes our mounts private.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // One per caller: tests running at once must not unmount each other's.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bhmq-sysfs-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, at) = (
        std::ffi::CString::new("sysfs").unwrap(),
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap(),
    );
    // SAFETY: NUL-terminated strings valid for the call.
    let r = unsafe { libc::mount(src.as_ptr(), at.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(r, 0, "mounting sysfs: {}", std::io::Error::last_os_error());
    dir
}

/// Unmounts and removes what [`private_sysfs`] made.
fn drop_private_sysfs(sysfs: &std::path::Path) {
    let at = std::ffi::CString::new(sysfs.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path valid for the call.
    unsafe { libc::umount2(at.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(sysfs);
}

/// Waits (3 s at most) for `attached_queues(name)` to be `n`.
fn wait_attached(sysfs: &std::path::Path, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while attached_queues(sysfs, name) != n {
        assert!(
            Instant::now() < deadline,
            "TAP {name}: {} queues attached, expected {n}",
            attached_queues(sysfs, name)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// An IPv4/UDP frame from source port `sport` (the TAP steers by the flow's hash), its
/// payload marked with `mark`.
fn udp_frame(sport: u16, mark: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let payload = [mark; 32];
    let total = (20 + 8 + payload.len()) as u16;
    f.extend([
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend([10, 9, 0, 1, 10, 9, 0, 2]);
    f.extend(sport.to_be_bytes());
    f.extend(9999u16.to_be_bytes());
    f.extend((8 + payload.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// RX buffer `id` of RX ring `rx` (0 or 2).
fn rx_buffer(rx: usize, id: u32) -> u64 {
    0x20_0000 + 0x8_0000 * rx as u64 + u64::from(id % 128) * 0x1000
}

/// Sends one frame per source port in `sports` (marked `mark`) into the TAP and returns,
/// for each RX ring (0 and 2), how many of them turned up there; panics if any is missing.
fn steer(
    mem: &Mem,
    rings: &mut [Ring],
    sniffer: &OwnedFd,
    sports: std::ops::Range<u16>,
    mark: u8,
) -> [usize; 2] {
    let frames: Vec<Vec<u8>> = sports.map(|p| udp_frame(p, mark)).collect();
    for frame in &frames {
        host_send(sniffer, frame);
    }
    let mut got = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.iter().sum::<usize>() < frames.len() && Instant::now() < deadline {
        for (slot, rx) in [0usize, 2].into_iter().enumerate() {
            let used_idx = rings[rx].used_idx(mem);
            while rings[rx].used_seen != used_idx {
                let (id, len) = rings[rx].pop_used(mem);
                if frames
                    .iter()
                    .any(|f| rx_holds(mem, rx_buffer(rx, id), len, f))
                {
                    got[slot] += 1;
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        got.iter().sum::<usize>(),
        frames.len(),
        "frames lost: {got:?}"
    );
    got
}

/// Fills RX ring `ring` with buffers (as many as it has free entries) and kicks it.
fn fill_rx(mem: &Mem, ring: &mut Ring) {
    let outstanding = ring.avail_idx.wrapping_sub(ring.used_seen);
    for _ in outstanding..ring.size {
        let id = ring.next_desc % ring.size;
        ring.add(mem, &[(rx_buffer(ring.index, u32::from(id)), 2048, true)]);
    }
    ring.kick();
}

/// A two-pair TAP: pair 1's queue is detached until its rings are enabled and used, gets
/// frames once attached, is detached again when the frontend disables its rings (then
/// every frame reaches pair 0), and attached again when they are re-enabled.
fn detach_in_netns() {
    if !enter_netns() {
        return;
    }
    let sysfs = private_sysfs();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let sock_fd = theirs.into_raw_fd();
    let (daemon, done_rx) = daemon(vec![
        "--fd".into(),
        sock_fd.to_string(),
        "--tap".into(),
        DETACH_TAP_NAME.into(),
        "--queue-pairs".into(),
        "2".into(),
        "--mac".into(),
        "52:54:00:12:34:57".into(),
    ]);
    let mut fe = Frontend::from_stream(ours, 4);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    negotiate(&mut fe, &mem, &memfd, VIRTIO_NET_F_MQ);
    // Nothing enabled yet: only pair 0's queue is attached.
    wait_attached(&sysfs, DETACH_TAP_NAME, 1);
    link_up(DETACH_TAP_NAME);
    let sniffer = packet_socket(DETACH_TAP_NAME);
    let mut rings = two_pairs(&mut fe, &mem);
    fill_rx(&mem, &mut rings[0]);
    fill_rx(&mem, &mut rings[2]);
    // The RX kick on pair 1 attached its queue: flows spread over both.
    wait_attached(&sysfs, DETACH_TAP_NAME, 2);
    let both = steer(&mem, &mut rings, &sniffer, 1000..1040, 0xa1);
    assert!(both[1] > 0, "no flow steered to pair 1: {both:?}");

    // The driver switches to one pair: the backend detaches pair 1's queue by itself.
    fe.set_vring_enable(2, false).unwrap();
    fe.set_vring_enable(3, false).unwrap();
    wait_attached(&sysfs, DETACH_TAP_NAME, 1);
    fill_rx(&mem, &mut rings[0]);
    let one = steer(&mem, &mut rings, &sniffer, 2000..2040, 0xb2);
    assert_eq!(one, [40, 0], "frames on a disabled pair");

    // Enabled again: attached at its next kick.
    fe.set_vring_enable(2, true).unwrap();
    fe.set_vring_enable(3, true).unwrap();
    rings[2].kick();
    wait_attached(&sysfs, DETACH_TAP_NAME, 2);

    ends_cleanly(fe, &done_rx);
    let _ = daemon.join();
    drop_private_sysfs(&sysfs);
}

#[test]
fn a_disabled_pair_has_its_tap_queue_detached() {
    if_permitted(detach_in_netns);
}

const SUCCESSOR_TAP_NAME: &str = "bhmq2";

/// One queue of the two-queue TAP `SUCCESSOR_TAP_NAME`, as the launcher opens it.
fn mq_queue() -> OwnedFd {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    let mut req = ifreq(SUCCESSOR_TAP_NAME, 0x0002 | 0x1000 | 0x4000 | 0x0100);
    // SAFETY: TUNSETIFF reads and writes an ifreq, valid for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    OwnedFd::from(file)
}

/// Starts a backend on copies of `queues` (as the launcher hands a restarted process the
/// same TAP queues) and negotiates two pairs.
fn start_on(queues: &[OwnedFd]) -> (Frontend, JoinHandle<()>, mpsc::Receiver<i32>, Mem, File) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fds: Vec<String> = queues
        .iter()
        .map(|q| q.try_clone().unwrap().into_raw_fd().to_string())
        .collect();
    let (daemon, done_rx) = daemon(vec![
        "--fd".into(),
        theirs.into_raw_fd().to_string(),
        "--tap-fd".into(),
        fds.join(","),
        "--queue-pairs".into(),
        queues.len().to_string(),
    ]);
    // A backend that failed before taking its socket leaves it open: don't wait forever.
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut fe = Frontend::from_stream(ours, 4);
    let (mem, memfd) = guest_memory(MEM_SIZE);
    negotiate(&mut fe, &mem, &memfd, VIRTIO_NET_F_MQ);
    (fe, daemon, done_rx, mem, memfd)
}

/// A backend dies with pair 1's TAP queue detached (never enabled); its successor gets the
/// same descriptors, must start, and must get pair 1 working when the driver uses it.
fn successor_in_netns() {
    if !enter_netns() {
        return;
    }
    let sysfs = private_sysfs();
    let queues = [mq_queue(), mq_queue()];
    wait_attached(&sysfs, SUCCESSOR_TAP_NAME, 2);

    let (fe, daemon, done_rx, _mem, _memfd) = start_on(&queues);
    wait_attached(&sysfs, SUCCESSOR_TAP_NAME, 1);
    ends_cleanly(fe, &done_rx);
    let _ = daemon.join();
    // Left detached by the dead backend: our copies share its queue state.
    assert_eq!(attached_queues(&sysfs, SUCCESSOR_TAP_NAME), 1);

    let (mut fe, daemon, done_rx, mem, _memfd) = start_on(&queues);
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "the successor exited at start"
    );
    wait_attached(&sysfs, SUCCESSOR_TAP_NAME, 1);
    link_up(SUCCESSOR_TAP_NAME);
    let sniffer = packet_socket(SUCCESSOR_TAP_NAME);
    let mut rings = two_pairs(&mut fe, &mem);
    fill_rx(&mem, &mut rings[2]);
    wait_attached(&sysfs, SUCCESSOR_TAP_NAME, 2);
    // TX through pair 1's queue (EBADFD if it were still detached).
    let frame = our_frame(MAC, 0x41, 90);
    let at = 0x10_0000;
    transmit(&mem, &mut rings[3], at, &[0; NET_HDR_SIZE], &frame);
    assert_eq!(recv_ours(&sniffer), frame, "TX on pair 1 of the successor");
    ends_cleanly(fe, &done_rx);
    let _ = daemon.join();
    drop_private_sysfs(&sysfs);
}

#[test]
fn a_successor_reattaches_tap_queues_its_predecessor_left_detached() {
    if_permitted(successor_in_netns);
}

/// One standalone backend (a listening socket, no `--once`), two frontends in a row: each
/// gets its frame out on the TAP and the host's frame in, through the same process state
/// (the TAP, its RX thread stopped and started again); then termination ends it with
/// `Terminated`.
fn standalone_in_netns() {
    use bulkhead_devices::daemon::{Ended, Termination};
    use clap::Parser;
    if let Err(e) = new_netns() {
        common::skip::skip_or_fail(
            common::skip::SkipKind::NotPermitted,
            &format!("unshare(CLONE_NEWNET): {e}"),
        );
        return;
    }
    let tap = create_tap();
    link_up(TAP_NAME);
    let sniffer = packet_socket(TAP_NAME);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("net.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let args = bulkhead_devices::net::Args::parse_from([
        "bulkhead-net".to_string(),
        "--fd".into(),
        listener.into_raw_fd().to_string(),
        "--tap-fd".into(),
        tap.into_raw_fd().to_string(),
        "--mac".into(),
        "52:54:00:12:34:56".into(),
    ]);
    let config = bulkhead_devices::net::Config::try_from(args).unwrap();
    let termination = Termination::manual();
    let stopper = termination.clone();
    let daemon = thread::spawn(move || {
        bulkhead_devices::net::run_with(config, &termination).map_err(|e| e.to_string())
    });

    for round in 0..2u8 {
        let mut fe = Frontend::connect(&path, 2).unwrap();
        let (mem, memfd) = guest_memory(MEM_SIZE);
        negotiate(&mut fe, &mem, &memfd, 0);
        let mut rx = Ring::new(0, 0, QUEUE_SIZE);
        let mut tx = Ring::new(1, 0x8000, QUEUE_SIZE);
        rx.set_up(&mut fe, &mem);
        tx.set_up(&mut fe, &mem);

        let frame = our_frame(MAC, 0x30 + round, 200);
        let at = 0x10_0000u64;
        mem.write_slice(&[0u8; NET_HDR_SIZE], GuestAddress(at))
            .unwrap();
        mem.write_slice(&frame, GuestAddress(at + NET_HDR_SIZE as u64))
            .unwrap();
        let head = tx.add_one(&mem, at, (NET_HDR_SIZE + frame.len()) as u32, false);
        tx.kick();
        assert_eq!(
            tx.wait_one_used(&mem),
            (u32::from(head), 0),
            "round {round}"
        );
        assert_eq!(
            recv_ours(&sniffer),
            frame,
            "frontend {round}'s frame on the TAP"
        );

        for i in 0..16u64 {
            rx.add_one(&mem, 0x20_0000 + i * 0x1000, 2048, true);
        }
        rx.kick();
        let host_frame = our_frame([0x02, 0, 0, 0, 0, 1], 0xa0 + round, 300);
        // SAFETY: `host_frame` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                sniffer.as_raw_fd(),
                host_frame.as_ptr().cast(),
                host_frame.len(),
                0,
            )
        };
        assert_eq!(n, host_frame.len() as isize);
        let found = (0..16).find_map(|_| {
            let (id, len) = rx.wait_one_used(&mem);
            let base = 0x20_0000 + u64::from(id) * 0x1000;
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(base)).unwrap();
            (buf.len() >= NET_HDR_SIZE + 14
                && buf[NET_HDR_SIZE + 12..NET_HDR_SIZE + 14] == ETHERTYPE)
                .then_some(buf)
        });
        let buf = found.unwrap_or_else(|| panic!("the host's frame for frontend {round}"));
        assert_eq!(
            buf[NET_HDR_SIZE..],
            host_frame[..],
            "frame intact, round {round}"
        );
        drop(fe);
        assert!(
            !daemon.is_finished(),
            "the backend ended after frontend {round}"
        );
    }
    stopper.trigger();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.is_finished() {
        assert!(
            Instant::now() < deadline,
            "no end within 10 s of termination"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.join().unwrap(), Ok(Ended::Terminated));
}

#[test]
fn a_standalone_backend_serves_two_frontends_on_one_tap() {
    if let Some(reason) = unsupported() {
        common::skip::skip_or_fail(common::skip::SkipKind::NotPermitted, &reason);
        return;
    }
    thread::spawn(standalone_in_netns).join().unwrap();
}
