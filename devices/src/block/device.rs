//! A queue's worth of virtio-blk: draining a virtqueue, parsing and executing each request,
//! writing status bytes and used-ring entries, and deciding whether the driver needs an
//! interrupt. Knows nothing of vhost-user: it works on a `virtio_queue::Queue` and guest
//! memory, so tests drive it with `virtio_queue::mock` queues.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_ratelimit::{debug_limited, warn_limited};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::execute::Executor;
use super::image::DiskImage;
use super::request::ChainParser;
use super::resubmit::HeadChain;
use super::tracking::{RingView, Tracker};
use super::virtio::{ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use super::GuestRam;
use crate::daemon::inflight::Region;

/// Sizes of the split-ring parts (virtio 1.2, 2.7): flags + idx + ring + event word.
const DESC_SIZE: u64 = 16;
const AVAIL_FIXED: u64 = 6;
const AVAIL_ENTRY: u64 = 2;
const USED_FIXED: u64 = 6;
const USED_ENTRY: u64 = 8;

/// What a round of [`QueueWorker::serve_round`] asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Signal the driver now (the call eventfd): requests were completed and EVENT_IDX's
    /// `used_event` (or its absence) says the driver wants to know. At most once a round,
    /// and before any polling, so completions are never held back.
    pub interrupt: bool,
    /// More requests are available: run another round.
    pub again: bool,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainEnd {
    /// Nothing more available.
    Empty,
    /// A queue's worth served; more may be waiting.
    Budget,
    /// The available ring can't be used (an index further ahead than the queue is long).
    Unusable,
}

struct Drained {
    completed: bool,
    end: DrainEnd,
}

/// One queue's request processor. Each worker thread owns one (behind a lock it alone
/// takes), with scratch space reused from request to request.
#[derive(Debug)]
pub struct QueueWorker {
    parser: ChainParser,
    executor: Executor,
    poll: Duration,
    tracker: Tracker,
    stall: Stall,
}

/// Test only: a worker that freezes with a request popped (and marked in flight) but not
/// served, as a process killed at that moment would leave it.
#[derive(Debug, Default)]
struct Stall {
    /// Freeze on popping this many requests (counted per queue).
    after: Option<u64>,
    popped: u64,
    frozen: bool,
}

impl Stall {
    /// Counts a pop; true if the worker must freeze now.
    fn pop(&mut self) -> bool {
        self.popped += 1;
        if self.after == Some(self.popped) {
            self.frozen = true;
        }
        self.frozen
    }
}

impl QueueWorker {
    /// A worker serving `disk`, answering GET_ID with `serial`, polling an idle queue for
    /// `poll` before sleeping.
    pub fn new(disk: Arc<DiskImage>, serial: [u8; ID_BYTES], poll: Duration) -> Self {
        QueueWorker {
            parser: ChainParser::default(),
            executor: Executor::new(disk, serial),
            poll,
            tracker: Tracker::default(),
            stall: Stall::default(),
        }
    }

    /// Test only: freeze on popping the `n`th request (see [`Stall`]).
    pub fn stall_after(&mut self, n: Option<u64>) {
        self.stall.after = n;
    }

    /// The queue (re)starts (after SET_VRING_BASE, before its first kick is served), with
    /// `region` tracking it as queue `index`: checks what the region says was in flight
    /// (see [`super::tracking`]), serves those requests again in their order, and moves the
    /// next available index past them. Returns how many were resubmitted; the caller
    /// signals the driver if any were.
    pub fn resume(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        region: Option<Arc<Region>>,
        index: usize,
    ) -> usize {
        if region.is_some() && !rings_in_memory(queue, mem) {
            warn_limited!("queue {index}: rings outside guest memory; not resubmitting");
            return 0;
        }
        let ring = match LiveRing::read(queue, mem) {
            Some(ring) => ring,
            None => {
                warn_limited!("queue {index}: ring indexes unreadable; not resubmitting");
                return 0;
            }
        };
        let heads = match self.tracker.restart(region, index, &ring) {
            Ok(heads) => heads,
            Err(e) => {
                warn_limited!(
                    "queue {index}: inflight region refused: {e}; serving from the available ring at index {}",
                    ring.used
                );
                return 0;
            }
        };
        let desc_table = GuestAddress(queue.desc_table());
        for &head in &heads {
            let chain = HeadChain::new(mem, desc_table, ring.size, head);
            let used_len = match chain {
                Some(chain) => self.serve_chain(chain, head, mem),
                None => 0,
            };
            self.complete(queue, mem, head, used_len);
        }
        if !heads.is_empty() {
            queue.set_next_avail(ring.used.wrapping_add(heads.len() as u16));
        }
        heads.len()
    }

    /// Writes the used entry for `head`, with the region's bookkeeping around it.
    fn complete(&mut self, queue: &mut Queue, mem: &GuestRam, head: u16, used_len: u32) -> bool {
        self.tracker.completing(head);
        match queue.add_used(mem, head, used_len) {
            Ok(()) => {
                self.tracker.completed(head, queue.next_used());
                true
            }
            Err(e) => {
                warn_limited!("completing descriptor {head}: {e}");
                false
            }
        }
    }

    /// Serves `disk` from the next request on; requests already served used the old one.
    pub fn set_disk(&mut self, disk: Arc<DiskImage>) {
        self.executor.set_disk(disk);
    }

    /// Serves every request the driver has made available, and keeps going while more
    /// arrive, calling `interrupt` whenever the driver must be told (see [`Round`]).
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        mut interrupt: impl FnMut(),
    ) {
        loop {
            let round = self.serve_round(queue, mem);
            if round.interrupt {
                interrupt();
            }
            if !round.again {
                return;
            }
        }
    }

    /// One round: serves what the driver has made available (at most a queue's worth, so
    /// a driver that never stops submitting can't keep a round, and the vring lock the
    /// caller holds for it, forever), decides whether to interrupt the driver, then looks
    /// for more work: first by polling the ring for up to the worker's poll time (a driver
    /// with requests in flight usually adds the next one within microseconds; catching it
    /// here saves it a kick and us a wake-up, as QEMU's iothreads do), then by switching
    /// driver notifications (kicks) back on, which re-reads the available index after a
    /// full barrier, so no kick is lost between the two.
    pub fn serve_round(&mut self, queue: &mut Queue, mem: &GuestRam) -> Round {
        let done = Round {
            interrupt: false,
            again: false,
        };
        if !queue.ready() || self.stall.frozen {
            return done;
        }
        if !rings_in_memory(queue, mem) {
            warn_limited!("queue rings are outside guest memory; not serving the queue");
            return done;
        }
        if let Err(e) = queue.disable_notification(mem) {
            warn_limited!("disabling queue notifications: {e}");
            return done;
        }
        let drained = self.drain(queue, mem);
        let interrupt = drained.completed && queue.needs_notification(mem).unwrap_or(true);
        let again = match drained.end {
            DrainEnd::Unusable => false,
            DrainEnd::Budget => true,
            DrainEnd::Empty => {
                self.poll_for_more(queue, mem)
                    || match queue.enable_notification(mem) {
                        Ok(more) => more,
                        Err(e) => {
                            warn_limited!("enabling queue notifications: {e}");
                            false
                        }
                    }
            }
        };
        Round { interrupt, again }
    }

    /// Spins for up to the poll time waiting for the driver to make a request available.
    fn poll_for_more(&self, queue: &Queue, mem: &GuestRam) -> bool {
        if self.poll.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                match queue.avail_idx(mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => return true,
                    Ok(_) => std::hint::spin_loop(),
                    Err(_) => return false,
                }
            }
            if start.elapsed() >= self.poll {
                return false;
            }
        }
    }

    /// Serves available chains until there are none, or a queue's worth has been served.
    fn drain(&mut self, queue: &mut Queue, mem: &GuestRam) -> Drained {
        let mut completed = false;
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    warn_limited!("available ring unusable: {e}");
                    return Drained {
                        completed,
                        end: DrainEnd::Unusable,
                    };
                }
            };
            let Some(chain) = chain else {
                return Drained {
                    completed,
                    end: DrainEnd::Empty,
                };
            };
            let head = chain.head_index();
            self.tracker.popped(head);
            if self.stall.pop() {
                return Drained {
                    completed,
                    end: DrainEnd::Unusable,
                };
            }
            let used_len = self.serve_chain(chain, head, mem);
            completed |= self.complete(queue, mem, head, used_len);
        }
        Drained {
            completed,
            end: DrainEnd::Budget,
        }
    }

    /// Parses and executes one chain and writes its status byte. Returns the used length:
    /// bytes written into the chain's writable buffers, status included; 0 when the chain
    /// has no usable status byte (it is completed and otherwise dropped).
    pub fn serve_chain(
        &mut self,
        chain: impl IntoIterator<Item = Descriptor>,
        head: u16,
        mem: &GuestRam,
    ) -> u32 {
        let (status_addr, status, written): (Option<GuestAddress>, u8, u32) =
            match self.parser.parse(chain, mem) {
                Ok(req) => match self.executor.execute(mem, &req) {
                    Ok(written) => (Some(req.status), VIRTIO_BLK_S_OK as u8, written),
                    Err(e) => {
                        if e.is_host_error() {
                            warn_limited!("request {head}: {e}");
                        } else {
                            debug_limited!("request {head}: {e}");
                        }
                        (Some(req.status), e.status(), 0)
                    }
                },
                Err(rejected) => {
                    warn_limited!(
                        "malformed descriptor chain {head}: {}{}",
                        rejected.error,
                        if rejected.status.is_some() {
                            ""
                        } else {
                            "; no status byte, dropped"
                        }
                    );
                    (rejected.status, VIRTIO_BLK_S_IOERR as u8, 0)
                }
            };
        let Some(addr) = status_addr else {
            return 0;
        };
        match mem.write_obj(status, addr) {
            Ok(()) => written.saturating_add(1),
            Err(e) => {
                warn_limited!("writing status of {head}: {e}");
                0
            }
        }
    }
}

/// The ring's indexes as guest memory has them, for a (re)start.
struct LiveRing<'a> {
    mem: &'a GuestRam,
    avail_ring: u64,
    size: u16,
    used: u16,
    avail: u16,
}

impl<'a> LiveRing<'a> {
    fn read(queue: &Queue, mem: &'a GuestRam) -> Option<LiveRing<'a>> {
        Some(LiveRing {
            mem,
            avail_ring: queue.avail_ring(),
            size: queue.size(),
            used: queue.used_idx(mem, Ordering::Acquire).ok()?.0,
            avail: queue.avail_idx(mem, Ordering::Acquire).ok()?.0,
        })
    }
}

impl RingView for LiveRing<'_> {
    fn size(&self) -> u16 {
        self.size
    }
    fn used_idx(&self) -> u16 {
        self.used
    }
    fn avail_idx(&self) -> u16 {
        self.avail
    }
    fn avail_entry(&self, pos: u16) -> Option<u16> {
        if self.size == 0 {
            return None;
        }
        let slot = u64::from(pos % self.size);
        let at = GuestAddress(self.avail_ring)
            .checked_add(4)?
            .checked_add(slot * AVAIL_ENTRY)?;
        let entry: u16 = self.mem.read_obj(at).ok()?;
        Some(u16::from_le(entry))
    }
}

/// Whether the descriptor table, available ring and used ring lie in guest memory. Checked
/// before each batch: with them in memory, walking the available ring always progresses,
/// so the drain loop can't spin on a ring it can't read.
fn rings_in_memory(queue: &Queue, mem: &GuestRam) -> bool {
    let size = u64::from(queue.size());
    let fits = |addr: u64, len: u64| mem.check_range(GuestAddress(addr), len as usize);
    fits(queue.desc_table(), DESC_SIZE * size)
        && fits(queue.avail_ring(), AVAIL_FIXED + AVAIL_ENTRY * size)
        && fits(queue.used_ring(), USED_FIXED + USED_ENTRY * size)
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
