//! The vhost-user side of the net device: features, configuration space, queue layout,
//! offloads set on the TAP when the driver's features arrive, and the threads.
//!
//! Queues: RX of pair *i* is queue 2*i*, TX is 2*i*+1. Threads: `vhost-user-backend` runs
//! one worker per queue pair (named `net-q<i>`), which sends TX chains to the TAP when TX
//! is kicked and passes RX kicks on; each pair also has an RX thread (`net-rx<i>`, started
//! on the first RX kick) that waits for the TAP to be readable and fills RX buffers. While
//! the driver has no RX buffers it stops watching the TAP until the next RX kick, so frames
//! wait in the TAP's queue (the kernel drops and counts beyond its length).
//!
//! The TAP queue of a pair the driver hasn't enabled is detached (see `queue_link.rs`): all
//! but pair 0's at start; a pair's worker attaches it before serving the pair's first
//! event once enabled, and its RX thread detaches it when it sees the rings disabled (on
//! every wake-up, and every [`LINK_CHECK_MS`] while attached).

use crate::daemon::thread_name::confine_worker_thread;
use bulkhead_seccomp::Role;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use bulkhead_ratelimit::{debug_limited, warn_limited};
use log::error;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{Counters, RxEnd, RxWorker, TapGone, TxWorker};
use super::queue_link::{Change, LinkError, QueueLink};
use super::tap::{offloads_for, set_offload, Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::virtio::*;
use super::GuestRam;
use crate::daemon::Termination;
use crate::sys;

/// Guest memory as `vhost-user-backend` shares it with us.
pub type SharedMemory = GuestMemoryAtomic<GuestRam>;
type Vring = VringRwLock<SharedMemory>;

/// How often (ms) the RX thread of an attached pair other than 0 looks whether the driver
/// disabled its rings: `vhost-user-backend` doesn't tell, and a disabled pair's queue
/// would keep being steered frames nobody reads until it is detached.
pub const LINK_CHECK_MS: i32 = 100;

/// What the backend and its RX threads share.
#[derive(Debug)]
struct Shared {
    mem: RwLock<SharedMemory>,
    counters: Arc<Counters>,
    tap_name: String,
    fatal: Mutex<Option<String>>,
    termination: Termination,
    stop: AtomicBool,
}

impl Shared {
    fn memory(&self) -> SharedMemory {
        self.mem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The TAP has gone: say so once and stop serving.
    fn fail(&self, gone: &TapGone) {
        let mut fatal = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        if fatal.is_none() {
            let message = format!("TAP {}: {gone}", self.tap_name);
            error!("{message}; stopping");
            *fatal = Some(message);
            drop(fatal);
            self.termination.trigger();
        }
    }
}

/// One queue pair's RX side.
struct RxPair {
    index: usize,
    tap: Arc<OwnedFd>,
    /// Whether `tap` is attached; held by whoever reads or writes it.
    link: QueueLink<Arc<OwnedFd>>,
    worker: Mutex<RxWorker>,
    /// The pair's RX and TX vrings, known from its first event on.
    vrings: Mutex<Option<(Vring, Vring)>>,
    wake: EventFd,
    started: AtomicBool,
}

impl std::fmt::Debug for RxPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxPair")
            .field("index", &self.index)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// The vhost-user-net backend.
#[derive(Debug)]
pub struct NetBackend {
    features: u64,
    config: ConfigSpace,
    queue_pairs: usize,
    mtu: u16,
    shared: Arc<Shared>,
    tx: Vec<Mutex<TxWorker>>,
    rx: Vec<Arc<RxPair>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl NetBackend {
    /// A backend on `tap` (one descriptor per queue pair), telling the driver `mac` and
    /// `mtu`; a TAP that goes away triggers `termination`.
    pub fn new(tap: Tap, mac: [u8; 6], mtu: u16, termination: Termination) -> io::Result<Self> {
        let offloads = tap.offloads();
        let tap_name = tap.name().to_string();
        let fds: Vec<Arc<OwnedFd>> = tap.into_fds().into_iter().map(Arc::new).collect();
        let queue_pairs = fds.len().max(1);
        let counters = Arc::new(Counters::default());
        let tx = fds
            .iter()
            .map(|fd| Mutex::new(TxWorker::new(Arc::clone(fd), Arc::clone(&counters))))
            .collect();
        let rx = fds
            .iter()
            .enumerate()
            .map(|(index, fd)| {
                Ok(Arc::new(RxPair {
                    index,
                    tap: Arc::clone(fd),
                    link: QueueLink::new(index, Arc::clone(fd)),
                    worker: Mutex::new(RxWorker::new(Arc::clone(fd), Arc::clone(&counters))),
                    vrings: Mutex::new(None),
                    wake: EventFd::new(EFD_NONBLOCK)?,
                    started: AtomicBool::new(false),
                }))
            })
            .collect::<io::Result<_>>()?;
        Ok(NetBackend {
            features: features(offloads, queue_pairs as u16),
            config: ConfigSpace::new(mac, queue_pairs as u16, mtu),
            queue_pairs,
            mtu,
            shared: Arc::new(Shared {
                mem: RwLock::new(SharedMemory::new(GuestRam::new())),
                counters,
                tap_name,
                fatal: Mutex::new(None),
                termination,
                stop: AtomicBool::new(false),
            }),
            tx,
            rx,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// The data path's counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Why the backend stopped itself (the TAP went away), if it did.
    pub fn fatal(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Busy-polls dry rings for up to `max` before waiting for a kick (see `busy_poll.rs`).
    pub fn set_poll(&self, max: std::time::Duration) {
        for tx in &self.tx {
            tx.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_poll(max);
        }
        for pair in &self.rx {
            pair.worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_poll(max);
        }
    }

    /// Detaches the TAP queues of every pair but 0: no driver has enabled them yet. First
    /// every queue is attached again if a process before us (a restarted backend's
    /// predecessor, holding the same descriptors) left it detached, so that what the
    /// links believe is what the kernel has.
    pub fn detach_idle_queues(&self) -> Result<(), LinkError> {
        for pair in &self.rx {
            if pair.link.reattach()? {
                log::info!(
                    "TAP queue of pair {} was left detached; attached it again",
                    pair.index
                );
            }
        }
        for pair in self.rx.iter().skip(1) {
            pair.link.reconcile(false, false)?;
        }
        Ok(())
    }

    /// Whether each pair's TAP queue is attached now.
    pub fn attached_queues(&self) -> Vec<bool> {
        self.rx.iter().map(|p| p.link.is_attached()).collect()
    }

    /// Stops and joins the RX threads.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for pair in &self.rx {
            let _ = pair.wake.write(1);
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Between two frontends of a standalone backend: stops the RX threads, forgets the
    /// last frontend's vrings (the next one's arrive with its kicks, which start the RX
    /// threads again) and detaches the TAP queues of every pair but the first again.
    pub fn forget_frontend(&self) -> Result<(), LinkError> {
        self.stop();
        for pair in &self.rx {
            *pair.vrings.lock().unwrap_or_else(PoisonError::into_inner) = None;
            pair.started.store(false, Ordering::SeqCst);
        }
        self.shared.stop.store(false, Ordering::SeqCst);
        self.detach_idle_queues()
    }

    /// Before a pair's event is served: remembers its vrings, attaches its TAP queue if it
    /// was enabled since, and makes sure its RX thread runs (it watches the link too).
    fn prepare_pair(&self, pair: &Arc<RxPair>, vrings: &[Vring]) {
        let (Some(rx), Some(tx)) = (vrings.first(), vrings.get(1)) else {
            return;
        };
        {
            let mut slot = pair.vrings.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some((rx.clone(), tx.clone()));
            }
        }
        reconcile_link(&self.shared, pair, rx, tx);
        self.start_rx_thread(pair);
    }

    fn kick_rx(&self, pair: &Arc<RxPair>) {
        self.start_rx_thread(pair);
        if let Err(e) = pair.wake.write(1) {
            warn_limited!("waking RX thread {}: {e}", pair.index);
        }
    }

    fn start_rx_thread(&self, pair: &Arc<RxPair>) {
        if !pair.started.swap(true, Ordering::SeqCst) {
            let (shared, p) = (Arc::clone(&self.shared), Arc::clone(pair));
            match std::thread::Builder::new()
                .name(format!("net-rx{}", pair.index))
                .spawn(move || rx_thread(&shared, &p))
            {
                Ok(t) => self
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(t),
                Err(e) => {
                    warn_limited!("starting RX thread {}: {e}", pair.index);
                    pair.started.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    fn serve_tx(&self, pair: usize, vring: &Vring) {
        let (Some(worker), Some(rx)) = (self.tx.get(pair), self.rx.get(pair)) else {
            return;
        };
        // Writing a detached queue would fail as if the TAP had gone: the chains wait for
        // the kick that follows the pair's enabling.
        let link = rx.link.read();
        if !*link {
            return;
        }
        let mut worker = worker.lock().unwrap_or_else(PoisonError::into_inner);
        let atomic = self.shared.memory();
        let mem = atomic.memory();
        loop {
            let mut state = vring.get_mut();
            let round = match worker.serve_batch(state.get_queue_mut(), &mem) {
                Ok(round) => round,
                Err(gone) => {
                    let _ = state.signal_used_queue();
                    self.shared.fail(&gone);
                    return;
                }
            };
            if round.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!(
                        "TX queue {}: signalling the call eventfd: {e}",
                        2 * pair + 1
                    );
                }
            }
            // Signalled first, then poll: completions never wait for the poll.
            let again = round.again || round.idle && worker.rest(state.get_queue_mut(), &mem);
            if !again {
                return;
            }
        }
    }
}

/// Attaches or detaches the pair's TAP queue as its rings' enabled flags say. An attach
/// that fails means the TAP has gone (the kernel refuses it once the interface is deleted).
fn reconcile_link(shared: &Shared, pair: &RxPair, rx: &Vring, tx: &Vring) {
    let rx_enabled = rx.get_ref().is_enabled();
    let tx_enabled = tx.get_ref().is_enabled();
    match pair.link.reconcile(rx_enabled, tx_enabled) {
        Ok(Change::None) => {}
        Ok(change) => {
            debug_limited!("TAP {} pair {}: {change:?}", shared.tap_name, pair.index);
            // The RX thread ignores the TAP while its queue is detached: wake it.
            let _ = pair.wake.write(1);
        }
        Err(e) if e.attach => shared.fail(&TapGone {
            op: "attaching a queue of",
            source: e.source,
        }),
        Err(e) => warn_limited!("TAP {}: {e}; it stays attached", shared.tap_name),
    }
}

/// Whether the TAP descriptor reports an error or hang-up right now.
fn tap_broken(fd: &OwnedFd) -> bool {
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    poll(&mut pfd, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && pfd[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
        })
}

/// What poll reported for `p`; a flag nix does not know (none was asked for) as all of
/// them, which errs towards looking closer.
fn revents(p: &PollFd) -> PollFlags {
    p.revents().unwrap_or(PollFlags::all())
}

/// The RX thread of one queue pair.
fn rx_thread(shared: &Shared, pair: &RxPair) {
    let mut starved = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // A detached queue polls as an error: don't watch it (a kick wakes us).
        let attached = pair.link.is_attached();
        let timeout = if pair.index > 0 && attached {
            PollTimeout::from(LINK_CHECK_MS as u16)
        } else {
            PollTimeout::NONE
        };
        let tap_events = if starved {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        // The wake eventfd first; the TAP second, only while attached.
        let mut both = [
            PollFd::new(sys::event_fd(&pair.wake), PollFlags::POLLIN),
            PollFd::new(pair.tap.as_fd(), tap_events),
        ];
        let watched = if attached { 2 } else { 1 };
        match poll(&mut both[..watched], timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warn_limited!("RX thread {}: poll: {e}", pair.index);
                return;
            }
        }
        let wake_events = revents(&both[0]);
        let tap_revents = if attached {
            revents(&both[1])
        } else {
            PollFlags::empty()
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if wake_events.contains(PollFlags::POLLIN) {
            let _ = pair.wake.read();
            starved = false;
        }
        let vrings = pair
            .vrings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((vring, tx_vring)) = vrings else {
            starved = true;
            continue;
        };
        if pair.index > 0 {
            reconcile_link(shared, pair, &vring, &tx_vring);
        }
        let link = pair.link.read();
        if !*link || !attached || tap_revents.is_empty() && wake_events.is_empty() {
            // Detached, attached since we polled, or just the link timer.
            continue;
        }
        if tap_revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
            && starved
            && tap_broken(&pair.tap)
        {
            // Readable or not, an error or hang-up on the TAP would wake us at once
            // forever: it has gone. (Asked again under `link`: a detach and re-attach while
            // we polled also reports an error, which has passed now.)
            drop(link);
            shared.fail(&TapGone {
                op: "polling",
                source: io::Error::from_raw_os_error(libc::EBADFD),
            });
            return;
        }
        if starved {
            continue;
        }
        let atomic = shared.memory();
        let mem = atomic.memory();
        let mut worker = pair.worker.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut state = vring.get_mut();
            if !state.is_enabled() {
                starved = true;
                break;
            }
            let round = match worker.serve(state.get_queue_mut(), &mem) {
                Ok(round) => round,
                Err(gone) => {
                    let _ = state.signal_used_queue();
                    drop(state);
                    drop(worker);
                    drop(link);
                    shared.fail(&gone);
                    return;
                }
            };
            if round.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!(
                        "RX queue {}: signalling the call eventfd: {e}",
                        2 * pair.index
                    );
                }
            }
            match round.end {
                RxEnd::Budget => continue,
                RxEnd::TapEmpty => break,
                RxEnd::NoBuffers | RxEnd::NotReady => {
                    starved = true;
                    break;
                }
            }
        }
    }
}

/// The virtio features offered, given the `TUN_F_*` offloads the TAP accepted.
pub fn features(offloads: u32, queue_pairs: u16) -> u64 {
    let mut bits = vec![
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MTU,
        // The TAP takes partial checksums and GSO frames from us whatever its offloads.
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ];
    if offloads & TUN_F_CSUM != 0 {
        bits.push(VIRTIO_NET_F_GUEST_CSUM);
        if offloads & TUN_F_TSO4 != 0 {
            bits.push(VIRTIO_NET_F_GUEST_TSO4);
        }
        if offloads & TUN_F_TSO6 != 0 {
            bits.push(VIRTIO_NET_F_GUEST_TSO6);
        }
    }
    if queue_pairs > 1 {
        bits.push(VIRTIO_NET_F_MQ);
    }
    bits.iter().fold(0u64, |acc, bit| acc | 1 << bit)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features offered.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.queue_pairs
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        let flags = offloads_for(features);
        if let Some(pair) = self.rx.first() {
            if let Err(e) = set_offload(pair.tap.as_raw_fd(), flags) {
                warn_limited!(
                    "TUNSETOFFLOAD {flags:#x} on TAP {}: {e}",
                    self.shared.tap_name
                );
            }
        }
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let gso = has(VIRTIO_NET_F_GUEST_TSO4)
            || has(VIRTIO_NET_F_GUEST_TSO6)
            || has(VIRTIO_NET_F_GUEST_UFO);
        let max_frame = if gso {
            MAX_FRAME
        } else {
            // Ethernet header and one VLAN tag on top of the MTU.
            usize::from(self.mtu) + 18
        };
        for pair in &self.rx {
            pair.worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_features(has(VIRTIO_NET_F_MRG_RXBUF), max_frame);
        }
        debug_limited!("driver features {features:#x}; TAP offloads {flags:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        debug_limited!("event index {}", if enabled { "on" } else { "off" });
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing is writable (no CTRL_MAC_ADDR, no legacy interface); refusing would
        // drop the connection, so ignore the write.
        debug_limited!("ignoring a {}-byte config write at {offset}", buf.len());
        Ok(())
    }

    fn update_memory(&self, mem: SharedMemory) -> io::Result<()> {
        *self
            .shared
            .mem
            .write()
            .unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queue_pairs).map(|p| 0b11u64 << (2 * p)).collect()
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
        // An error would end this worker thread: ignore what isn't a kick of our queues.
        if evset != EventSet::IN {
            return Ok(());
        }
        // vhost-user-backend numbers events within the thread's own vrings: thread *p*
        // serves pair *p*, whose event 0 is its RX queue and event 1 its TX queue.
        let (Some(vring), Some(pair)) = (
            vrings.get(usize::from(device_event)),
            self.rx.get(thread_id),
        ) else {
            debug_limited!("queue thread {thread_id}: ignoring event {device_event}");
            return Ok(());
        };
        confine_worker_thread(|| format!("net-q{thread_id}"), Role::NetWorker)?;
        self.prepare_pair(pair, vrings);
        match device_event {
            0 => self.kick_rx(pair),
            1 => self.serve_tx(thread_id, vring),
            _ => debug_limited!("queue thread {thread_id}: ignoring event {device_event}"),
        }
        Ok(())
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_tap_and_the_queue_pairs() {
        let bit = |b: u32| 1u64 << b;
        let plain = features(0, 1);
        for b in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(plain & bit(b), 0, "bit {b}");
        }
        assert_ne!(plain & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        for b in [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_MQ,
        ] {
            assert_eq!(plain & bit(b), 0, "bit {b}");
        }
        // TSO without checksum offload is meaningless: not offered.
        assert_eq!(features(TUN_F_TSO4, 1) & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
        let all = features(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 4);
        for b in [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_MQ,
        ] {
            assert_ne!(all & bit(b), 0, "bit {b}");
        }
    }

    #[test]
    fn protocol_features_are_config_mq_reply_ack() {
        assert_eq!(
            protocol_features(),
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
        );
    }
}
