//! `bulkhead-blk`'s inflight region end to end, with vhost's own `Frontend` playing the
//! vmm: GET_INFLIGHT_FD hands out a sealed memfd laid out for the queues; SET_INFLIGHT_FD
//! refuses files it can't trust; and a second backend given the first one's region
//! resubmits exactly the requests the first left in flight, in order, before it serves
//! anything new, with the bytes in the image to show for it.

mod common;

use std::fs::File;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_devices::block::main_with_args;
use common::{guest_memory, host_addr, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 256;
const DISK_SIZE: u64 = 1 << 20;
/// One queue's region for 256 entries: 16 + 256 × 16, rounded up to 64.
const QUEUE_REGION: u64 = 4160;

fn image() -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(DISK_SIZE).unwrap();
    f
}

/// A backend on a socketpair; its frontend, and its exit status on a channel.
///
/// `--lock off`: the tests start a successor on the image while a stalled predecessor's
/// thread (`--test-stall-after`) still holds it open in this process, which QEMU-style
/// locks would refuse. A backend that ends with a failure (a refused image, say) shuts
/// the test's end of the socket down, so the frontend's next request fails at once: the
/// backend's copy of a descriptor it never took up stays open in this process, and
/// vhost's `Frontend` would wait on it for ever (it retries a timed-out receive).
fn backend(img: &TempFile, queues: u16, extra: &[&str]) -> (Frontend, JoinHandle<()>, Exit) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut args = vec![
        "--fd".to_string(),
        theirs.into_raw_fd().to_string(),
        "--blk-file".into(),
        img.as_path().display().to_string(),
        "--queues".into(),
        queues.to_string(),
        "--poll-us".into(),
        "0".into(),
        "--lock".into(),
        "off".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (handle, status) = common::daemon_reporting("bulkhead-blk", main_with_args, args);
    let socket = Arc::new(ours.try_clone().unwrap());
    let watch = Arc::clone(&socket);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(code) = status.recv() {
            if code != 0 {
                let _ = watch.shutdown(Shutdown::Both);
            }
            let _ = tx.send(code);
        }
    });
    let exit = Exit { status: rx, socket };
    (Frontend::from_stream(ours, u64::from(queues)), handle, exit)
}

/// A backend's exit status, and the test's second descriptor of its socket.
struct Exit {
    status: mpsc::Receiver<i32>,
    socket: Arc<UnixStream>,
}

/// SET_OWNER, features, protocol features with INFLIGHT_SHMFD (and REPLY_ACK, every
/// request wanting an ack), SET_FEATURES: what the vmm does before the region.
fn negotiate(fe: &mut Frontend) {
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    let want = (1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES_BIT;
    assert_eq!(offered & want, want);
    let protocol = fe.get_protocol_features().unwrap();
    assert!(
        protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "{protocol:?}"
    );
    fe.set_protocol_features(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
    )
    .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_features(want).unwrap();
}

fn ask(num_queues: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size: QUEUE_SIZE,
    }
}

/// The region as the test sees it (its own shared mapping of the memfd).
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

impl Mapped {
    fn new(file: &File, len: u64) -> Mapped {
        let len = len as usize;
        // SAFETY: a new shared mapping of `len` bytes of a file that holds them.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mapped {
            ptr: ptr.cast(),
            len,
        }
    }

    fn read<const N: usize>(&self, at: usize) -> [u8; N] {
        assert!(at + N <= self.len);
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked); volatile, as the backend writes it concurrently.
            *b = unsafe { self.ptr.add(at + i).read_volatile() };
        }
        out
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (checked).
            unsafe { self.ptr.add(at + i).write_volatile(b) };
        }
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.read(at))
    }

    fn inflight(&self, queue: usize, head: u16) -> u8 {
        self.read::<1>(queue * QUEUE_REGION as usize + 16 + 16 * usize::from(head))[0]
    }

    fn counter(&self, queue: usize, head: u16) -> u64 {
        u64::from_le_bytes(self.read(queue * QUEUE_REGION as usize + 24 + 16 * usize::from(head)))
    }

    /// Marks `head` in flight with `counter`, as a process that popped it would have.
    fn mark(&self, queue: usize, head: u16, counter: u64) {
        let at = queue * QUEUE_REGION as usize + 16 + 16 * usize::from(head);
        self.write(at + 8, &counter.to_le_bytes());
        self.write(at, &[1]);
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our mapping, unused from here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A memfd of `len` bytes sealed against shrinking and growing.
fn sealed_memfd(len: u64) -> File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    // SAFETY: F_ADD_SEALS with an integer on our descriptor.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(r, 0);
    file
}

/// Seals on a descriptor.
fn seals(file: &File) -> i32 {
    // SAFETY: F_GET_SEALS only reads.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) }
}

/// NUM, ADDR, BASE = `base`, CALL, KICK, ENABLE: the vmm's ring set-up (or replay).
fn set_up(fe: &mut Frontend, mem: &Mem, ring: &Ring, base: u16) {
    fe.set_vring_num(ring.index, ring.size).unwrap();
    fe.set_vring_addr(
        ring.index,
        &VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: host_addr(mem, ring.desc),
            used_ring_addr: host_addr(mem, ring.used),
            avail_ring_addr: host_addr(mem, ring.avail),
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(ring.index, base).unwrap();
    fe.set_vring_call(ring.index, &ring.call).unwrap();
    fe.set_vring_kick(ring.index, &ring.kick).unwrap();
    fe.set_vring_enable(ring.index, true).unwrap();
}

/// Makes a one-sector write of `fill` to `sector` available (no kick); returns its head.
/// Each request `n` uses its own buffers.
fn write_request(mem: &Mem, ring: &mut Ring, n: u64, sector: u64, fill: u8) -> u16 {
    let base = 0x100000 + n * 0x1000;
    mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(base)).unwrap();
    mem.write_obj(0u32, GuestAddress(base + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(base + 8)).unwrap();
    mem.write_slice(&[fill; 512], GuestAddress(base + 0x100))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(base + 0x800)).unwrap();
    ring.add(
        mem,
        &[
            (base, 16, false),
            (base + 0x100, 512, false),
            (base + 0x800, 1, true),
        ],
    )
}

fn status(mem: &Mem, n: u64) -> u8 {
    mem.read_obj(GuestAddress(0x100000 + n * 0x1000 + 0x800))
        .unwrap()
}

fn sector(img: &TempFile, s: u64) -> Vec<u8> {
    let bytes = std::fs::read(img.as_path()).unwrap();
    bytes[(s * 512) as usize..(s * 512 + 512) as usize].to_vec()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hangs up on a backend (as its death looks to the vmm, and the end of the process for
/// the test) and waits for it to exit.
fn hang_up(fe: Frontend, handle: JoinHandle<()>, done: Exit) {
    drop(fe);
    let _ = done.socket.shutdown(Shutdown::Both);
    assert_eq!(
        done.status.recv_timeout(Duration::from_secs(10)).unwrap(),
        0
    );
    handle.join().unwrap();
}

#[test]
fn get_inflight_fd_returns_a_sealed_memfd_laid_out_for_the_queues() {
    let img = image();
    let (mut fe, handle, done) = backend(&img, 2, &[]);
    negotiate(&mut fe);
    let (answer, file) = fe.get_inflight_fd(&ask(2)).unwrap();
    assert_eq!(answer.mmap_size, 2 * QUEUE_REGION);
    assert_eq!(answer.mmap_offset, 0);
    assert_eq!((answer.num_queues, answer.queue_size), (2, QUEUE_SIZE));
    assert!(file.metadata().unwrap().len() >= answer.mmap_size);
    let s = seals(&file);
    assert_eq!(
        s & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        "seals {s:#x}"
    );
    assert_eq!(
        file.set_len(1).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    let region = Mapped::new(&file, answer.mmap_size);
    for q in 0..2 {
        let at = q * QUEUE_REGION as usize;
        assert_eq!(region.u16(at + 8), 1, "version");
        assert_eq!(region.u16(at + 10), QUEUE_SIZE, "desc_num");
        assert_eq!(region.u16(at + 14), 0, "used_idx");
    }
    // More queues than the device has: refused, and the connection goes on.
    assert!(fe.get_inflight_fd(&ask(3)).is_err());
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    hang_up(fe, handle, done);
}

#[test]
fn set_inflight_fd_refuses_short_unsealed_and_foreign_files() {
    let img = image();
    let (mut fe, handle, done) = backend(&img, 1, &[]);
    negotiate(&mut fe);
    let good = ask(1);
    let mut claimed = good;
    claimed.mmap_size = QUEUE_REGION;

    // A sealed memfd shorter than the region it claims to hold.
    let short = sealed_memfd(4096);
    assert!(fe.set_inflight_fd(&claimed, short.as_raw_fd()).is_err());
    // The same, long enough: accepted.
    let long = sealed_memfd(QUEUE_REGION);
    fe.set_inflight_fd(&claimed, long.as_raw_fd()).unwrap();

    // Big enough, but a plain file that could be truncated under the mapping.
    let plain = TempFile::new().unwrap();
    plain.as_file().set_len(1 << 20).unwrap();
    assert!(fe
        .set_inflight_fd(&claimed, plain.as_file().as_raw_fd())
        .is_err());

    // A size that doesn't cover the queues; an unaligned offset.
    let (_, ours) = fe.get_inflight_fd(&good).unwrap();
    let mut small = claimed;
    small.mmap_size = 64;
    assert!(fe.set_inflight_fd(&small, ours.as_raw_fd()).is_err());
    let mut odd = claimed;
    odd.mmap_offset = 100;
    assert!(fe.set_inflight_fd(&odd, ours.as_raw_fd()).is_err());
    // The backend's own memfd is accepted; the connection lived through all of it.
    fe.set_inflight_fd(&claimed, ours.as_raw_fd()).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    hang_up(fe, handle, done);
}

/// Starts a backend, gives it `region` (SET_INFLIGHT_FD), the memory table and the ring at
/// base `base`, as the vmm's replay does.
fn successor(
    img: &TempFile,
    extra: &[&str],
    region: &(VhostUserInflight, File),
    mem: &Mem,
    memfd: &File,
    ring: &Ring,
    base: u16,
) -> (Frontend, JoinHandle<()>, Exit) {
    let (mut fe, handle, done) = backend(img, 1, extra);
    negotiate(&mut fe);
    fe.set_inflight_fd(&region.0, region.1.as_raw_fd()).unwrap();
    common::set_mem_table(&mut fe, mem, memfd);
    set_up(&mut fe, mem, ring, base);
    (fe, handle, done)
}

#[test]
fn a_successor_resubmits_what_was_in_flight_in_order() {
    let img = image();
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let mut ring = Ring::new(0, 0, QUEUE_SIZE);

    // The first backend freezes on popping its second request.
    let (mut fe, handle, done) = backend(&img, 1, &["--test-stall-after", "2"]);
    negotiate(&mut fe);
    let region = fe.get_inflight_fd(&ask(1)).unwrap();
    let view = Mapped::new(&region.1, region.0.mmap_size);
    common::set_mem_table(&mut fe, &mem, &memfd);
    set_up(&mut fe, &mem, &ring, 0);
    let h1 = write_request(&mem, &mut ring, 1, 0, 0xa1);
    assert_eq!(ring.kick_and_wait(&mem, 1), vec![(u32::from(h1), 1)]);
    assert_eq!(view.counter(0, h1), 0);
    assert_eq!(view.inflight(0, h1), 0);
    assert_eq!(view.u16(14), 1, "used_idx follows the used ring");
    let h2 = write_request(&mem, &mut ring, 2, 8, 0xb2);
    ring.kick();
    wait_for("request 2 in flight", || view.inflight(0, h2) == 1);
    assert_eq!(view.counter(0, h2), 1);
    // Meanwhile the guest queues two more: the first overwrites request 2's sector.
    let h3 = write_request(&mem, &mut ring, 3, 8, 0xc3);
    let h4 = write_request(&mem, &mut ring, 4, 16, 0xd4);
    hang_up(fe, handle, done);
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(
        sector(&img, 8),
        vec![0; 512],
        "request 2 was never executed"
    );
    // As if the predecessor had batched: request 3 was popped too.
    view.mark(0, h3, 2);

    // The successor freezes on its first pop from the available ring: whatever it
    // completes came from the region.
    let (fe, handle, done) = successor(
        &img,
        &["--test-stall-after", "1"],
        &region,
        &mem,
        &memfd,
        &ring,
        ring.used_idx(&mem),
    );
    ring.kick();
    let used = ring.wait_used(&mem, 2);
    assert_eq!(used, vec![(u32::from(h2), 1), (u32::from(h3), 1)]);
    assert_eq!(
        (status(&mem, 2), status(&mem, 3)),
        (VIRTIO_BLK_S_OK as u8, VIRTIO_BLK_S_OK as u8)
    );
    assert_eq!(
        sector(&img, 8),
        vec![0xc3; 512],
        "resubmitted in counter order"
    );
    wait_for("request 4 in flight", || view.inflight(0, h4) == 1);
    assert_eq!((view.inflight(0, h2), view.inflight(0, h3)), (0, 0));
    assert_eq!(view.u16(14), 3);
    assert_eq!(
        view.counter(0, h4),
        3,
        "counting goes on after the predecessor's"
    );
    hang_up(fe, handle, done);
    assert_eq!(sector(&img, 16), vec![0; 512]);

    // A third instance resubmits request 4, then serves the next one from the ring.
    let (fe, handle, done) =
        successor(&img, &[], &region, &mem, &memfd, &ring, ring.used_idx(&mem));
    let h5 = write_request(&mem, &mut ring, 5, 24, 0xe5);
    ring.kick();
    let used = ring.wait_used(&mem, 2);
    assert_eq!(used, vec![(u32::from(h4), 1), (u32::from(h5), 1)]);
    assert_eq!(sector(&img, 16), vec![0xd4; 512]);
    assert_eq!(sector(&img, 24), vec![0xe5; 512]);
    assert_eq!(sector(&img, 0), vec![0xa1; 512]);
    assert_eq!(ring.used_idx(&mem), 5, "every request completed once");
    hang_up(fe, handle, done);
}

#[test]
fn a_hostile_region_is_refused_and_the_ring_served_as_it_is() {
    let img = image();
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let mut ring = Ring::new(0, 0, QUEUE_SIZE);
    let (mut fe, handle, done) = backend(&img, 1, &["--test-stall-after", "1"]);
    negotiate(&mut fe);
    let region = fe.get_inflight_fd(&ask(1)).unwrap();
    let view = Mapped::new(&region.1, region.0.mmap_size);
    common::set_mem_table(&mut fe, &mem, &memfd);
    set_up(&mut fe, &mem, &ring, 0);
    let h1 = write_request(&mem, &mut ring, 1, 4, 0x11);
    ring.kick();
    wait_for("request 1 in flight", || view.inflight(0, h1) == 1);
    hang_up(fe, handle, done);

    // A compromised predecessor claims every entry in flight, with wild counters.
    for head in 0..QUEUE_SIZE {
        view.mark(0, head, u64::MAX - u64::from(head));
    }
    let (fe, handle, done) = successor(&img, &[], &region, &mem, &memfd, &ring, 0);
    ring.kick();
    // Refused: the request is served once, from the available ring.
    assert_eq!(ring.wait_used(&mem, 1), vec![(u32::from(h1), 1)]);
    assert_eq!(sector(&img, 4), vec![0x11; 512]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ring.used_idx(&mem), 1);
    // The region was laid out afresh and tracks again.
    assert_eq!(view.u16(8), 1);
    assert_eq!(view.inflight(0, 7), 0);
    assert_eq!(view.u16(14), 1);
    hang_up(fe, handle, done);
}

#[test]
fn each_queue_resubmits_its_own() {
    let img = image();
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let mut rings = [
        Ring::new(0, 0, QUEUE_SIZE),
        Ring::new(1, 0x8000, QUEUE_SIZE),
    ];
    // Both queues freeze on their first request.
    let (mut fe, handle, done) = backend(&img, 2, &["--test-stall-after", "1"]);
    negotiate(&mut fe);
    let region = fe.get_inflight_fd(&ask(2)).unwrap();
    let view = Mapped::new(&region.1, region.0.mmap_size);
    common::set_mem_table(&mut fe, &mem, &memfd);
    for r in &rings {
        set_up(&mut fe, &mem, r, 0);
    }
    let heads: Vec<u16> = (0..2)
        .map(|q| {
            let h = write_request(
                &mem,
                &mut rings[q],
                10 + q as u64,
                40 + q as u64,
                0x70 + q as u8,
            );
            rings[q].kick();
            h
        })
        .collect();
    for (q, &head) in heads.iter().enumerate() {
        wait_for("a request in flight on each queue", || {
            view.inflight(q, head) == 1
        });
    }
    hang_up(fe, handle, done);

    // The successor freezes on its first pop too: what it completes came from the region.
    let (mut fe, handle, done) = backend(&img, 2, &["--test-stall-after", "1"]);
    negotiate(&mut fe);
    fe.set_inflight_fd(&region.0, region.1.as_raw_fd()).unwrap();
    common::set_mem_table(&mut fe, &mem, &memfd);
    for r in &rings {
        set_up(&mut fe, &mem, r, 0);
    }
    for (q, ring) in rings.iter_mut().enumerate() {
        ring.kick();
        assert_eq!(ring.wait_used(&mem, 1), vec![(u32::from(heads[q]), 1)]);
        assert_eq!(sector(&img, 40 + q as u64), vec![0x70 + q as u8; 512]);
        assert_eq!(
            view.u16(q * QUEUE_REGION as usize + 14),
            1,
            "queue {q}'s used_idx"
        );
    }
    hang_up(fe, handle, done);
}

/// Set in a copy of this test binary that runs `bulkhead-blk` as its own process:
/// `FD IMAGE [ARGS...]`, space-separated.
const CHILD_ENV: &str = "BULKHEAD_INFLIGHT_TEST_CHILD";

/// Not a test of its own: the body of the process [`confined_backend`] starts.
#[test]
fn child_backend() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut words = spec.split(' ');
    let (fd, img) = (words.next().unwrap(), words.next().unwrap());
    let mut args: Vec<String> = [
        "bulkhead-blk",
        "--landlock",
        "off",
        "--seccomp",
        "enforce",
        "--fd",
        fd,
        "--blk-file",
        img,
        "--poll-us",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(words.map(str::to_string));
    std::process::exit(main_with_args(args));
}

/// `bulkhead-blk` in a process of its own, every thread under its seccomp filter
/// (enforce): a copy of this binary running [`child_backend`].
fn confined_backend(img: &TempFile, extra: &str) -> (Frontend, std::process::Child) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    // SAFETY: clears FD_CLOEXEC on a descriptor we own, so the child inherits it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_backend",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!("{fd} {} {extra}", img.as_path().display()).trim(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    (Frontend::from_stream(ours, 1), child)
}

/// Hangs up on a confined backend; its exit status must be 0 (a seccomp violation is
/// SIGSYS); returns its stderr.
fn hang_up_child(fe: Frontend, child: std::process::Child) -> String {
    drop(fe);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    stderr
}

#[test]
fn a_confined_successor_resubmits_and_says_so() {
    let img = image();
    let (mem, memfd) = guest_memory(MEM_SIZE);
    let mut ring = Ring::new(0, 0, QUEUE_SIZE);

    let (mut fe, child) = confined_backend(&img, "--test-stall-after 2");
    negotiate(&mut fe);
    let region = fe.get_inflight_fd(&ask(1)).unwrap();
    let view = Mapped::new(&region.1, region.0.mmap_size);
    common::set_mem_table(&mut fe, &mem, &memfd);
    set_up(&mut fe, &mem, &ring, 0);
    let h1 = write_request(&mem, &mut ring, 1, 2, 0x5a);
    assert_eq!(ring.kick_and_wait(&mem, 1), vec![(u32::from(h1), 1)]);
    let h2 = write_request(&mem, &mut ring, 2, 3, 0x6b);
    ring.kick();
    wait_for("request 2 in flight", || view.inflight(0, h2) == 1);
    let stderr = hang_up_child(fe, child);
    assert!(!stderr.contains("resubmitted"), "{stderr}");

    let (mut fe, child) = confined_backend(&img, "");
    negotiate(&mut fe);
    // SET twice: the second replaces (unmaps) the first mapping.
    fe.set_inflight_fd(&region.0, region.1.as_raw_fd()).unwrap();
    fe.set_inflight_fd(&region.0, region.1.as_raw_fd()).unwrap();
    common::set_mem_table(&mut fe, &mem, &memfd);
    set_up(&mut fe, &mem, &ring, ring.used_idx(&mem));
    ring.kick();
    assert_eq!(ring.wait_used(&mem, 1), vec![(u32::from(h2), 1)]);
    assert_eq!(sector(&img, 3), vec![0x6b; 512]);
    let stderr = hang_up_child(fe, child);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("in-flight")).collect();
    assert_eq!(
        lines,
        ["bulkhead-blk: queue 0: resubmitted 1 in-flight request(s)"],
        "{stderr}"
    );
}
