//! The vhost-user side of vsock: features, configuration space, and the event handler.
//! The queue thread does no packet work: every kick (rx buffers added, tx packets sent)
//! wakes the I/O thread (`io.rs`), which alone runs the connection table, so packets on a
//! stream keep their order without locks around the table. The I/O thread needs the
//! vrings, which `vhost-user-backend` hands out only to `handle_event`; it calls
//! `handle_event` for each queue when the frontend sets its kick descriptor, so the
//! backend keeps the vrings it is given then.

use std::io;
use std::sync::{Mutex, PoisonError, RwLock};

use bulkhead_ratelimit::{debug_limited, warn_limited};
use bulkhead_seccomp::Role;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::EventFd;

use super::virtio::{ConfigSpace, EVENT_QUEUE, MAX_QUEUE_SIZE, NUM_QUEUES};
use super::GuestRam;
use crate::daemon::thread_name::confine_worker_thread;

/// Guest memory as `vhost-user-backend` shares it with us.
pub type SharedMemory = GuestMemoryAtomic<GuestRam>;
pub(super) type Vring = VringRwLock<SharedMemory>;

/// The vhost-user-vsock backend.
pub struct VsockBackend {
    config: ConfigSpace,
    mem: RwLock<SharedMemory>,
    vrings: Mutex<Vec<Vring>>,
    /// Wakes the I/O thread: a queue was kicked, or it should stop.
    pub(super) wake: EventFd,
}

impl std::fmt::Debug for VsockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VsockBackend {
    /// A backend for the guest `guest_cid`.
    pub fn new(guest_cid: u64) -> io::Result<VsockBackend> {
        Ok(VsockBackend {
            config: ConfigSpace { guest_cid },
            mem: RwLock::new(SharedMemory::new(GuestRam::new())),
            vrings: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    pub(super) fn memory(&self) -> SharedMemory {
        self.mem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the last frontend's vrings (a standalone backend, between frontends): the
    /// next frontend's arrive with its first kick.
    pub fn forget_frontend(&self) {
        self.vrings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(super) fn vring(&self, index: u16) -> Option<Vring> {
        self.vrings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::from(index))
            .cloned()
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        debug_limited!("event index {}", if enabled { "on" } else { "off" });
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // guest_cid is read-only; refusing would drop the connection: ignore instead.
        debug_limited!("ignoring a {}-byte config write at {offset}", buf.len());
        Ok(())
    }

    fn update_memory(&self, mem: SharedMemory) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        crate::daemon::exit_event::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        {
            let mut kept = self.vrings.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < vrings.len() {
                *kept = vrings.to_vec();
            }
        }
        confine_worker_thread(|| "vsock-q".to_owned(), Role::VsockWorker)?;
        if device_event == EVENT_QUEUE {
            // Buffers for transport events, which this device never sends.
            return Ok(());
        }
        if let Err(e) = self.wake.write(1) {
            warn_limited!("waking the vsock I/O thread: {e}");
        }
        Ok(())
    }
}
