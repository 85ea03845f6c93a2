//! The vhost-user side of the block device: what `vhost-user-backend` asks of a backend
//! (features, protocol features, configuration space, queue layout) and the per-queue
//! event handler that hands a kicked queue to its [`QueueWorker`].
//!
//! Threads: `vhost-user-backend` runs one worker thread per entry of
//! [`queues_per_thread`](VhostUserBackend::queues_per_thread); we ask for one per queue,
//! so queue *n* is served by thread *n* (named `blk-q<n>` on its first event) and queues
//! never share a lock. Requests are executed synchronously on that thread, which holds the
//! vring's lock for a round (at most a queue's worth of requests, then at most the poll
//! time); `GET_VRING_BASE` therefore waits for the round in progress, stops the next, and
//! returns an index with nothing in flight.
//!
//! With inflight tracking ([`BlockBackend::track_inflight`]), each request is recorded in
//! the shared region while in flight, and a queue's first event after SET_VRING_BASE first
//! resubmits what a predecessor process left in flight (see `tracking.rs`), logging
//! `resubmitted N in-flight request(s)` on stderr.

use crate::daemon::thread_name::confine_worker_thread;
use bulkhead_seccomp::Role;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bulkhead_ratelimit::{debug_limited, warn_limited};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::QueueWorker;
use super::disk::Disk;
use super::image::DiskImage;
use super::virtio::{
    ConfigInfo, ConfigSpace, ID_BYTES, MAX_QUEUE_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use super::GuestRam;
use crate::daemon::inflight::InflightSlot;

/// Guest memory as `vhost-user-backend` shares it with us.
pub type SharedMemory = GuestMemoryAtomic<GuestRam>;

/// The vhost-user-blk backend.
#[derive(Debug)]
pub struct BlockBackend {
    features: u64,
    config: RwLock<ConfigSpace>,
    logical_block_size: u32,
    /// The image served now (each worker holds it too).
    disk: Mutex<Arc<DiskImage>>,
    num_queues: usize,
    mem: RwLock<SharedMemory>,
    workers: Vec<Mutex<QueueWorker>>,
    /// Inflight tracking, when the relay serves it.
    inflight: Option<Arc<InflightSlot>>,
}

impl BlockBackend {
    /// A backend serving `disk` on `num_queues` queues (1 to 64), answering GET_ID with
    /// `serial`, telling the guest its logical block size is `logical_block_size`, polling
    /// an idle queue for `poll` before sleeping. Guest memory arrives later, with the
    /// frontend's memory table.
    pub fn new(
        disk: Arc<DiskImage>,
        serial: [u8; ID_BYTES],
        num_queues: u16,
        logical_block_size: u32,
        poll: Duration,
    ) -> Self {
        let num_queues = num_queues.max(1);
        let config = ConfigSpace::new(ConfigInfo {
            capacity_sectors: disk.capacity_sectors(),
            logical_block_size,
            num_queues,
        });
        let workers = (0..num_queues)
            .map(|_| Mutex::new(QueueWorker::new(Arc::clone(&disk), serial, poll)))
            .collect();
        BlockBackend {
            features: features(disk.read_only(), num_queues),
            config: RwLock::new(config),
            logical_block_size,
            disk: Mutex::new(disk),
            num_queues: usize::from(num_queues),
            mem: RwLock::new(SharedMemory::new(GuestRam::new())),
            workers,
            inflight: None,
        }
    }

    /// Tracks requests in flight in the region `slot` gets from the frontend, and
    /// resubmits what a predecessor left in flight when a queue starts.
    pub fn track_inflight(&mut self, slot: Arc<InflightSlot>) {
        self.inflight = Some(slot);
    }

    /// Test only: every queue freezes on popping its `n`th request.
    pub fn stall_after(&self, n: Option<u64>) {
        for w in &self.workers {
            w.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stall_after(n);
        }
    }

    /// The configuration space the guest sees.
    pub fn config_space(&self) -> ConfigSpace {
        *self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `disk` from now on; returns its capacity in sectors. Every queue worker is
    /// locked first, so a round in progress finishes on the old image and the next starts
    /// on the new one; the config space then shows the new capacity (the caller has the
    /// vmm raise the config-change interrupt), and the old image is flushed before it is
    /// dropped. Read-only-ness is the new image's for every request (a write to a
    /// read-only image fails with IOERR); the feature bits negotiated at start-up stay.
    pub fn swap_disk(&self, disk: Disk) -> Result<u64, String> {
        let disk = Arc::new(DiskImage::from(disk));
        let mut workers: Vec<_> = self
            .workers
            .iter()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        let mut current = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        for worker in workers.iter_mut() {
            worker.set_disk(Arc::clone(&disk));
        }
        *self.config.write().unwrap_or_else(PoisonError::into_inner) =
            ConfigSpace::new(ConfigInfo {
                capacity_sectors: disk.capacity_sectors(),
                logical_block_size: self.logical_block_size,
                num_queues: self.num_queues as u16,
            });
        let old = std::mem::replace(&mut *current, Arc::clone(&disk));
        drop(workers);
        let flushed = if old.read_only() { Ok(()) } else { old.flush() };
        log::info!(
            "now serving {} ({} bytes{}) instead of {}",
            disk.name(),
            disk.size(),
            if disk.read_only() { ", read-only" } else { "" },
            old.name()
        );
        if let Err(e) = flushed {
            // The swap is done: the guest must be told either way.
            log::warn!("flushing the previous image {}: {e}", old.name());
        }
        Ok(disk.capacity_sectors())
    }

    /// Flushes the image served now (fdatasync): between frontends of a standalone
    /// backend, and on the launcher's `Shutdown`.
    pub fn flush(&self) -> io::Result<()> {
        let disk = Arc::clone(&self.disk.lock().unwrap_or_else(PoisonError::into_inner));
        disk.flush()
    }

    fn memory(&self) -> SharedMemory {
        self.mem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The virtio features offered.
pub fn features(read_only: bool, num_queues: u16) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ]
    .iter()
    .fold(0u64, |acc, bit| acc | 1 << bit);
    if read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    } else {
        // Both change the image: not offered on a read-only disk.
        bits |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    if num_queues > 1 {
        bits |= 1 << VIRTIO_BLK_F_MQ;
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features offered: all handled by `vhost-user-backend`, the
/// device-specific part being `get_config` below. The relay adds INFLIGHT_SHMFD, which it
/// serves itself (`daemon::inflight`), when the frontend's socket is a connected one.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock<SharedMemory>;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        // vhost-user-backend sets it on each queue, which is where it is used.
        debug_limited!("event index {}", if enabled { "on" } else { "off" });
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing in virtio-blk's configuration space is writable without CONFIG_WCE, which
        // we don't offer. Refusing would make vhost-user-backend drop the connection, so a
        // guest poking its config space would kill its own disk: ignore the write instead.
        debug_limited!("ignoring a {}-byte config write at {offset}", buf.len());
        Ok(())
    }

    fn update_memory(&self, mem: SharedMemory) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        crate::daemon::exit_event::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Returning an error would end this worker thread, and with it the queue: only the
        // kick of one of our vrings (device_event indexes this thread's vrings) means work.
        if evset != EventSet::IN {
            debug_limited!("queue thread {thread_id}: ignoring event set {evset:?}");
            return Ok(());
        }
        let (Some(vring), Some(worker)) = (
            vrings.get(usize::from(device_event)),
            self.workers.get(thread_id),
        ) else {
            debug_limited!("queue thread {thread_id}: ignoring event {device_event}");
            return Ok(());
        };
        confine_worker_thread(|| format!("blk-q{thread_id}"), Role::BlkWorker)?;
        let mut worker = worker.lock().unwrap_or_else(PoisonError::into_inner);
        let atomic = self.memory();
        let mem = atomic.memory();
        if let Some(slot) = &self.inflight {
            let mut state = vring.get_mut();
            // The queue was (re)started: what a predecessor left in flight goes first.
            if state.get_queue().ready() && slot.take_started(thread_id) {
                let n = worker.resume(state.get_queue_mut(), &mem, slot.region(), thread_id);
                if n > 0 {
                    eprintln!(
                        "bulkhead-blk: queue {thread_id}: resubmitted {n} in-flight request(s)"
                    );
                    if let Err(e) = state.signal_used_queue() {
                        warn_limited!("queue {thread_id}: signalling the call eventfd: {e}");
                    }
                }
            }
        }
        // The vring lock is held for one round at a time (a bounded amount of work), so
        // control messages such as GET_VRING_BASE get in between rounds.
        loop {
            let mut state = vring.get_mut();
            let round = worker.serve_round(state.get_queue_mut(), &mem);
            if round.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!("queue {thread_id}: signalling the call eventfd: {e}");
                }
            }
            if !round.again {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::disk::DiskOptions;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    const OPTIONS: DiskOptions = DiskOptions {
        read_only: false,
        direct: false,
        logical_block_size: 512,
    };

    fn capacity(backend: &BlockBackend) -> u64 {
        let bytes = backend.get_config(0, 8);
        u64::from_le_bytes(bytes.try_into().unwrap())
    }

    #[test]
    fn a_swapped_disk_shows_its_capacity_and_every_worker_serves_it() {
        let old = TempFile::new().unwrap();
        old.as_file().set_len(1 << 20).unwrap();
        let new = TempFile::new().unwrap();
        new.as_file().set_len(3 << 20).unwrap();
        let disk = Disk::open(old.as_path(), OPTIONS).unwrap();
        let backend =
            BlockBackend::new(Arc::new(disk.into()), [0; ID_BYTES], 2, 512, Duration::ZERO);
        assert_eq!(capacity(&backend), 2048);
        let fd = OwnedFd::from(new.as_file().try_clone().unwrap());
        let adopted = Disk::adopt(fd, "new".into(), 3 << 20, false, OPTIONS).unwrap();
        assert_eq!(backend.swap_disk(adopted), Ok(6144));
        assert_eq!(capacity(&backend), 6144);
        // The backend's slot, both workers and this copy hold the new image.
        let current = backend.disk.lock().unwrap().clone();
        assert_eq!(current.name(), "new");
        assert_eq!(Arc::strong_count(&current), 4);
        let DiskImage::Raw(raw) = &*current else {
            panic!("a swapped-in image is raw");
        };
        raw.write_all_at(b"x", 0).unwrap();
        let mut b = [0u8; 1];
        new.as_file().read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"x");
    }
}
