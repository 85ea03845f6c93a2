//! How fast one `bulkhead-blk` queue serves 4 KiB random reads and writes at queue depth
//! 32, against `pread`/`pwrite` of the same sizes on the same file from one host thread.
//! The driver side polls the used ring and kicks only when EVENT_IDX's `avail_event` asks,
//! like the test guest's benchmark mode. Ignored by default (it takes a few seconds and
//! wants a release build):
//!
//! `cargo test --release -p bulkhead-devices --test throughput -- --ignored --nocapture`

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use bulkhead_devices::block::main_with_args;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 8 << 20;
const QUEUE_SIZE: u16 = 256;
const DEPTH: u16 = 32;
const BLOCK: u32 = 4096;
const DISK_SIZE: u64 = 256 << 20;
const RUN: Duration = Duration::from_secs(2);
// Guest-physical layout: rings at 0, headers, statuses, then data buffers.
const HDRS: u64 = 0x1_0000;
const STATUSES: u64 = 0x1_8000;
const DATA: u64 = 0x10_0000;

/// xorshift: cheap, deterministic random sectors.
struct Rng(u64);
impl Rng {
    fn next_block(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % (DISK_SIZE / u64::from(BLOCK))
    }
}

fn host_addr(mem: &Mem, gpa: u64) -> u64 {
    mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
}

/// Requests per second through the backend.
fn through_backend(path: &str, request_type: u32, poll_us: u32) -> f64 {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd().to_string();
    let path = path.to_string();
    let poll = poll_us.to_string();
    let daemon = thread::spawn(move || {
        main_with_args([
            "bulkhead-blk",
            "--landlock",
            "off",
            "--seccomp",
            "off",
            "--fd",
            &fd,
            "--blk-file",
            &path,
            "--poll-us",
            &poll,
        ])
    });
    let mut fe = Frontend::from_stream(ours, 1);
    // SAFETY: memfd_create with a NUL-terminated name.
    let memfd = unsafe { libc::memfd_create(c"ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(memfd >= 0);
    // SAFETY: fresh descriptor we own.
    let memfd = unsafe { File::from_raw_fd(memfd) };
    memfd.set_len(MEM_SIZE as u64).unwrap();
    let mem = Mem::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(memfd.try_clone().unwrap(), 0)),
    )])
    .unwrap();

    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK,
    )
    .unwrap();
    fe.set_features(
        features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << 30)),
    )
    .unwrap();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host_addr(&mem, 0),
        mmap_offset: 0,
        mmap_handle: memfd.as_raw_fd(),
    }])
    .unwrap();
    let desc = 0u64;
    let avail = desc + 16 * u64::from(QUEUE_SIZE);
    let used = (avail + 6 + 2 * u64::from(QUEUE_SIZE) + 3) & !3;
    let used_event = GuestAddress(avail + 4 + 2 * u64::from(QUEUE_SIZE));
    let avail_event = GuestAddress(used + 4 + 8 * u64::from(QUEUE_SIZE));
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    fe.set_vring_num(0, QUEUE_SIZE).unwrap();
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: host_addr(&mem, desc),
            used_ring_addr: host_addr(&mem, used),
            avail_ring_addr: host_addr(&mem, avail),
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(0, 0).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();

    // One fixed three-descriptor chain per slot.
    let data_flag = if request_type == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    for slot in 0..DEPTH {
        let d = slot * 3;
        let parts = [
            (HDRS + 16 * u64::from(slot), 16, VRING_DESC_F_NEXT as u16),
            (
                DATA + u64::from(BLOCK) * u64::from(slot),
                BLOCK,
                data_flag | VRING_DESC_F_NEXT as u16,
            ),
            (STATUSES + u64::from(slot), 1, VRING_DESC_F_WRITE as u16),
        ];
        for (i, &(a, l, f)) in parts.iter().enumerate() {
            let raw = RawDescriptor::from(Descriptor::new(a, l, f, d + i as u16 + 1));
            mem.write_obj(raw, GuestAddress(desc + 16 * u64::from(d + i as u16)))
                .unwrap();
        }
        mem.write_obj(request_type, GuestAddress(HDRS + 16 * u64::from(slot)))
            .unwrap();
    }
    // No interrupts: the driver polls the used ring.
    mem.write_obj(0x8000u16, used_event).unwrap();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut avail_idx = 0u16;
    let mut used_seen = 0u16;
    let submit = |slot: u16, avail_idx: &mut u16, rng: &mut Rng| {
        let sector = rng.next_block() * u64::from(BLOCK / 512);
        mem.write_obj(sector, GuestAddress(HDRS + 16 * u64::from(slot) + 8))
            .unwrap();
        let at = avail + 4 + 2 * u64::from(*avail_idx % QUEUE_SIZE);
        mem.write_obj(slot * 3, GuestAddress(at)).unwrap();
        *avail_idx = avail_idx.wrapping_add(1);
    };
    let publish_and_kick = |old: u16, new: u16| {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(new, GuestAddress(avail + 2)).unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let event: u16 = mem.read_obj(avail_event).unwrap();
        // vring_need_event
        if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
            kick.write(1).unwrap();
        }
    };
    for slot in 0..DEPTH {
        submit(slot, &mut avail_idx, &mut rng);
    }
    publish_and_kick(0, avail_idx);
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < RUN {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        if used_idx == used_seen {
            std::hint::spin_loop();
            continue;
        }
        let old = avail_idx;
        while used_seen != used_idx {
            let at = used + 4 + 8 * u64::from(used_seen % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let slot = (id / 3) as u16;
            assert_eq!(
                mem.read_obj::<u8>(GuestAddress(STATUSES + u64::from(slot)))
                    .unwrap(),
                0
            );
            submit(slot, &mut avail_idx, &mut rng);
            used_seen = used_seen.wrapping_add(1);
            done += 1;
        }
        publish_and_kick(old, avail_idx);
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    drop(fe);
    assert_eq!(daemon.join().unwrap(), 0);
    rate
}

/// Requests per second of plain positional I/O on one thread.
fn host_baseline(file: &File, write: bool) -> f64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; BLOCK as usize];
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            let off = rng.next_block() * u64::from(BLOCK);
            if write {
                file.write_all_at(&buf, off).unwrap();
            } else {
                file.read_exact_at(&mut buf, off).unwrap();
            }
        }
        done += 256;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn random_4k_at_depth_32() {
    let img = TempFile::new().unwrap();
    img.as_file().set_len(DISK_SIZE).unwrap();
    // Fill it, so reads hit the page cache rather than holes.
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..DISK_SIZE / (1 << 20) {
        img.as_file().write_all_at(&chunk, i << 20).unwrap();
    }
    let path = img.as_path().to_str().unwrap();
    let polls: Vec<u32> = std::env::var("POLL_US")
        .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_else(|_| vec![32]);
    for (name, t, write) in [
        ("read", VIRTIO_BLK_T_IN, false),
        ("write", VIRTIO_BLK_T_OUT, true),
    ] {
        for &poll in &polls {
            // Dirty pages from the previous run would throttle this one's writes.
            img.as_file().sync_all().unwrap();
            let ours = through_backend(path, t, poll);
            img.as_file().sync_all().unwrap();
            let host = host_baseline(img.as_file(), write);
            println!(
                "4 KiB random {name}, depth {DEPTH}, --poll-us {poll}: bulkhead-blk {:.0} IOPS \
                 ({:.0} MB/s), host p{name} on one thread {:.0} IOPS; ratio {:.2}",
                ours,
                ours * f64::from(BLOCK) / 1e6,
                host,
                ours / host
            );
        }
    }
}
