//! The inflight I/O tracking region (vhost-user `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`),
//! which `vhost-user-backend` 0.24 does not support: its handler refuses
//! GET/SET_INFLIGHT_FD with an error that ends the connection, and its backend trait has no
//! hook. So the relay ([`super::relay`]) answers both messages itself, offers the feature
//! bit, and hides it from the library; this module holds the region and its layout.
//!
//! Layout (split rings, as QEMU, libvhost-user and DPDK lay it out): the queues back to
//! back, each [`queue_region_size`] bytes (rounded up to 64): a 16-byte header
//! `u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx`, then
//! `desc_num` 16-byte entries `u8 inflight, u8 pad[5], u16 next, u64 counter`.
//!
//! The memfd handed out by GET_INFLIGHT_FD is made before the process is confined (no
//! seccomp role may create one), sized for every queue at the largest queue size and
//! sealed against shrinking and growing. A region given by SET_INFLIGHT_FD comes from the
//! frontend and was written by a predecessor process that may have been compromised: its
//! sizes are bounded and checked against the file (which must be sealed against
//! shrinking, so it can't be cut under our mapping), and its contents are checked by the
//! queue that uses it (`block::inflight`) before anything in them is believed.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use vhost::vhost_user::message::VhostUserInflight;

/// The protocol feature bit (`VhostUserProtocolFeatures::INFLIGHT_SHMFD`).
pub const INFLIGHT_SHMFD: u64 = 1 << 12;
/// The split-ring region's version.
pub const VERSION: u16 = 1;
/// Each queue's region starts on this boundary.
const ALIGN: u64 = 64;
/// A queue's header: features, version, desc_num, last_batch_head, used_idx.
const QUEUE_HEADER: u64 = 16;
/// One `DescStateSplit`.
const DESC_STATE: u64 = 16;

/// Bytes one queue of `queue_size` entries takes in the region.
pub fn queue_region_size(queue_size: u16) -> u64 {
    (QUEUE_HEADER + DESC_STATE * u64::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// Why a GET or SET_INFLIGHT_FD is refused.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The frontend asked for more queues than the device has, or none.
    #[error("{0} queues asked for; the device has {1}")]
    Queues(u16, u16),
    /// A queue size of 0 or above the largest the device takes.
    #[error("queue size {0} (1 to {1} allowed)")]
    QueueSize(u16, u16),
    /// The region is smaller than its queues need.
    #[error("a {size}-byte region for {queues} queues of {queue_size} needs {needed} bytes")]
    TooSmall {
        /// mmap_size given.
        size: u64,
        /// Queues.
        queues: u16,
        /// Queue size.
        queue_size: u16,
        /// What they need.
        needed: u64,
    },
    /// The offset is not page-aligned.
    #[error("mmap offset {0:#x} is not page-aligned")]
    Offset(u64),
    /// The file is not a regular file (a memfd), or is smaller than offset + size.
    #[error("the region's file is {0}")]
    File(String),
    /// The file can still be shrunk under our mapping (a SIGBUS waiting to happen).
    #[error("the region's file is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    /// No descriptor came with SET_INFLIGHT_FD.
    #[error("no descriptor came with the message")]
    NoFd,
    /// A system call failed.
    #[error("{0}: {1}")]
    Os(&'static str, #[source] io::Error),
}

/// What a backend offering the feature shares between its relay and its queue threads: the
/// memfd for GET_INFLIGHT_FD, the region in use, and which queues were (re)started.
#[derive(Debug)]
pub struct InflightSlot {
    num_queues: u16,
    max_queue_size: u16,
    memfd: File,
    region: Mutex<Option<Arc<Region>>>,
    started: Vec<AtomicBool>,
}

impl InflightSlot {
    /// Makes the memfd (call before the process is confined): big enough for `num_queues`
    /// queues of `max_queue_size`, zero-filled, sealed against shrinking, growing and
    /// further sealing.
    /// Refused (rather than killed by SIGXFSZ) when RLIMIT_FSIZE, which a jailer sets to
    /// the image's size, is below that size.
    pub fn new(num_queues: u16, max_queue_size: u16) -> io::Result<Arc<InflightSlot>> {
        let num_queues = num_queues.max(1);
        let size = u64::from(num_queues) * queue_region_size(max_queue_size);
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_FSIZE) {
            if soft != RLIM_INFINITY && soft < size {
                return Err(io::Error::other(format!(
                    "the region needs {size} bytes, RLIMIT_FSIZE is {soft}"
                )));
            }
        }
        let memfd = File::from(memfd_create(
            c"bulkhead-inflight",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?);
        memfd.set_len(size)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals))?;
        Ok(Arc::new(InflightSlot {
            num_queues,
            max_queue_size,
            memfd,
            region: Mutex::new(None),
            started: (0..num_queues).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// The region in use, if the frontend set one up.
    pub fn region(&self) -> Option<Arc<Region>> {
        self.region
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether queue `queue` was given a base (SET_VRING_BASE) since the last call: the
    /// queue (re)starts, and its part of the region must be checked before it is served.
    pub fn take_started(&self, queue: usize) -> bool {
        self.started
            .get(queue)
            .is_some_and(|s| s.swap(false, Ordering::AcqRel))
    }

    /// The relay saw SET_VRING_BASE for `queue`.
    pub(crate) fn vring_base(&self, queue: u32) {
        if let Some(s) = self.started.get(queue as usize) {
            s.store(true, Ordering::Release);
        }
    }

    fn check_shape(&self, queues: u16, queue_size: u16) -> Result<u64, InflightError> {
        if queues == 0 || queues > self.num_queues {
            return Err(InflightError::Queues(queues, self.num_queues));
        }
        if queue_size == 0 || queue_size > self.max_queue_size {
            return Err(InflightError::QueueSize(queue_size, self.max_queue_size));
        }
        Ok(u64::from(queues) * queue_region_size(queue_size))
    }

    /// GET_INFLIGHT_FD: lays a fresh region out in our memfd for the queues asked for
    /// (zeroed, each header with the version and queue size), uses it from now on, and
    /// returns the answer and the memfd to send with it.
    pub fn get(
        &self,
        asked: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, &File), InflightError> {
        let needed = self.check_shape(asked.num_queues, asked.queue_size)?;
        let region = Region::map(&self.memfd, 0, needed, asked.num_queues, asked.queue_size)?;
        for q in 0..usize::from(asked.num_queues) {
            if let Some(queue) = region.queue(q) {
                queue.reset();
            }
        }
        *self.region.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(region));
        Ok((
            VhostUserInflight {
                mmap_size: needed,
                mmap_offset: 0,
                num_queues: asked.num_queues,
                queue_size: asked.queue_size,
            },
            &self.memfd,
        ))
    }

    /// SET_INFLIGHT_FD: checks the sizes against the file, maps it, and uses it from now on
    /// (its contents are checked per queue when the queue starts).
    pub fn set(&self, given: &VhostUserInflight, fd: Option<OwnedFd>) -> Result<(), InflightError> {
        let fd = fd.ok_or(InflightError::NoFd)?;
        let needed = self.check_shape(given.num_queues, given.queue_size)?;
        if given.mmap_size < needed {
            return Err(InflightError::TooSmall {
                size: given.mmap_size,
                queues: given.num_queues,
                queue_size: given.queue_size,
                needed,
            });
        }
        if given.mmap_offset % page_size() != 0 {
            return Err(InflightError::Offset(given.mmap_offset));
        }
        let file = File::from(fd);
        check_file(&file, given.mmap_offset, needed)?;
        let region = Region::map(
            &file,
            given.mmap_offset,
            needed,
            given.num_queues,
            given.queue_size,
        )?;
        *self.region.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(region));
        Ok(())
    }
}

fn page_size() -> u64 {
    let n = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
    n.ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
}

/// A regular file (a memfd), holding `offset + len` bytes, that can't shrink.
fn check_file(file: &File, offset: u64, len: u64) -> Result<(), InflightError> {
    // The plain fstat system call (std and glibc would use statx or newfstatat, which the
    // vhost-user role does not allow).
    let st = crate::sys::fstat(file).map_err(|e| InflightError::Os("fstat", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(InflightError::File(format!(
            "not a regular file (mode {:#o})",
            st.st_mode
        )));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(InflightError::File(format!(
            "{size} bytes long, short of offset {offset} + {len}"
        )));
    }
    let seals = fcntl(file, FcntlArg::F_GET_SEALS).map(SealFlag::from_bits_retain);
    if !seals.is_ok_and(|s| s.contains(SealFlag::F_SEAL_SHRINK)) {
        return Err(InflightError::NotSealed);
    }
    Ok(())
}

/// A mapped region (MAP_SHARED), unmapped on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is only ever accessed through atomics (see `QueueRegion`), so sharing
// the pointer between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly `len` bytes at `ptr` and nothing refers to them any more
        // (a `QueueRegion` borrows the `Region`).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

impl Region {
    fn map(
        file: &File,
        offset: u64,
        len: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Region, InflightError> {
        let too_big = || {
            InflightError::File(format!(
                "a region of {len} bytes at {offset} can't be mapped"
            ))
        };
        let size = usize::try_from(len).map_err(|_| too_big())?;
        let off = libc::off_t::try_from(offset).map_err(|_| too_big())?;
        // A length of 0 is what the kernel refuses with EINVAL.
        let length = NonZeroUsize::new(size).ok_or(InflightError::Os(
            "mmap",
            io::Error::from_raw_os_error(libc::EINVAL),
        ))?;
        // SAFETY: a new shared mapping of `size` bytes of `file` at a page-aligned offset,
        // placed by the kernel (no address given), so it overlaps nothing of ours. The
        // file was checked to hold those bytes and can't shrink (or it is our own memfd).
        let mapped = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                off,
            )
        };
        let ptr = mapped
            .map_err(|e| InflightError::Os("mmap", e.into()))?
            .cast();
        Ok(Region {
            ptr,
            len: size,
            num_queues,
            queue_size,
        })
    }

    /// Queues laid out in the region.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The queue size the region was laid out for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Queue `q`'s part, if the region has one.
    pub fn queue(&self, q: usize) -> Option<QueueRegion<'_>> {
        if q >= usize::from(self.num_queues) {
            return None;
        }
        let stride = queue_region_size(self.queue_size) as usize;
        // In bounds: the mapping is num_queues × stride bytes (`check_shape`).
        let offset = q * stride;
        debug_assert!(offset + stride <= self.len);
        Some(QueueRegion {
            // SAFETY: offset + stride <= len, so the pointer stays inside the mapping.
            base: unsafe { self.ptr.as_ptr().add(offset) },
            entries: self.queue_size,
            _region: std::marker::PhantomData,
        })
    }
}

/// One queue's part of a region. Every field is read and written with atomics: another
/// process (the frontend, a successor) shares the memory, so plain references to it would
/// be unsound, and whatever a field holds is only a number to check.
#[derive(Debug)]
pub struct QueueRegion<'a> {
    base: *mut u8,
    /// Entries laid out (the region's queue size): indexes below it are in bounds.
    entries: u16,
    _region: std::marker::PhantomData<&'a Region>,
}

impl QueueRegion<'_> {
    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: callers pass an offset inside this queue's part (header fields, or an
        // entry below `entries`), 2-aligned; the queue's part starts 64-aligned in a
        // page-aligned mapping that outlives `self`; only atomics access it.
        unsafe { &*self.base.add(offset).cast::<AtomicU16>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as `u16_at`, 8-aligned.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: as `u16_at`.
        unsafe { &*self.base.add(offset).cast::<AtomicU8>() }
    }

    fn entry(&self, head: u16) -> Option<usize> {
        (head < self.entries)
            .then(|| QUEUE_HEADER as usize + DESC_STATE as usize * usize::from(head))
    }

    /// Entries laid out for this queue.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The header's version (0: never used; 1: split ring).
    pub fn version(&self) -> u16 {
        self.u16_at(8).load(Ordering::Acquire)
    }

    /// The header's descriptor count.
    pub fn desc_num(&self) -> u16 {
        self.u16_at(10).load(Ordering::Acquire)
    }

    /// The head completed last.
    pub fn last_batch_head(&self) -> u16 {
        self.u16_at(12).load(Ordering::Acquire)
    }

    /// The used index as of the last completion.
    pub fn used_idx(&self) -> u16 {
        self.u16_at(14).load(Ordering::Acquire)
    }

    /// Sets the used index.
    pub fn set_used_idx(&self, idx: u16) {
        self.u16_at(14).store(idx, Ordering::Release);
    }

    /// Sets the head completed last.
    pub fn set_last_batch_head(&self, head: u16) {
        self.u16_at(12).store(head, Ordering::Release);
    }

    /// Entry `head`'s inflight byte (None: out of range).
    pub fn inflight(&self, head: u16) -> Option<u8> {
        self.entry(head)
            .map(|e| self.u8_at(e).load(Ordering::Acquire))
    }

    /// Entry `head`'s counter.
    pub fn counter(&self, head: u16) -> Option<u64> {
        self.entry(head)
            .map(|e| self.u64_at(e + 8).load(Ordering::Acquire))
    }

    /// Marks `head` in flight as request number `counter` (the counter first, so a reader
    /// that sees it in flight sees its counter).
    pub fn mark(&self, head: u16, counter: u64) {
        if let Some(e) = self.entry(head) {
            self.u64_at(e + 8).store(counter, Ordering::Relaxed);
            self.u8_at(e).store(1, Ordering::Release);
        }
    }

    /// Marks `head` done.
    pub fn clear(&self, head: u16) {
        if let Some(e) = self.entry(head) {
            self.u8_at(e).store(0, Ordering::Release);
        }
    }

    /// Lays the queue's part out afresh: every entry zero, version 1, desc_num = entries.
    pub fn reset(&self) {
        for head in 0..self.entries {
            if let Some(e) = self.entry(head) {
                self.u8_at(e).store(0, Ordering::Relaxed);
                self.u16_at(e + 6).store(0, Ordering::Relaxed);
                self.u64_at(e + 8).store(0, Ordering::Relaxed);
            }
        }
        self.u64_at(0).store(0, Ordering::Relaxed);
        self.u16_at(10).store(self.entries, Ordering::Relaxed);
        self.u16_at(12).store(0, Ordering::Relaxed);
        self.u16_at(14).store(0, Ordering::Relaxed);
        self.u16_at(8).store(VERSION, Ordering::Release);
    }

    /// Test and fuzzing access: writes a header as a predecessor would have left it.
    pub fn write_header(&self, version: u16, desc_num: u16, last_batch_head: u16, used_idx: u16) {
        self.u16_at(10).store(desc_num, Ordering::Relaxed);
        self.u16_at(12).store(last_batch_head, Ordering::Relaxed);
        self.u16_at(14).store(used_idx, Ordering::Relaxed);
        self.u16_at(8).store(version, Ordering::Release);
    }

    /// Test and fuzzing access: writes entry `head`'s inflight byte and counter as they are.
    pub fn write_entry(&self, head: u16, inflight: u8, counter: u64) {
        if let Some(e) = self.entry(head) {
            self.u64_at(e + 8).store(counter, Ordering::Relaxed);
            self.u8_at(e).store(inflight, Ordering::Release);
        }
    }
}

/// Test and fuzzing access: a region over a private anonymous-backed memfd of our own.
pub fn scratch_region(num_queues: u16, queue_size: u16) -> io::Result<Region> {
    let slot = InflightSlot::new(num_queues, queue_size)?;
    let needed = u64::from(num_queues.max(1)) * queue_region_size(queue_size);
    Region::map(&slot.memfd, 0, needed, num_queues.max(1), queue_size)
        .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(num_queues: u16, queue_size: u16) -> VhostUserInflight {
        VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
        }
    }

    #[test]
    fn queue_sizes_match_libvhost_user_and_dpdk() {
        // libvhost-user: ALIGN_UP(16 * n + 2, 64); DPDK: ALIGN(16 + 16 * n, 64).
        for n in [1u16, 2, 3, 4, 128, 255, 256, 1024] {
            let lvu = (16 * u64::from(n) + 2).div_ceil(64) * 64;
            assert_eq!(queue_region_size(n), lvu, "{n}");
        }
        assert_eq!(queue_region_size(256), 4160);
    }

    #[test]
    fn get_lays_out_every_queue_and_set_checks_the_file() {
        let slot = InflightSlot::new(2, 1024).unwrap();
        let (answer, file) = slot.get(&ask(2, 256)).unwrap();
        assert_eq!(answer.mmap_size, 2 * 4160);
        assert_eq!(answer.mmap_offset, 0);
        assert!(file.metadata().unwrap().len() >= answer.mmap_size);
        let region = slot.region().unwrap();
        for q in 0..2 {
            let queue = region.queue(q).unwrap();
            assert_eq!((queue.version(), queue.desc_num()), (1, 256));
        }
        assert!(region.queue(2).is_none());

        assert!(matches!(
            slot.get(&ask(3, 256)),
            Err(InflightError::Queues(3, 2))
        ));
        assert!(matches!(
            slot.get(&ask(1, 2048)),
            Err(InflightError::QueueSize(2048, 1024))
        ));
        assert!(matches!(
            slot.get(&ask(1, 0)),
            Err(InflightError::QueueSize(0, 1024))
        ));

        // SET of our own memfd works; a short or unsealed file is refused.
        let dup = OwnedFd::from(file.try_clone().unwrap());
        let mut given = answer;
        slot.set(&given, Some(dup)).unwrap();
        given.mmap_offset = 4096 * 1024;
        let dup = OwnedFd::from(slot.memfd.try_clone().unwrap());
        let err = slot.set(&given, Some(dup)).unwrap_err();
        assert!(err.to_string().contains("short of offset"), "{err}");
        given.mmap_offset = 0;
        given.mmap_size = 100;
        let dup = OwnedFd::from(slot.memfd.try_clone().unwrap());
        assert!(matches!(
            slot.set(&given, Some(dup)),
            Err(InflightError::TooSmall { .. })
        ));
        given.mmap_size = 2 * 4160;
        let plain = vmm_sys_util::tempfile::TempFile::new().unwrap();
        plain.as_file().set_len(1 << 20).unwrap();
        let fd = OwnedFd::from(plain.as_file().try_clone().unwrap());
        assert!(matches!(
            slot.set(&given, Some(fd)),
            Err(InflightError::NotSealed)
        ));
        assert!(matches!(slot.set(&given, None), Err(InflightError::NoFd)));
    }

    #[test]
    fn started_queues_are_taken_once() {
        let slot = InflightSlot::new(2, 256).unwrap();
        assert!(!slot.take_started(1));
        slot.vring_base(1);
        slot.vring_base(7);
        assert!(!slot.take_started(0));
        assert!(slot.take_started(1));
        assert!(!slot.take_started(1));
    }
}
