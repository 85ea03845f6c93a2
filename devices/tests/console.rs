//! `bulkhead-console` end to end, without a VMM: the real daemon (`main_with_args`, as the
//! binary runs it) on one end of a socketpair, vhost's own frontend on the other. The test
//! plays the VMM and the guest driver (memfd guest memory, split virtqueues it lays out,
//! kicks, call eventfds) and the user at the other end of the console stream.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bulkhead_devices::console::{main_with_args, CONFIG_SPACE_SIZE};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 64;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
const SIZE_BIT: u64 = 1 << 0;
const RX: usize = 0;
const TX: usize = 1;

fn daemon(args: Vec<String>) -> JoinHandle<i32> {
    thread::spawn(move || {
        let mut argv = vec!["bulkhead-console".to_string()];
        argv.extend(args);
        main_with_args(argv)
    })
}

fn guest_memory() -> (Mem, File) {
    // SAFETY: memfd_create with a NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).unwrap();
    let mem = Mem::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (mem, file)
}

fn host_addr(mem: &Mem, gpa: u64) -> u64 {
    mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
}

struct Ring {
    index: usize,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    kick: EventFd,
    call: EventFd,
}

impl Ring {
    fn new(index: usize, base: u64) -> Ring {
        let desc = base;
        let avail = desc + 16 * u64::from(QUEUE_SIZE);
        let used = (avail + 6 + 2 * u64::from(QUEUE_SIZE) + 3) & !3;
        Ring {
            index,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    fn set_up(&self, fe: &mut Frontend, mem: &Mem) {
        fe.set_vring_num(self.index, QUEUE_SIZE).unwrap();
        fe.set_vring_addr(
            self.index,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host_addr(mem, self.desc),
                used_ring_addr: host_addr(mem, self.used),
                avail_ring_addr: host_addr(mem, self.avail),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(self.index, 0).unwrap();
        fe.set_vring_call(self.index, &self.call).unwrap();
        fe.set_vring_kick(self.index, &self.kick).unwrap();
        fe.set_vring_enable(self.index, true).unwrap();
    }

    /// Adds a chain of (gpa, len, device-writable), makes it available and kicks.
    fn add(&mut self, mem: &Mem, parts: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc % QUEUE_SIZE;
        for (i, &(addr, len, write)) in parts.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == parts.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, (idx + 1) % QUEUE_SIZE));
            mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
                .unwrap();
        }
        self.next_desc = self.next_desc.wrapping_add(parts.len() as u16);
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let used_event = self.avail + 4 + 2 * u64::from(QUEUE_SIZE);
        mem.write_obj(self.used_seen, GuestAddress(used_event))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();
        head
    }

    /// Waits for the call eventfd until `expect` new used entries; returns (id, len).
    fn wait_used(&mut self, mem: &Mem, expect: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while out.len() < expect {
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, 5 s timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
            assert_eq!(n, 1, "no interrupt from the backend within 5 s");
            let _ = self.call.read();
            let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            while self.used_seen != used_idx {
                let at = self.used + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
        }
        out
    }
}

/// The guest side: memory, both queues set up.
struct Guest {
    _fe: Frontend,
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
        let (mem, memfd) = guest_memory();
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let mut want =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | PROTOCOL_FEATURES_BIT;
        assert_eq!(offered & want, want, "offered {offered:#x}");
        assert_eq!(
            offered & SIZE_BIT != 0,
            size.is_some(),
            "offered {offered:#x}"
        );
        want |= offered & SIZE_BIT;
        let protocol = fe.get_protocol_features().unwrap();
        let needed = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
        assert!(protocol.contains(needed), "{protocol:?}");
        fe.set_protocol_features(needed).unwrap();
        fe.set_features(want).unwrap();
        let region = mem.iter().next().unwrap();
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: host_addr(&mem, 0),
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        }])
        .unwrap();
        let (_, cfg) = fe
            .get_config(
                0,
                CONFIG_SPACE_SIZE as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_SPACE_SIZE],
            )
            .unwrap();
        let (cols, rows) = size.unwrap_or((0, 0));
        let mut want_cfg = [0u8; CONFIG_SPACE_SIZE];
        want_cfg[0..2].copy_from_slice(&cols.to_le_bytes());
        want_cfg[2..4].copy_from_slice(&rows.to_le_bytes());
        want_cfg[4] = 1;
        assert_eq!(cfg, want_cfg, "size, then one port");
        let rx = Ring::new(RX, 0);
        let tx = Ring::new(TX, 0x4000);
        rx.set_up(&mut fe, &mem);
        tx.set_up(&mut fe, &mem);
        Guest {
            _fe: fe,
            mem,
            _memfd: memfd,
            rx,
            tx,
        }
    }

    /// Writes `bytes` on the transmitq (one chain) and waits for it to be consumed.
    fn write(&mut self, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let head = self.tx.add(&self.mem, &[(at, bytes.len() as u32, false)]);
        assert_eq!(self.tx.wait_used(&self.mem, 1), vec![(u32::from(head), 0)]);
    }

    /// Posts a receive buffer of `len` bytes at `at` and waits for it to be filled.
    fn read(&mut self, at: u64, len: u32) -> Vec<u8> {
        let head = self.rx.add(&self.mem, &[(at, len, true)]);
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
    let head = g.tx.add(&g.mem, &[(a, 5, false), (b, 10, false)]);
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
