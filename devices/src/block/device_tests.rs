//! Unit tests of `device.rs` (kept beside it so that file stays readable).

use super::*;
use crate::block::disk::{Disk, DiskOptions};
use crate::block::image::DiskImage;
use crate::block::virtio::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use std::os::unix::fs::MetadataExt;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: u64 = 0x40_0000;
const QUEUE_SIZE: u16 = 256;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_8000;
const DATA: u64 = 0x2_0000;
const DISK_SIZE: u64 = 1 << 20;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Byte `i` of the test image.
fn pattern(i: u64) -> u8 {
    ((i / 512) as u8).wrapping_mul(31) ^ (i as u8)
}

struct Image {
    file: TempFile,
    disk: Arc<DiskImage>,
}

fn image(read_only: bool) -> Image {
    let file = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(file.as_path(), &bytes).unwrap();
    let disk = Disk::open(
        file.as_path(),
        DiskOptions {
            read_only,
            direct: false,
            logical_block_size: 512,
        },
    )
    .unwrap();
    Image {
        file,
        disk: Arc::new(disk.into()),
    }
}

impl Image {
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.as_path()).unwrap()
    }
    fn untouched(&self) -> bool {
        self.bytes()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64))
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A driver's view: a mock split queue in guest memory, the device's `Queue`, and the
/// worker under test.
struct Harness<'a> {
    mem: &'a GuestRam,
    vq: MockSplitQueue<'a, GuestRam>,
    queue: Queue,
    worker: QueueWorker,
    next_desc: u16,
    seen_used: u16,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestRam, disk: &Arc<DiskImage>) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let queue = vq.create_queue().unwrap();
        let mut serial = [0u8; ID_BYTES];
        serial[..6].copy_from_slice(b"SN-123");
        Harness {
            mem,
            vq,
            queue,
            worker: QueueWorker::new(Arc::clone(disk), serial, Duration::ZERO),
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// Makes descriptor `head` available.
    fn push_avail(&self, head: u16) {
        let idx_addr = self.vq.avail_addr().unchecked_add(2);
        let idx: u16 = self.mem.read_obj(idx_addr).unwrap();
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QUEUE_SIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }

    /// Stores descriptors as given (their `next` fields are offsets from the first
    /// slot used) and makes the first one available.
    fn raw(&mut self, descs: &[RawDescriptor]) -> u16 {
        let base = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let mut d = SplitDescriptor::from(*d);
            d.set_next(d.next().wrapping_add(base));
            self.vq
                .desc_table()
                .store(base + i as u16, RawDescriptor::from(d))
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.push_avail(base);
        base
    }

    /// A chain of `(addr, len, flags)` linked in order.
    fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        let descs: Vec<RawDescriptor> = parts
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let last = i + 1 == parts.len();
                desc(
                    a,
                    l,
                    if last { f } else { f | N },
                    if last { 0 } else { i as u16 + 1 },
                )
            })
            .collect();
        self.raw(&descs)
    }

    fn header(&self, request_type: u32, sector: u64) {
        self.mem.write_obj(request_type, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Runs the worker; returns the new used entries (id, len) and whether the driver
    /// would be interrupted.
    fn run(&mut self) -> (Vec<(u32, u32)>, bool) {
        let mut interrupts = 0;
        self.worker
            .process_queue(&mut self.queue, self.mem, || interrupts += 1);
        assert!(interrupts <= 1, "one interrupt per batch");
        let notify = interrupts == 1;
        let used_idx = self.vq.used().idx().load();
        let mut out = Vec::new();
        while self.seen_used != used_idx {
            let e = self
                .vq
                .used()
                .ring()
                .ref_at(usize::from(self.seen_used % QUEUE_SIZE))
                .unwrap()
                .load();
            out.push((e.id(), e.len()));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        (out, notify)
    }

    /// Submits one chain, runs, and returns (used length, status byte at STATUS).
    fn one(&mut self, parts: &[(u64, u32, u16)]) -> (u32, u8) {
        let head = self.chain(parts);
        let (used, _) = self.run();
        assert_eq!(used.len(), 1, "one completion: {used:?}");
        assert_eq!(used[0].0, u32::from(head));
        (used[0].1, self.status())
    }

    /// Reads sectors 2..3 with a well-formed request and checks the data: the queue
    /// still serves after whatever came before.
    fn serves_next(&mut self) {
        self.mem
            .write_slice(&[0u8; 1024], GuestAddress(DATA))
            .unwrap();
        self.header(VIRTIO_BLK_T_IN, 2);
        let (len, status) = self.one(&[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
        assert_eq!((len, status), (1025, OK));
        let mut got = vec![0u8; 1024];
        self.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(1024 + i as u64)));
    }
}

fn memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn segment(mem: &GuestRam, at: u64, sector: u64, num: u32, flags: u32) {
    mem.write_obj(sector, GuestAddress(at)).unwrap();
    mem.write_obj(num, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
}

// --- well-formed requests ---

#[test]
fn in_reads_the_image_into_guest_memory() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_IN, 100);
    // Two data buffers, as a scatter-gather list.
    let (len, status) = h.one(&[
        (HDR, 16, R),
        (DATA, 512, W),
        (DATA + 0x1_0000, 1536, W),
        (STATUS, 1, W),
    ]);
    assert_eq!((len, status), (2049, OK));
    let mut a = vec![0u8; 512];
    let mut b = vec![0u8; 1536];
    mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut b, GuestAddress(DATA + 0x1_0000))
        .unwrap();
    let base = 100 * 512;
    assert!(a
        .iter()
        .enumerate()
        .all(|(i, &x)| x == pattern(base + i as u64)));
    assert!(b
        .iter()
        .enumerate()
        .all(|(i, &x)| x == pattern(base + 512 + i as u64)));
}

#[test]
fn out_writes_guest_memory_to_the_image() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    mem.write_slice(&[0x5au8; 4096], GuestAddress(DATA))
        .unwrap();
    h.header(VIRTIO_BLK_T_OUT, 8);
    let (len, status) = h.one(&[(HDR, 16, R), (DATA, 4096, R), (STATUS, 1, W)]);
    assert_eq!((len, status), (1, OK));
    let bytes = img.bytes();
    assert!(bytes[4096..8192].iter().all(|&b| b == 0x5a));
    assert!(bytes[..4096]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    assert!(bytes[8192..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(8192 + i as u64)));
    h.serves_next();
}

#[test]
fn flush_and_get_id() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.one(&[(HDR, 16, R), (STATUS, 1, W)]), (1, OK));
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]),
        (21, OK)
    );
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..7], b"SN-123\0");
}

#[test]
fn discard_punches_a_hole_and_write_zeroes_zeroes() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    let blocks = img.file.as_file().metadata().unwrap().blocks();
    segment(&mem, DATA, 256, 512, 0);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]),
        (1, OK)
    );
    assert!(img.file.as_file().metadata().unwrap().blocks() < blocks);
    segment(&mem, DATA, 8, 8, 0);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]),
        (1, OK)
    );
    segment(&mem, DATA, 32, 8, 1);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]),
        (1, OK)
    );
    let bytes = img.bytes();
    for (start, end) in [
        (256 * 512, 768 * 512),
        (8 * 512, 16 * 512),
        (32 * 512, 40 * 512),
    ] {
        assert!(bytes[start..end].iter().all(|&b| b == 0), "{start}..{end}");
    }
    assert!(bytes[..4096]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    h.serves_next();
}

#[test]
fn notifications_follow_event_idx() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.queue.set_event_idx(true);
    // used_event (after the available ring) = 5: the driver wants an interrupt only once
    // the used index passes 5.
    let used_event =
        h.vq.avail_addr()
            .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
    mem.write_obj(5u16, used_event).unwrap();
    for _ in 0..3 {
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        h.chain(&[(HDR, 16, R), (STATUS, 1, W)]);
    }
    let (used, notify) = h.run();
    assert_eq!(used.len(), 3, "one batch serves everything available");
    assert!(!notify, "used index 3 has not passed used_event 5");
    for _ in 0..3 {
        h.chain(&[(HDR, 16, R), (STATUS, 1, W)]);
    }
    let (used, notify) = h.run();
    assert_eq!(used.len(), 3);
    assert!(notify, "used index went 3 -> 6, past 5");
    // With notifications re-enabled, avail_event tells the driver to kick for the next.
    let avail_event =
        h.vq.used_addr()
            .unchecked_add(4 + 8 * u64::from(QUEUE_SIZE));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 6);
    // Nothing new: no interrupt.
    assert_eq!(h.run(), (vec![], false));
}

#[test]
fn a_round_serves_at_most_a_queue_worth() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    // More entries than the queue is long, made available one after another as a
    // driver that keeps submitting would: all the same two descriptors.
    h.chain(&[(HDR, 16, R), (STATUS, 1, W)]);
    for _ in 1..QUEUE_SIZE + 10 {
        h.push_avail(0);
        // Keep the available index within a queue of what was consumed so far.
        if h.vq.avail().idx().load().wrapping_sub(h.queue.next_avail()) >= QUEUE_SIZE {
            let round = h.worker.serve_round(&mut h.queue, &mem);
            assert!(
                round.again,
                "a full queue's worth leaves the round wanting more"
            );
        }
    }
    let round = h.worker.serve_round(&mut h.queue, &mem);
    assert!(!round.again);
    assert_eq!(h.queue.next_avail(), QUEUE_SIZE + 10);
}

#[test]
fn direct_io_with_aligned_and_unaligned_guest_buffers() {
    let img = image(false);
    let disk = match Disk::open(
        img.file.as_path(),
        DiskOptions {
            read_only: false,
            direct: true,
            logical_block_size: 4096,
        },
    ) {
        Ok(d) => Arc::new(DiskImage::from(d)),
        // A file system without O_DIRECT: nothing to test here (disk.rs checks the
        // error is a clear refusal).
        Err(_) => return,
    };
    let align = disk.direct_alignment().unwrap();
    let mem = memory();
    let mut h = Harness::new(&mem, &disk);
    // Page-aligned buffers go straight through; a buffer at an odd address, or split at
    // an odd length, goes through the bounce buffer. Both must move the same bytes.
    for (buf, split) in [(DATA, 4096u32), (DATA + 1, 4096), (DATA, 1000)] {
        assert!(align.memory <= 4096);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 ^ buf as u8).collect();
        mem.write_slice(&data, GuestAddress(buf)).unwrap();
        h.header(VIRTIO_BLK_T_OUT, 16);
        let parts = [
            (HDR, 16, R),
            (buf, split, R),
            (buf + u64::from(split), 8192 - split, R),
            (STATUS, 1, W),
        ];
        assert_eq!(h.one(&parts), (1, OK), "write buf {buf:#x} split {split}");
        assert_eq!(&img.bytes()[16 * 512..16 * 512 + 8192], &data[..]);
        mem.write_slice(&[0u8; 8192], GuestAddress(buf)).unwrap();
        h.header(VIRTIO_BLK_T_IN, 16);
        let parts = [
            (HDR, 16, R),
            (buf, split, W),
            (buf + u64::from(split), 8192 - split, W),
            (STATUS, 1, W),
        ];
        assert_eq!(h.one(&parts), (8193, OK), "read buf {buf:#x} split {split}");
        let mut back = vec![0u8; 8192];
        mem.read_slice(&mut back, GuestAddress(buf)).unwrap();
        assert_eq!(back, data);
    }
    // A request not aligned to what O_DIRECT needs on the disk fails cleanly.
    if align.offset > 512 {
        h.header(VIRTIO_BLK_T_IN, 1);
        assert_eq!(
            h.one(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
            (1, IOERR)
        );
    }
    h.serves_next();
}

// --- hostile requests: each gets an error status (when it has a status byte) and the
// queue keeps serving ---

#[test]
fn unknown_request_type_is_unsupported() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    for t in [2, 3, 14, 15, 16, 0xffff_ffff] {
        h.header(t, 0);
        assert_eq!(
            h.one(&[(HDR, 16, R), (STATUS, 1, W)]),
            (1, UNSUPP),
            "type {t}"
        );
    }
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn sector_past_the_end_or_overflowing() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    let sectors = DISK_SIZE / 512;
    for (t, sector, dir) in [
        (VIRTIO_BLK_T_IN, sectors, W),
        (VIRTIO_BLK_T_IN, sectors - 1, W), // 2 sectors from the last one
        (VIRTIO_BLK_T_OUT, sectors - 1, R),
        (VIRTIO_BLK_T_IN, u64::MAX, W), // sector + count overflows
        (VIRTIO_BLK_T_OUT, u64::MAX / 512 + 1, R), // sector * 512 overflows
    ] {
        h.header(t, sector);
        assert_eq!(
            h.one(&[(HDR, 16, R), (DATA, 1024, dir), (STATUS, 1, W)]),
            (1, IOERR),
            "type {t} sector {sector}"
        );
    }
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn length_not_a_multiple_of_512() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 1000, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 513, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn buffers_outside_guest_memory() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_OUT, 0);
    // Entirely outside, straddling the end, and wrapping the address space.
    for (addr, len) in [
        (MEM_SIZE + 0x1000, 512),
        (MEM_SIZE - 512, 1024),
        (u64::MAX - 255, 512),
    ] {
        assert_eq!(
            h.one(&[(HDR, 16, R), (addr, len, R), (STATUS, 1, W)]),
            (1, IOERR),
            "{addr:#x}+{len}"
        );
    }
    // The header outside memory.
    assert_eq!(
        h.one(&[(MEM_SIZE, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn huge_guest_claimed_lengths() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    // Lengths the guest claims, not backed by memory: refused before any allocation
    // or I/O is sized by them.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 0xffff_fe00, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[
            (HDR, 16, R),
            (DATA, 0x8000_0000, R),
            (DATA, 0x7fff_f000, R),
            (STATUS, 1, W)
        ]),
        (1, IOERR)
    );
    // A chain over 4 GiB in total: virtio-queue stops the walk; it doesn't end.
    assert_eq!(
        h.one(&[
            (HDR, 16, R),
            (DATA, u32::MAX, R),
            (DATA, u32::MAX, R),
            (STATUS, 1, W)
        ])
        .0,
        0
    );
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn descriptor_loop() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_IN, 0);
    // header -> data -> status -> header -> ...
    h.raw(&[
        desc(HDR, 16, N, 1),
        desc(DATA, 512, W | N, 2),
        desc(STATUS, 1, W | N, 0),
    ]);
    let (used, _) = h.run();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].1, h.status()), (1, IOERR));
    // A descriptor pointing at itself.
    h.header(VIRTIO_BLK_T_IN, 0);
    h.raw(&[desc(HDR, 16, N, 1), desc(STATUS, 1, W | N, 1)]);
    let (used, _) = h.run();
    assert_eq!((used[0].1, h.status()), (1, IOERR));
    h.serves_next();
}

#[test]
fn chain_too_long() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_IN, 0);
    let mut parts = vec![(HDR, 16, R)];
    parts.extend((0..SEG_MAX_PLUS_ONE).map(|i| (DATA + 512 * i as u64, 512, W)));
    parts.push((STATUS, 1, W));
    assert_eq!(h.one(&parts), (1, IOERR));
    // Through an indirect table too.
    let table = DATA + 0x8_0000;
    for (i, &(a, l, f)) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let d = desc(a, l, if last { f } else { f | N }, i as u16 + 1);
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    h.header(VIRTIO_BLK_T_IN, 0);
    let len = 16 * parts.len() as u32;
    assert_eq!(
        h.one(&[(table, len, VRING_DESC_F_INDIRECT as u16)]),
        (1, IOERR)
    );
    h.serves_next();
}
const SEG_MAX_PLUS_ONE: usize = crate::block::virtio::SEG_MAX as usize + 1;

#[test]
fn header_in_a_write_only_descriptor() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    // A header too short.
    assert_eq!(h.one(&[(HDR, 8, R), (STATUS, 1, W)]), (1, IOERR));
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn status_not_writable_or_empty() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    // No device-writable byte at all: nothing to report in; completed with length 0.
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, R)]),
        (0, 0xaa)
    );
    // A readable "status" after writable data: out of order; the last writable byte
    // (the end of the data buffer) gets the error.
    h.header(VIRTIO_BLK_T_IN, 0);
    mem.write_obj(0xaau8, GuestAddress(DATA + 511)).unwrap();
    assert_eq!(h.one(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)]).0, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), IOERR);
    // A zero-length status descriptor: the status byte is the data's last byte, which
    // leaves 511 data bytes, not whole sectors.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.one(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)]).0, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), IOERR);
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn data_in_the_wrong_direction() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn get_id_buffer_too_small() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 19, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    h.serves_next();
}

/// A DISCARD/WRITE_ZEROES segment: sector, sectors, flags.
type Seg = (u64, u32, u32);

#[test]
fn bad_discard_and_write_zeroes_segments() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    let sectors = DISK_SIZE / 512;
    let cases: &[(u32, &[Seg], u32, u8)] = &[
        // (type, segments, payload length, expected status)
        (VIRTIO_BLK_T_DISCARD, &[(0, 8, 1)], 16, UNSUPP), // unmap flag on discard
        (VIRTIO_BLK_T_DISCARD, &[(0, 8, 4)], 16, UNSUPP), // unknown flag
        (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 2)], 16, UNSUPP),
        (VIRTIO_BLK_T_DISCARD, &[(0, 8, 0), (16, 8, 0)], 32, UNSUPP), // 2 > max_discard_seg
        (VIRTIO_BLK_T_DISCARD, &[(sectors - 4, 8, 0)], 16, IOERR),    // past the end
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(u64::MAX - 2, 8, 0)],
            16,
            IOERR,
        ), // overflow
        (VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)], 8, IOERR),               // half a segment
        (VIRTIO_BLK_T_DISCARD, &[], 0, IOERR),                        // no segment
        (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, u32::MAX, 0)], 16, IOERR),  // over max sectors
    ];
    for &(t, segs, len, want) in cases {
        for (i, &(s, n, f)) in segs.iter().enumerate() {
            segment(&mem, DATA + 16 * i as u64, s, n, f);
        }
        h.header(t, 0);
        let got = if len == 0 {
            h.one(&[(HDR, 16, R), (STATUS, 1, W)])
        } else {
            h.one(&[(HDR, 16, R), (DATA, len, R), (STATUS, 1, W)])
        };
        assert_eq!(got, (1, want), "type {t} {segs:?} len {len}");
    }
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn read_only_refuses_writes_and_keeps_the_file() {
    let img = image(true);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.one(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    // Not offered on a read-only disk; sent anyway, they are unsupported and change
    // nothing (with the unmap flag too).
    let offered = crate::block::backend::features(true, 1);
    assert_eq!(offered & (1 << VIRTIO_BLK_F_RO), 1 << VIRTIO_BLK_F_RO);
    assert_eq!(offered & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(offered & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let writable = crate::block::backend::features(false, 1);
    assert_ne!(writable & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_ne!(writable & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
        segment(&mem, DATA, 0, 8, flags);
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            h.header(t, 0);
            assert_eq!(
                h.one(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]),
                (1, UNSUPP),
                "type {t} flags {flags}"
            );
        }
    }
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.one(&[(HDR, 16, R), (STATUS, 1, W)]), (1, OK));
    h.serves_next();
    assert!(img.untouched());
}

#[test]
fn unusable_chains_complete_with_nothing_written() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    // An indirect table outside guest memory: no descriptor can be read.
    assert_eq!(
        h.one(&[(MEM_SIZE + 0x1000, 64, VRING_DESC_F_INDIRECT as u16)])
            .0,
        0
    );
    // A `next` index beyond the table.
    h.raw(&[desc(HDR, 16, N, 1), desc(STATUS, 1, W | N, QUEUE_SIZE + 7)]);
    assert_eq!(h.run().0.len(), 1);
    // An indirect descriptor inside an indirect table.
    let table = DATA + 0x8_0000;
    mem.write_obj(
        desc(table, 16, VRING_DESC_F_INDIRECT as u16, 0),
        GuestAddress(table),
    )
    .unwrap();
    assert_eq!(h.one(&[(table, 16, VRING_DESC_F_INDIRECT as u16)]).0, 0);
    // A status byte outside memory.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.one(&[(HDR, 16, R), (MEM_SIZE, 1, W)]).0, 0);
    h.serves_next();
}

#[test]
fn head_index_out_of_range_is_skipped() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.push_avail(QUEUE_SIZE + 3);
    // It can't be put in the used ring (the index is invalid); the next one is served.
    let (used, _) = h.run();
    assert!(used.is_empty());
    h.serves_next();
}

#[test]
fn available_index_far_ahead_stops_the_queue_without_spinning() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    let idx_addr = h.vq.avail_addr().unchecked_add(2);
    mem.write_obj(QUEUE_SIZE + 10, idx_addr).unwrap();
    assert_eq!(h.run(), (vec![], false));
}

#[test]
fn rings_outside_memory_are_not_served() {
    let img = image(false);
    let mem = memory();
    let mut h = Harness::new(&mem, &img.disk);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.chain(&[(HDR, 16, R), (STATUS, 1, W)]);
    h.queue
        .try_set_used_ring_address(GuestAddress(MEM_SIZE - 8))
        .unwrap();
    let mut interrupted = false;
    h.worker
        .process_queue(&mut h.queue, &mem, || interrupted = true);
    assert!(!interrupted);
    assert_eq!(h.status(), 0xaa, "nothing served");
}
