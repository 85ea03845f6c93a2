//! virtio-net's data path, free of vhost-user: a TX queue drained into the TAP and TAP
//! frames read into an RX queue, both straight between guest memory and the TAP with
//! `writev`/`readv`. Works on a `virtio_queue::Queue`, guest memory and a descriptor, so
//! tests drive it with `virtio_queue::mock` queues and a socketpair standing in for the TAP.
//!
//! Hostile input and what happens to it (each counted in [`Counters`]):
//!
//! | input | behaviour |
//! | --- | --- |
//! | TX chain shorter than the 12-byte header | dropped, chain returned with length 0 |
//! | TX frame longer than 65550 bytes | dropped, chain returned with length 0 |
//! | TX chain with a writable descriptor, outside guest memory, looping, too many segments | chain returned with length 0 |
//! | TX frame the TAP refuses (bad virtio-net header: `EINVAL`) or can't queue | dropped |
//! | RX chain with a readable descriptor, outside memory, looping, or under 12 bytes | chain returned with length 0 |
//! | RX frame larger than the buffers offered | frame dropped, buffers kept for the next frame |
//! | no RX buffers | the TAP is left unread (the kernel queues, then drops and counts) until a kick |
//! | TAP read/write error meaning it has gone | [`TapGone`]: the caller stops the backend |

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_ratelimit::debug_limited;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::busy_poll::BusyPoll;
use super::tap::is_gone;
use super::virtio::{MAX_FRAME, NET_HDR_SIZE, NUM_BUFFERS_OFFSET};
use super::GuestRam;

/// Sizes of the split-ring parts (virtio 1.2, 2.7).
const DESC_SIZE: u64 = 16;
const AVAIL_FIXED: u64 = 6;
const AVAIL_ENTRY: u64 = 2;
const USED_FIXED: u64 = 6;
const USED_ENTRY: u64 = 8;

/// Most iovecs in one `readv`/`writev` (Linux's `UIO_MAXIOV`), one kept for RX's overflow.
const MAX_IOVS: usize = 1023;
/// Frames read per RX call before the vring lock is released.
const RX_BUDGET: usize = 64;

/// Counters of what the data path did, shared by all queues of a backend.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames written to the TAP.
    pub tx_frames: AtomicU64,
    /// Their bytes (without headers).
    pub tx_bytes: AtomicU64,
    /// TX chains shorter than the header.
    pub tx_too_short: AtomicU64,
    /// TX frames over [`MAX_FRAME`].
    pub tx_too_large: AtomicU64,
    /// TX chains with bad descriptors.
    pub tx_bad_chain: AtomicU64,
    /// TX frames the TAP refused (a bad header) or had no room for.
    pub tx_tap_refused: AtomicU64,
    /// Frames read into RX buffers.
    pub rx_frames: AtomicU64,
    /// Their bytes (without headers).
    pub rx_bytes: AtomicU64,
    /// RX frames dropped: larger than the buffers offered (or shorter than a header).
    pub rx_too_small: AtomicU64,
    /// RX chains with bad descriptors.
    pub rx_bad_chain: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`Counters`].
    pub tx_frames: u64,
    /// See [`Counters`].
    pub tx_bytes: u64,
    /// See [`Counters`].
    pub tx_too_short: u64,
    /// See [`Counters`].
    pub tx_too_large: u64,
    /// See [`Counters`].
    pub tx_bad_chain: u64,
    /// See [`Counters`].
    pub tx_tap_refused: u64,
    /// See [`Counters`].
    pub rx_frames: u64,
    /// See [`Counters`].
    pub rx_bytes: u64,
    /// See [`Counters`].
    pub rx_too_small: u64,
    /// See [`Counters`].
    pub rx_bad_chain: u64,
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            tx_too_short: l(&self.tx_too_short),
            tx_too_large: l(&self.tx_too_large),
            tx_bad_chain: l(&self.tx_bad_chain),
            tx_tap_refused: l(&self.tx_tap_refused),
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            rx_too_small: l(&self.rx_too_small),
            rx_bad_chain: l(&self.rx_bad_chain),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The TAP failed in a way that means it has gone (deleted, detached, closed).
#[derive(Debug, thiserror::Error)]
#[error("{op} the TAP: {source}")]
pub struct TapGone {
    /// "reading" or "writing".
    pub op: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Why a descriptor chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A buffer outside guest memory.
    #[error("a buffer outside guest memory")]
    OutOfMemory,
    /// The chain loops or its `next` leaves the table.
    #[error("a looping or broken chain")]
    Broken,
    /// A buffer in the wrong direction.
    #[error("a buffer in the wrong direction")]
    WrongDirection,
    /// More segments than one system call takes.
    #[error("too many segments")]
    TooManySegments,
}

/// Guest buffers as iovecs, and the guards that keep the pointers valid.
#[derive(Debug, Default)]
struct IoVecs {
    iovs: Vec<libc::iovec>,
    guards: Vec<PtrGuardMut>,
    /// The chain's descriptors (address, length), for writes at an offset.
    descs: Vec<(GuestAddress, usize)>,
}

// SAFETY: the raw pointers are created, used and dropped within one call by the thread
// holding the worker's lock (every call clears them first); between calls they point at
// guest memory that stays mapped as long as the `GuestRam` they came from, and they are
// never dereferenced outside a call. Moving them between threads moves no live borrow.
unsafe impl Send for IoVecs {}

impl IoVecs {
    fn clear(&mut self) {
        self.iovs.clear();
        self.guards.clear();
        self.descs.clear();
    }

    fn truncate(&mut self, iovs: usize, descs: usize) {
        self.iovs.truncate(iovs);
        self.guards.truncate(iovs);
        self.descs.truncate(descs);
    }

    /// Appends `chain`'s buffers, which must all be `writable` (RX) or all readable (TX).
    /// Returns their total length; on error, leaves the vectors as they were.
    fn push_chain(
        &mut self,
        chain: DescriptorChain<&GuestRam>,
        mem: &GuestRam,
        writable: bool,
    ) -> Result<usize, ChainError> {
        let (iovs, descs) = (self.iovs.len(), self.descs.len());
        let result = self.push_chain_inner(chain, mem, writable);
        if result.is_err() {
            self.truncate(iovs, descs);
        }
        result
    }

    fn push_chain_inner(
        &mut self,
        chain: DescriptorChain<&GuestRam>,
        mem: &GuestRam,
        writable: bool,
    ) -> Result<usize, ChainError> {
        let mut total = 0usize;
        let mut ended = true;
        for desc in chain {
            if desc.is_write_only() != writable {
                return Err(ChainError::WrongDirection);
            }
            let len = desc.len() as usize;
            for slice in mem.get_slices(desc.addr(), len) {
                let slice = slice.map_err(|_| ChainError::OutOfMemory)?;
                if self.iovs.len() >= MAX_IOVS {
                    return Err(ChainError::TooManySegments);
                }
                let guard = slice.ptr_guard_mut();
                self.iovs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                self.guards.push(guard);
            }
            self.descs.push((desc.addr(), len));
            total = total.saturating_add(len);
            ended = !desc.has_next();
        }
        // The iterator stops silently after a queue's worth of descriptors or at a `next`
        // outside the table: a last descriptor still saying "next" means either.
        if !ended {
            return Err(ChainError::Broken);
        }
        Ok(total)
    }
}

/// Whether the descriptor table and both rings lie in guest memory: with them in memory,
/// walking the available ring always progresses, so no loop here spins on a bad ring.
fn rings_in_memory(queue: &Queue, mem: &GuestRam) -> bool {
    let size = u64::from(queue.size());
    let fits = |addr: u64, len: u64| mem.check_range(GuestAddress(addr), len as usize);
    fits(queue.desc_table(), DESC_SIZE * size)
        && fits(queue.avail_ring(), AVAIL_FIXED + AVAIL_ENTRY * size)
        && fits(queue.used_ring(), USED_FIXED + USED_ENTRY * size)
}

/// What a TX round asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRound {
    /// Signal the driver (used entries were added and it wants to know).
    pub interrupt: bool,
    /// More chains may be waiting: run another round.
    pub again: bool,
    /// (From [`TxWorker::serve_batch`] only.) The ring ran dry and notifications are still
    /// off: signal the driver if `interrupt`, then call [`TxWorker::rest`].
    pub idle: bool,
}

/// A TX queue's processor: each available chain is a header and a frame, written to the TAP.
#[derive(Debug)]
pub struct TxWorker {
    tap: Arc<OwnedFd>,
    counters: Arc<Counters>,
    iovs: IoVecs,
    poll: BusyPoll,
}

impl TxWorker {
    /// A worker writing to `tap`, counting into `counters`.
    pub fn new(tap: Arc<OwnedFd>, counters: Arc<Counters>) -> Self {
        TxWorker {
            tap,
            counters,
            iovs: IoVecs::default(),
            poll: BusyPoll::new(Duration::ZERO),
        }
    }

    /// Busy-polls a ring that ran dry for up to `max` before waiting for a kick (zero, the
    /// default: never).
    pub fn set_poll(&mut self, max: Duration) {
        self.poll = BusyPoll::new(max);
    }

    /// Sends what the driver has made available (at most a queue's worth), then polls for
    /// more and re-enables notifications (which re-reads the ring, so no kick is lost).
    pub fn serve_round(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<TxRound, TapGone> {
        let mut round = self.serve_batch(queue, mem)?;
        if round.idle {
            round.idle = false;
            round.again = self.rest(queue, mem);
        }
        Ok(round)
    }

    /// A ring that ran dry ([`TxRound::idle`]): polls for more (see `busy_poll.rs`), then
    /// turns kicks back on; true if the driver added more meanwhile (serve another round).
    pub fn rest(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let seen = queue.next_avail();
        self.poll.wait_for_avail(queue, mem, seen)
            || queue.enable_notification(mem).unwrap_or(false)
    }

    /// As [`serve_round`](Self::serve_round), but a ring that ran dry is left with
    /// notifications off and [`TxRound::idle`] set, so the caller can signal the driver
    /// before [`rest`](Self::rest) polls: completions are never held back by polling.
    pub fn serve_batch(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<TxRound, TapGone> {
        let mut round = TxRound {
            interrupt: false,
            again: false,
            idle: false,
        };
        if !queue.ready() || !rings_in_memory(queue, mem) {
            return Ok(round);
        }
        if queue.disable_notification(mem).is_err() {
            return Ok(round);
        }
        let mut completed = false;
        let mut result = Ok(());
        let mut empty = false;
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    // An available index further ahead than the queue is long: nothing
                    // can be served until the driver fixes it, and looking again at once
                    // would spin. Wait for the next kick.
                    debug_limited!("TX available ring unusable: {e}");
                    round.interrupt = completed && queue.needs_notification(mem).unwrap_or(true);
                    return result.map(|()| round);
                }
            };
            let Some(chain) = chain else {
                empty = true;
                break;
            };
            let head = chain.head_index();
            result = self.send(chain, mem);
            if queue.add_used(mem, head, 0).is_ok() {
                completed = true;
            }
            if result.is_err() {
                break;
            }
        }
        round.interrupt = completed && queue.needs_notification(mem).unwrap_or(true);
        result?;
        round.again = !empty;
        round.idle = empty;
        Ok(round)
    }

    /// Writes one chain's frame to the TAP (or counts why not).
    fn send(&mut self, chain: DescriptorChain<&GuestRam>, mem: &GuestRam) -> Result<(), TapGone> {
        self.iovs.clear();
        let head = chain.head_index();
        let total = match self.iovs.push_chain(chain, mem, false) {
            Ok(total) => total,
            Err(e) => {
                debug_limited!("TX chain {head}: {e}; returned unused");
                bump(&self.counters.tx_bad_chain, 1);
                return Ok(());
            }
        };
        if total < NET_HDR_SIZE {
            debug_limited!("TX chain {head}: {total} bytes, shorter than a header; dropped");
            bump(&self.counters.tx_too_short, 1);
            return Ok(());
        }
        if total - NET_HDR_SIZE > MAX_FRAME {
            debug_limited!(
                "TX chain {head}: a {}-byte frame; dropped",
                total - NET_HDR_SIZE
            );
            bump(&self.counters.tx_too_large, 1);
            return Ok(());
        }
        let result = loop {
            // SAFETY: the iovecs describe guest memory checked to be mapped (their guards
            // are held until `clear`), valid for reads for the call.
            match unsafe { crate::sys::writev(&*self.tap, &self.iovs.iovs) } {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.iovs.clear();
        match result {
            Ok(n) => {
                bump(&self.counters.tx_frames, 1);
                bump(
                    &self.counters.tx_bytes,
                    n.saturating_sub(NET_HDR_SIZE) as u64,
                );
                Ok(())
            }
            Err(source) if is_gone(&source) => Err(TapGone {
                op: "writing to",
                source,
            }),
            Err(e) => {
                debug_limited!("TX chain {head}: the TAP refused the frame: {e}");
                bump(&self.counters.tx_tap_refused, 1);
                Ok(())
            }
        }
    }
}

/// How an RX call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxEnd {
    /// The TAP has nothing more to read: wait for it to be readable.
    TapEmpty,
    /// The driver offered no (or not enough) buffers; notifications are on: wait for a kick
    /// and leave the TAP unread meanwhile.
    NoBuffers,
    /// The queue isn't ready (or its rings are unusable): wait for a kick.
    NotReady,
    /// A batch was read, or (when polling) the buffers ran out after some frames, to be
    /// signalled before polling for more: call again (after letting go of the queue's lock).
    Budget,
}

/// What an RX call asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRound {
    /// Signal the driver.
    pub interrupt: bool,
    /// Why it stopped.
    pub end: RxEnd,
}

#[derive(Clone, Copy, Debug)]
struct RxChain {
    head: u16,
    len: usize,
    first_desc: usize,
}

/// An RX queue's processor: frames read from the TAP straight into the driver's buffers.
#[derive(Debug)]
pub struct RxWorker {
    tap: Arc<OwnedFd>,
    counters: Arc<Counters>,
    mrg_rxbuf: bool,
    /// With MRG_RXBUF: the buffer space (header included) gathered before reading, i.e.
    /// the largest frame the TAP may hand us.
    need: usize,
    iovs: IoVecs,
    chains: Vec<RxChain>,
    /// Where the part of a frame that doesn't fit the buffers goes, so truncation shows.
    overflow: Vec<u8>,
    poll: BusyPoll,
}

enum Gathered {
    /// Buffers ready (at least one chain).
    Ready,
    /// Not enough buffers; `avail_idx` was the driver's index when we looked.
    Short { avail_idx: u16 },
}

impl RxWorker {
    /// A worker reading from `tap`, counting into `counters`; without MRG_RXBUF until
    /// [`set_features`](Self::set_features) says otherwise.
    pub fn new(tap: Arc<OwnedFd>, counters: Arc<Counters>) -> Self {
        RxWorker {
            tap,
            counters,
            mrg_rxbuf: false,
            need: NET_HDR_SIZE + MAX_FRAME,
            iovs: IoVecs::default(),
            chains: Vec::new(),
            overflow: vec![0; NET_HDR_SIZE + MAX_FRAME + 1],
            poll: BusyPoll::new(Duration::ZERO),
        }
    }

    /// Busy-polls for RX buffers for up to `max` when they run out, before waiting for a
    /// kick (zero, the default: never).
    pub fn set_poll(&mut self, max: Duration) {
        self.poll = BusyPoll::new(max);
    }

    /// Whether MRG_RXBUF was negotiated, and the largest frame (without header) the TAP
    /// may deliver: the MTU plus an Ethernet and VLAN header, or 64 KiB with guest GSO.
    pub fn set_features(&mut self, mrg_rxbuf: bool, max_frame: usize) {
        self.mrg_rxbuf = mrg_rxbuf;
        self.need = NET_HDR_SIZE + max_frame.min(MAX_FRAME);
    }

    /// Reads frames from the TAP into the queue's buffers until the TAP is empty, the
    /// buffers run out, or a batch is done.
    pub fn serve(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<RxRound, TapGone> {
        let mut completed = false;
        let result = self.serve_inner(queue, mem, &mut completed);
        let interrupt = completed && queue.needs_notification(mem).unwrap_or(true);
        self.iovs.clear();
        result.map(|end| RxRound { interrupt, end })
    }

    fn serve_inner(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        completed: &mut bool,
    ) -> Result<RxEnd, TapGone> {
        if !queue.ready() || !rings_in_memory(queue, mem) {
            return Ok(RxEnd::NotReady);
        }
        if queue.disable_notification(mem).is_err() {
            return Ok(RxEnd::NotReady);
        }
        for _ in 0..RX_BUDGET {
            match self.gather(queue, mem, completed) {
                Gathered::Ready => {}
                Gathered::Short { avail_idx } => {
                    if !self.poll.max().is_zero() {
                        if *completed {
                            // Let the caller signal these frames first: the driver
                            // refills buffers once it has seen them.
                            return Ok(RxEnd::Budget);
                        }
                        if self.poll.wait_for_avail(queue, mem, avail_idx) {
                            continue;
                        }
                    }
                    if self.wait_for_buffers(queue, mem, avail_idx) {
                        continue;
                    }
                    return Ok(RxEnd::NoBuffers);
                }
            }
            match self.read_frame(queue, mem)? {
                Some(()) => *completed = true,
                None => return Ok(RxEnd::TapEmpty),
            }
        }
        Ok(RxEnd::Budget)
    }

    /// Turns kicks back on for when the driver adds buffers. Returns true if it already
    /// has (since it showed `avail_idx`), so the caller should look again.
    fn wait_for_buffers(&mut self, queue: &mut Queue, mem: &GuestRam, avail_idx: u16) -> bool {
        if queue.enable_notification(mem).is_err() {
            return false;
        }
        if queue.event_idx_enabled() {
            // virtio-queue sets avail_event to our next index, but buffers we looked at
            // and put back may lie beyond it: ask for a kick on the driver's next addition.
            let at = GuestAddress(queue.used_ring() + 4 + USED_ENTRY * u64::from(queue.size()));
            if mem.write_obj(avail_idx, at).is_err() {
                return false;
            }
        }
        fence(Ordering::SeqCst);
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(now) => now.0 != avail_idx,
            Err(_) => false,
        }
    }

    /// Pops chains until there is room for a frame: one chain without MRG_RXBUF, enough
    /// for `need` bytes with it.
    fn gather(&mut self, queue: &mut Queue, mem: &GuestRam, completed: &mut bool) -> Gathered {
        self.iovs.clear();
        self.chains.clear();
        let mut capacity = 0usize;
        loop {
            let avail_idx = queue
                .avail_idx(mem, Ordering::Acquire)
                .map(|i| i.0)
                .unwrap_or(queue.next_avail());
            let Some(chain) = queue.iter(mem).ok().and_then(|mut it| it.next()) else {
                self.put_back(queue, self.chains.len());
                return Gathered::Short { avail_idx };
            };
            let head = chain.head_index();
            let (iovs, descs) = (self.iovs.iovs.len(), self.iovs.descs.len());
            let error = match self.iovs.push_chain(chain, mem, true) {
                Ok(len) if len >= NET_HDR_SIZE => {
                    self.chains.push(RxChain {
                        head,
                        len,
                        first_desc: descs,
                    });
                    capacity += len;
                    None
                }
                Ok(_) => {
                    self.iovs.truncate(iovs, descs);
                    Some("shorter than a header".to_string())
                }
                Err(ChainError::TooManySegments) if !self.chains.is_empty() => {
                    // Fine on its own: read with what we have, keep this one for later.
                    self.put_back(queue, 1);
                    return Gathered::Ready;
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = error {
                if self.chains.is_empty() {
                    debug_limited!("RX chain {head}: {error}; returned unused");
                    bump(&self.counters.rx_bad_chain, 1);
                    if queue.add_used(mem, head, 0).is_ok() {
                        *completed = true;
                    }
                    continue;
                }
                // Returned once it is first in line, so put-backs never skip it.
                self.put_back(queue, 1);
                return if capacity >= self.need || !self.mrg_rxbuf {
                    Gathered::Ready
                } else {
                    self.put_back(queue, self.chains.len());
                    Gathered::Short { avail_idx }
                };
            }
            if !self.mrg_rxbuf || capacity >= self.need {
                return Gathered::Ready;
            }
        }
    }

    /// Puts the last `n` popped chains back on the available ring.
    fn put_back(&mut self, queue: &mut Queue, n: usize) {
        if n > 0 {
            queue.set_next_avail(queue.next_avail().wrapping_sub(n as u16));
        }
    }

    /// Reads one frame into the gathered chains. `None` when the TAP is empty.
    fn read_frame(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<Option<()>, TapGone> {
        let capacity: usize = self.chains.iter().map(|c| c.len).sum();
        self.iovs.iovs.push(libc::iovec {
            iov_base: self.overflow.as_mut_ptr().cast(),
            iov_len: self.overflow.len(),
        });
        let result = loop {
            // SAFETY: the iovecs describe guest memory checked to be mapped (guards held
            // until `clear`) and `overflow`, which we own; all valid for writes for the call.
            match unsafe { crate::sys::readv(&*self.tap, &self.iovs.iovs) } {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let n = match result {
            Ok(0) => {
                self.put_back(queue, self.chains.len());
                return Err(TapGone {
                    op: "reading from",
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "end of file"),
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.put_back(queue, self.chains.len());
                return Ok(None);
            }
            Err(source) => {
                // Anything but "nothing to read" would repeat at once: treat it as fatal
                // rather than spin on a readable descriptor that can't be read.
                self.put_back(queue, self.chains.len());
                return Err(TapGone {
                    op: "reading from",
                    source,
                });
            }
        };
        if n > capacity || n < NET_HDR_SIZE {
            debug_limited!("RX: a {n}-byte frame for {capacity} bytes of buffers; dropped");
            bump(&self.counters.rx_too_small, 1);
            self.put_back(queue, self.chains.len());
            return Ok(Some(()));
        }
        let mut remaining = n;
        let mut used = 0;
        for chain in &self.chains {
            if remaining == 0 {
                break;
            }
            remaining -= chain.len.min(remaining);
            used += 1;
        }
        self.put_back(queue, self.chains.len() - used);
        self.write_num_buffers(mem, used as u16);
        let mut remaining = n;
        for chain in &self.chains[..used] {
            let len = chain.len.min(remaining);
            remaining -= len;
            if let Err(e) = queue.add_used(mem, chain.head, len as u32) {
                debug_limited!("RX: completing descriptor {}: {e}", chain.head);
            }
        }
        bump(&self.counters.rx_frames, 1);
        bump(&self.counters.rx_bytes, (n - NET_HDR_SIZE) as u64);
        Ok(Some(()))
    }

    /// Sets the header's `num_buffers` (the TAP leaves those two bytes alone).
    fn write_num_buffers(&self, mem: &GuestRam, count: u16) {
        let Some(first) = self.chains.first() else {
            return;
        };
        let bytes = count.to_le_bytes();
        let mut offset = NUM_BUFFERS_OFFSET;
        let mut i = 0;
        for &(addr, len) in &self.iovs.descs[first.first_desc..] {
            while i < bytes.len() && offset < len {
                let _ = mem.write_obj(bytes[i], GuestAddress(addr.0 + offset as u64));
                i += 1;
                offset += 1;
            }
            if i == bytes.len() {
                return;
            }
            offset -= len;
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
