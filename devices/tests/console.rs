//! `bulkhead-console` end to end, without a VMM: the real daemon (`main_with_args`, as the
//! binary runs it) on one end of a socketpair, vhost's own frontend on the other. The test
//! plays the VMM and the guest driver (memfd guest memory, split virtqueues it lays out,
//! kicks, call eventfds) and the user at the other end of the console stream.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bulkhead_devices::console::{main_with_args, CONFIG_SPACE_SIZE};
use common::{config, guest_memory, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Frontend;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 64;
const SIZE_BIT: u64 = 1 << 0;
const RX: usize = 0;
const TX: usize = 1;

fn daemon(args: Vec<String>) -> JoinHandle<i32> {
    common::daemon("bulkhead-console", main_with_args, args)
}

/// Adds a chain of (gpa, len, device-writable) to `ring`, makes it available and kicks.
fn add_and_kick(ring: &mut Ring, mem: &Mem, parts: &[(u64, u32, bool)]) -> u16 {
    let head = ring.add(mem, parts);
    ring.kick();
    head
}

/// The guest side: memory, both queues set up.
struct Guest {
    fe: Frontend,
    mem: Mem,
    _memfd: File,
    rx: Ring,
    tx: Ring,
}

impl Guest {
    fn connect(fe_end: UnixStream) -> Guest {
        Guest::connect_sized(fe_end, None)
    }

    /// As `connect`, expecting the terminal size (cols, rows) and VIRTIO_CONSOLE_F_SIZE.
    fn connect_sized(fe_end: UnixStream, size: Option<(u16, u16)>) -> Guest {
        let mut fe = Frontend::from_stream(fe_end, 2);
        let (mem, memfd) = guest_memory(MEM_SIZE);
        let want =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | PROTOCOL_FEATURES_BIT;
        let needed = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
        common::negotiate(&mut fe, &mem, &memfd, want, needed, |offered| {
            assert_eq!(
                offered & SIZE_BIT != 0,
                size.is_some(),
                "offered {offered:#x}"
            );
            want | (offered & SIZE_BIT)
        });
        let cfg = config(&mut fe, CONFIG_SPACE_SIZE);
        let (cols, rows) = size.unwrap_or((0, 0));
        let mut want_cfg = [0u8; CONFIG_SPACE_SIZE];
        want_cfg[0..2].copy_from_slice(&cols.to_le_bytes());
        want_cfg[2..4].copy_from_slice(&rows.to_le_bytes());
        want_cfg[4] = 1;
        assert_eq!(cfg, want_cfg, "size, then one port");
        let rx = Ring::new(RX, 0, QUEUE_SIZE);
        let tx = Ring::new(TX, 0x4000, QUEUE_SIZE);
        rx.set_up(&mut fe, &mem);
        tx.set_up(&mut fe, &mem);
        Guest {
            fe,
            mem,
            _memfd: memfd,
            rx,
            tx,
        }
    }

    /// Writes `bytes` on the transmitq (one chain) and waits for it to be consumed.
    fn write(&mut self, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let head = add_and_kick(&mut self.tx, &self.mem, &[(at, bytes.len() as u32, false)]);
        assert_eq!(self.tx.wait_used(&self.mem, 1), vec![(u32::from(head), 0)]);
    }

    /// Posts a receive buffer of `len` bytes at `at` and waits for it to be filled.
    fn read(&mut self, at: u64, len: u32) -> Vec<u8> {
        let head = add_and_kick(&mut self.rx, &self.mem, &[(at, len, true)]);
        let used = self.rx.wait_used(&self.mem, 1);
        assert_eq!(used[0].0, u32::from(head));
        let mut v = vec![0u8; used[0].1 as usize];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

fn read_exactly(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn stream_fd_carries_bytes_both_ways_in_order() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (mut host, stream) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let d = daemon(vec![
        "--fd".into(),
        theirs.into_raw_fd().to_string(),
        "--stream-fd".into(),
        stream.into_raw_fd().to_string(),
    ]);
    let mut g = Guest::connect(ours);

    // Guest to host: several chains, one of them two buffers, arrive in order.
    g.write(0x10000, b"hello ");
    let (a, b) = (0x11000u64, 0x12000u64);
    g.mem.write_slice(b"from ", GuestAddress(a)).unwrap();
    g.mem.write_slice(b"the guest\n", GuestAddress(b)).unwrap();
    let head = add_and_kick(&mut g.tx, &g.mem, &[(a, 5, false), (b, 10, false)]);
    assert_eq!(g.tx.wait_used(&g.mem, 1), vec![(u32::from(head), 0)]);
    assert_eq!(read_exactly(&mut host, 21), b"hello from the guest\n");

    // Host to guest, typed before the guest has any buffer: it waits in the socket, then
    // arrives in order, split over small buffers.
    host.write_all(b"typed").unwrap();
    thread::sleep(Duration::from_millis(50));
    let mut got = Vec::new();
    while got.len() < 5 {
        let at = 0x20000 + 0x100 * got.len() as u64;
        got.extend(g.read(at, 2));
    }
    assert_eq!(got, b"typed");
    host.write_all(b"more input").unwrap();
    assert_eq!(g.read(0x30000, 64), b"more input");

    drop(g);
    assert_eq!(d.join().unwrap(), 0);
}

#[test]
fn stream_fd_may_be_a_file_for_output_only() {
    let file = TempFile::new().unwrap();
    let path = file.as_path().to_owned();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let d = daemon(vec![
        "--fd".into(),
        theirs.into_raw_fd().to_string(),
        "--stream-fd".into(),
        f.into_raw_fd().to_string(),
    ]);
    let mut g = Guest::connect(ours);
    g.write(0x10000, b"line one\n");
    g.write(0x10000, b"line two\n");
    assert_eq!(std::fs::read(&path).unwrap(), b"line one\nline two\n");
    drop(g);
    assert_eq!(d.join().unwrap(), 0);
}

/// A pseudo-terminal pair (master, slave) with the given size.
fn pty(cols: u16, rows: u16) -> (File, File) {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let master = unsafe { File::from_raw_fd(fd) };
    // SAFETY: grantpt on the master we own.
    assert_eq!(unsafe { libc::grantpt(fd) }, 0);
    // SAFETY: unlockpt on the master we own.
    assert_eq!(unsafe { libc::unlockpt(fd) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes.
    let ret = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    assert_eq!(ret, 0);
    // SAFETY: NUL-terminated by ptsname_r.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name)
        .unwrap();
    (master, slave)
}

#[test]
fn a_terminal_stream_fd_is_raw_and_its_size_reaches_the_config_space() {
    let (mut master, slave) = pty(132, 43);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let d = daemon(vec![
        "--fd".into(),
        theirs.into_raw_fd().to_string(),
        "--stream-fd".into(),
        slave.into_raw_fd().to_string(),
    ]);
    let mut g = Guest::connect_sized(ours, Some((132, 43)));
    // Raw: no CR added to the newline, and input is neither line-buffered nor echoed.
    g.write(0x10000, b"login: \n");
    assert_eq!(read_exactly(&mut master, 8), b"login: \n");
    master.write_all(b"ab").unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(g.read(0x20000, 16));
    }
    assert_eq!(got, b"ab");
    g.write(0x10000, b"!");
    assert_eq!(read_exactly(&mut master, 1), b"!", "no echo came first");
    // Resized: the config space follows (the vmm raises the config interrupt).
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    // SAFETY: TIOCSWINSZ reads one winsize.
    let set = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    assert_eq!(set, 0);
    let cfg = config(&mut g.fe, CONFIG_SPACE_SIZE);
    assert_eq!(&cfg[0..4], &[200, 0, 50, 0], "cols 200, rows 50");
    drop(g);
    assert_eq!(d.join().unwrap(), 0);
}

fn connect_client(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connecting to {}: {e}", path.display()),
        }
    }
}

#[test]
fn socket_client_disconnects_and_a_new_one_takes_over() {
    let dir = TempDir::new().unwrap();
    let sock = dir.as_path().join("console.sock");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let d = daemon(vec![
        "--fd".into(),
        theirs.into_raw_fd().to_string(),
        "--socket".into(),
        sock.display().to_string(),
    ]);
    let mut g = Guest::connect(ours);

    // Output with no client yet is dropped.
    g.write(0x10000, b"nobody hears this\n");

    let mut first = connect_client(&sock);
    // Input proves the client is being served.
    first.write_all(b"1").unwrap();
    assert_eq!(g.read(0x20000, 16), b"1");
    g.write(0x10000, b"to the first\n");
    assert_eq!(read_exactly(&mut first, 13), b"to the first\n");
    drop(first);

    // While nobody is connected, output is dropped; the guest is not held up.
    g.write(0x10000, b"dropped\n");

    let mut second = connect_client(&sock);
    second.write_all(b"2").unwrap();
    assert_eq!(g.read(0x20000, 16), b"2");
    g.write(0x10000, b"to the second\n");
    assert_eq!(read_exactly(&mut second, 14), b"to the second\n");

    drop(g);
    assert_eq!(d.join().unwrap(), 0);
}

#[test]
fn print_capabilities_names_the_console_type() {
    assert_eq!(
        main_with_args(["bulkhead-console", "--print-capabilities"]),
        0
    );
}
