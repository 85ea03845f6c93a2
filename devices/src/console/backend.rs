//! The vhost-user side of the console: features, configuration space, and the event
//! handler. Both queues share one worker thread: a transmitq kick drains the queue into the
//! stream right there; a receiveq kick (the guest added buffers) wakes the I/O thread
//! (`io.rs`), which alone fills receive buffers, so bytes from the stream keep their order.
//!
//! The I/O thread needs the vrings, which `vhost-user-backend` hands out only to
//! `handle_event`. It calls `handle_event` for each queue as soon as the frontend sets the
//! queue's kick descriptor (`SET_VRING_KICK`), before any guest kick, so the backend keeps
//! the vrings it is given then.

use crate::daemon::thread_name::confine_worker_thread;
use bulkhead_seccomp::Role;
use std::io::{self, Read};
use std::sync::{Mutex, PoisonError, RwLock};

use bulkhead_ratelimit::{debug_limited, warn_limited};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Counters, Output, Receiver, RxEnd, Transmitter};
use super::stream::Port;
use super::virtio::{
    ConfigSpace, MAX_QUEUE_SIZE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VIRTIO_CONSOLE_F_SIZE,
};
use super::GuestRam;
use std::sync::Arc;

/// Guest memory as `vhost-user-backend` shares it with us.
pub type SharedMemory = GuestMemoryAtomic<GuestRam>;
type Vring = VringRwLock<SharedMemory>;

/// The vhost-user-console backend.
pub struct ConsoleBackend {
    features: u64,
    config: ConfigSpace,
    /// The terminal whose size the config space follows, if the stream is one.
    terminal: Option<std::fs::File>,
    mem: RwLock<SharedMemory>,
    vrings: Mutex<Vec<Vring>>,
    tx: Mutex<Transmitter>,
    rx: Mutex<Receiver>,
    /// What the guest got wrong.
    pub counters: Counters,
    port: Arc<Port>,
    /// Wakes the I/O thread: receive buffers may have arrived, or it should stop.
    pub(super) wake: EventFd,
}

impl std::fmt::Debug for ConsoleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleBackend")
            .field("features", &self.features)
            .field("config", &self.config)
            .field("counters", &self.counters)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The virtio features offered: SIZE only when the stream is a terminal of known size.
pub fn features(size_known: bool) -> u64 {
    let mut bits = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX);
    if size_known {
        bits |= 1 << VIRTIO_CONSOLE_F_SIZE;
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features offered.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
}

impl ConsoleBackend {
    /// A backend writing guest output to `port`, telling the guest the terminal is `size`
    /// (cols, rows) when known.
    pub fn new(port: Arc<Port>, size: Option<(u16, u16)>) -> io::Result<ConsoleBackend> {
        let (cols, rows) = size.unwrap_or((0, 0));
        Ok(ConsoleBackend {
            features: features(size.is_some()),
            config: ConfigSpace { cols, rows },
            terminal: None,
            mem: RwLock::new(SharedMemory::new(GuestRam::new())),
            vrings: Mutex::new(Vec::new()),
            tx: Mutex::new(Transmitter::default()),
            rx: Mutex::new(Receiver::default()),
            counters: Counters::default(),
            port,
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Follows `terminal`'s size: each config read asks it again, so after a resize (and
    /// the config-change interrupt the vmm raises) the guest reads the new size.
    pub fn follow_terminal(mut self, terminal: std::fs::File) -> ConsoleBackend {
        self.terminal = Some(terminal);
        self
    }

    /// The config space now.
    fn config(&self) -> ConfigSpace {
        self.terminal
            .as_ref()
            .and_then(super::stream::winsize)
            .map_or(self.config, |(cols, rows)| ConfigSpace { cols, rows })
    }

    /// The output half of the stream.
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    fn memory(&self) -> SharedMemory {
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

    fn vring(&self, index: u16) -> Option<Vring> {
        self.vrings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::from(index))
            .cloned()
    }

    /// One receive attempt from the I/O thread (call when `input` is readable).
    pub fn receive(&self, input: &mut dyn Read) -> RxEnd {
        let Some(vring) = self.vring(RX_QUEUE) else {
            return RxEnd::Unusable;
        };
        let atomic = self.memory();
        let mem = atomic.memory();
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = vring.get_mut();
        let round = rx.receive(state.get_queue_mut(), &mem, input, &self.counters);
        if round.interrupt {
            if let Err(e) = state.signal_used_queue() {
                warn_limited!("receiveq: signalling the call eventfd: {e}");
            }
        }
        round.end
    }

    fn transmit(&self, vring: &Vring) {
        let atomic = self.memory();
        let mem = atomic.memory();
        let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut state = vring.get_mut();
            let mut out = self.port.writer();
            let round = tx.round(
                state.get_queue_mut(),
                &mem,
                &mut out as &mut dyn Output,
                &self.counters,
            );
            drop(out);
            if round.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!("transmitq: signalling the call eventfd: {e}");
                }
            }
            if !round.again {
                break;
            }
        }
    }
}

impl VhostUserBackend for ConsoleBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
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
        debug_limited!("event index {}", if enabled { "on" } else { "off" });
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config().read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only emerg_wr is writable, and only with EMERG_WRITE, which we don't offer.
        // Refusing would make vhost-user-backend drop the connection: ignore instead.
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
        confine_worker_thread(|| "console-q".to_owned(), Role::ConsoleWorker)?;
        match device_event {
            RX_QUEUE => {
                if let Err(e) = self.wake.write(1) {
                    warn_limited!("waking the console I/O thread: {e}");
                }
            }
            TX_QUEUE => {
                if let Some(vring) = vrings.get(usize::from(TX_QUEUE)) {
                    self.transmit(vring);
                }
            }
            other => debug_limited!("ignoring event {other}"),
        }
        // Never an error: that would end the worker thread, and with it both queues.
        Ok(())
    }
}
