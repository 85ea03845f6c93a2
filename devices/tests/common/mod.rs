//! The harness the end-to-end tests share: they play the VMM and the guest driver against
//! a real backend daemon through vhost's own `Frontend`, with a memfd as guest memory and
//! split virtqueues laid out in it by hand.
//!
//! Each test binary compiles this module for itself and uses only part of it.
#![allow(dead_code)]

pub mod child;
#[path = "../../../tests/common/skip.rs"]
pub mod skip;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

pub type Mem = GuestMemoryMmap<()>;

/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// A daemon's `main_with_args`, as the binary runs it.
pub type Main = fn(Vec<String>) -> i32;

/// The daemon's arguments: `args`, with landlock and seccomp off: they confine the process
/// and its threads, and this process is the test harness (tests/seccomp.rs and
/// tests/jailer.rs check them on real processes).
fn argv(program: &str, args: Vec<String>) -> Vec<String> {
    let mut argv = vec![
        program.to_string(),
        "--landlock".into(),
        "off".into(),
        "--seccomp".into(),
        "off".into(),
    ];
    argv.extend(args);
    argv
}

/// Starts the daemon in a thread, as the process would run; returns its exit status.
pub fn daemon(program: &'static str, main: Main, args: Vec<String>) -> JoinHandle<i32> {
    thread::spawn(move || main(argv(program, args)))
}

/// As `daemon`, the exit status also sent on the channel returned (to wait with a timeout).
pub fn daemon_reporting(
    program: &'static str,
    main: Main,
    args: Vec<String>,
) -> (JoinHandle<()>, mpsc::Receiver<i32>) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let status = main(argv(program, args));
        let _ = done_tx.send(status);
    });
    (handle, done_rx)
}

/// Guest memory of `size` bytes backed by a memfd, as the VMM shares it.
pub fn guest_memory(size: usize) -> (Mem, File) {
    // SAFETY: memfd_create with a NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    let mem = Mem::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (mem, file)
}

pub fn host_addr(mem: &Mem, gpa: u64) -> u64 {
    mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
}

/// SET_OWNER, features, protocol features, memory table: what every frontend does first.
/// The offered features must include `want`; `to_set` checks the offer further and says
/// which features to set. Returns the features offered.
pub fn negotiate(
    fe: &mut Frontend,
    mem: &Mem,
    memfd: &File,
    want: u64,
    needed: VhostUserProtocolFeatures,
    to_set: impl FnOnce(u64) -> u64,
) -> u64 {
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    assert_eq!(offered & want, want, "offered {offered:#x}");
    let features = to_set(offered);
    let protocol = fe.get_protocol_features().unwrap();
    assert!(protocol.contains(needed), "{protocol:?}");
    fe.set_protocol_features(needed).unwrap();
    fe.set_features(features).unwrap();
    set_mem_table(fe, mem, memfd);
    offered
}

/// Shares the memfd guest memory (one region at guest-physical 0) with the backend.
pub fn set_mem_table(fe: &mut Frontend, mem: &Mem, memfd: &File) {
    let region = mem.iter().next().unwrap();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: host_addr(mem, 0),
        mmap_offset: 0,
        mmap_handle: memfd.as_raw_fd(),
    }])
    .unwrap();
}

/// The device's whole config space, `size` bytes.
pub fn config(fe: &mut Frontend, size: usize) -> Vec<u8> {
    let (_, bytes) = fe
        .get_config(
            0,
            size as u32,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size],
        )
        .unwrap();
    bytes
}

/// One split virtqueue of `size` entries laid out in guest memory, driven by the test.
pub struct Ring {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
    pub kick: EventFd,
    pub call: EventFd,
}

impl Ring {
    pub fn new(index: usize, base: u64, size: u16) -> Ring {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Ring {
            index,
            size,
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

    pub fn set_up(&self, fe: &mut Frontend, mem: &Mem) {
        fe.set_vring_num(self.index, self.size).unwrap();
        fe.set_vring_addr(
            self.index,
            &VringConfigData {
                queue_max_size: self.size,
                queue_size: self.size,
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

    fn write_desc(&self, mem: &Mem, idx: u16, d: Descriptor) {
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(self.desc + 16 * u64::from(idx)),
        )
        .unwrap();
    }

    /// Adds a chain of (gpa, len, device-writable) and makes it available (no kick);
    /// returns the head. Descriptor indexes wrap at the ring's size.
    pub fn add(&mut self, mem: &Mem, parts: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc % self.size;
        for (i, &(addr, len, write)) in parts.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == parts.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (idx + 1) % self.size;
            self.write_desc(mem, idx, Descriptor::new(addr, len, flags, next));
        }
        self.next_desc = self.next_desc.wrapping_add(parts.len() as u16);
        self.make_available(mem, head);
        head
    }

    /// Makes one single-descriptor chain available (no kick), its `next` left 0; returns
    /// its head.
    pub fn add_one(&mut self, mem: &Mem, addr: u64, len: u32, write: bool) -> u16 {
        let head = self.next_desc;
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        self.write_desc(mem, head, Descriptor::new(addr, len, flags, 0));
        self.next_desc += 1;
        self.make_available(mem, head);
        head
    }

    /// Puts `head` in the avail ring, asks (used_event, read only with EVENT_IDX) for an
    /// interrupt past what we have seen, then publishes the new avail index.
    fn make_available(&mut self, mem: &Mem, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let used_event = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(self.used_seen, GuestAddress(used_event))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &Mem) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The used entry (id, len) after the ones seen so far, now seen.
    pub fn pop_used(&mut self, mem: &Mem) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        (id, len)
    }

    /// Waits for the call eventfd (5 s each time) until `expect` new used entries; returns
    /// them (id, len).
    pub fn wait_used(&mut self, mem: &Mem, expect: usize) -> Vec<(u32, u32)> {
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
            let used_idx = self.used_idx(mem);
            while self.used_seen != used_idx {
                out.push(self.pop_used(mem));
            }
        }
        out
    }

    /// Kicks, then `wait_used`.
    pub fn kick_and_wait(&mut self, mem: &Mem, expect: usize) -> Vec<(u32, u32)> {
        self.kick();
        self.wait_used(mem, expect)
    }

    /// Waits (5 s at most) for one new used entry, looking at the used ring before each
    /// wait for the call eventfd (so an interrupt the device suppressed does not matter).
    pub fn wait_one_used(&mut self, mem: &Mem) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.used_idx(mem) != self.used_seen {
                return self.pop_used(mem);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "queue {}: nothing used within 5 s",
                self.index
            );
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd valid for the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            let _ = self.call.read();
        }
    }
}
