//! Port 0's two queues, free of vhost-user: [`Transmitter`] drains the transmitq into an
//! [`Output`], [`Receiver`] fills receiveq buffers from a reader. Both trust nothing in a
//! descriptor chain: a chain is checked whole (direction, every buffer inside guest memory,
//! no truncation by a loop or a bad `next`) before a byte moves, and a bad one is returned
//! with used length 0 and counted. Bytes are copied through a fixed scratch buffer, so no
//! allocation depends on a length the guest claims. Tests drive both with
//! `virtio_queue::mock` queues.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use bulkhead_ratelimit::{debug_limited, warn_limited};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::GuestRam;

/// Bytes copied per step between guest memory and the stream.
const SCRATCH: usize = 4096;

/// Where guest output goes. The stream behind it decides what to do with bytes it can't
/// deliver (drop and count them); the queue's job ends once it has handed them over.
pub trait Output {
    /// Delivers `bytes`, in order after everything delivered before.
    fn output(&mut self, bytes: &[u8]);
}

impl Output for Vec<u8> {
    fn output(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counters of what the guest got wrong (for logs and tests).
#[derive(Debug, Default)]
pub struct Counters {
    /// Transmit chains refused: a device-writable buffer, a buffer outside guest memory, a
    /// chain cut short (loop, `next` out of range, unreadable descriptor).
    pub bad_tx_chains: AtomicU64,
    /// Receive chains refused: a device-readable buffer, a buffer outside guest memory, a
    /// chain cut short, or no room at all.
    pub bad_rx_chains: AtomicU64,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    Direction,
    OutOfMemory,
    Truncated,
    Empty,
}

/// Walks a chain and collects its buffers, checking each. `want_writable` is the direction
/// every buffer must have. `segs` is reused scratch, at most one entry per descriptor (the
/// chain iterator stops after a queue's worth, so this is bounded by the queue size).
fn collect(
    chain: DescriptorChain<&GuestRam>,
    mem: &GuestRam,
    want_writable: bool,
    segs: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, Bad> {
    segs.clear();
    let mut total = 0usize;
    let mut last_has_next = true;
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.is_write_only() != want_writable {
            return Err(Bad::Direction);
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len) {
            return Err(Bad::OutOfMemory);
        }
        if len > 0 {
            segs.push((desc.addr(), len));
            total = total.saturating_add(len);
        }
    }
    if last_has_next {
        // Either no descriptor could be read, or the last one read points on to one that
        // can't be (a loop exhausted the queue-size budget, or `next` is out of range).
        return Err(Bad::Truncated);
    }
    if total == 0 {
        return Err(Bad::Empty);
    }
    Ok(total)
}

/// What a transmit round asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRound {
    /// Signal the driver (chains were completed and it wants to know).
    pub interrupt: bool,
    /// More chains may be waiting: run another round (after releasing locks a moment).
    pub again: bool,
}

/// The transmitq (guest to host).
#[derive(Debug)]
pub struct Transmitter {
    scratch: Box<[u8; SCRATCH]>,
    segs: Vec<(GuestAddress, usize)>,
    logged: bool,
}

impl Default for Transmitter {
    fn default() -> Self {
        Transmitter {
            scratch: Box::new([0u8; SCRATCH]),
            segs: Vec::new(),
            logged: false,
        }
    }
}

impl Transmitter {
    /// Sends every available chain's bytes to `out` in order (at most a queue's worth per
    /// round) and completes each with used length 0 (the device writes nothing into them).
    pub fn round(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        out: &mut dyn Output,
        counters: &Counters,
    ) -> TxRound {
        let done = TxRound {
            interrupt: false,
            again: false,
        };
        if !queue.ready() {
            return done;
        }
        if queue.disable_notification(mem).is_err() {
            return done;
        }
        let mut completed = false;
        let mut maybe_more = true;
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    self.warn(format_args!("transmitq unusable: {e}"));
                    return done;
                }
            };
            let Some(chain) = chain else {
                maybe_more = false;
                break;
            };
            let head = chain.head_index();
            match collect(chain, mem, false, &mut self.segs) {
                Ok(_) => self.send(mem, out),
                Err(bad) => {
                    counters.bad_tx_chains.fetch_add(1, Ordering::Relaxed);
                    self.warn(format_args!("transmit chain {head} refused: {bad:?}"));
                }
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => completed = true,
                Err(e) => self.warn(format_args!("completing transmit chain {head}: {e}")),
            }
        }
        let interrupt = completed && queue.needs_notification(mem).unwrap_or(true);
        let again = maybe_more || queue.enable_notification(mem).unwrap_or(false);
        TxRound { interrupt, again }
    }

    fn send(&mut self, mem: &GuestRam, out: &mut dyn Output) {
        for &(addr, len) in &self.segs {
            let mut done = 0usize;
            while done < len {
                let n = (len - done).min(SCRATCH);
                // In range: `collect` checked the whole buffer.
                let at = GuestAddress(addr.0.wrapping_add(done as u64));
                if mem.read_slice(&mut self.scratch[..n], at).is_err() {
                    return;
                }
                out.output(&self.scratch[..n]);
                done += n;
            }
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if std::mem::replace(&mut self.logged, true) {
            debug_limited!("{message}");
        } else {
            warn_limited!("{message} (further guest errors on this queue go to the debug log)");
        }
    }
}

/// How a receive attempt ended.
#[derive(Debug)]
pub enum RxEnd {
    /// This many bytes were read from the stream into one buffer.
    Delivered(usize),
    /// The guest has no receive buffer: stop reading the stream until it adds one (driver
    /// notifications are on, so its next buffer brings a kick).
    NoBuffers,
    /// The stream reached end of file; nothing was taken from the queue.
    Eof,
    /// Reading the stream failed; nothing was taken from the queue.
    Error(io::Error),
    /// A queue's worth of bad buffers was skipped and nothing read: call again (bounded
    /// work per call, so a hostile guest can't keep the vring lock).
    Skipped,
    /// The queue is not set up or its rings can't be read.
    Unusable,
}

/// What a receive attempt asks of its caller.
#[derive(Debug)]
pub struct RxRound {
    /// Signal the driver.
    pub interrupt: bool,
    /// How it ended.
    pub end: RxEnd,
}

/// The receiveq (host to guest).
#[derive(Debug)]
pub struct Receiver {
    scratch: Box<[u8; SCRATCH]>,
    segs: Vec<(GuestAddress, usize)>,
    logged: bool,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            scratch: Box::new([0u8; SCRATCH]),
            segs: Vec::new(),
            logged: false,
        }
    }
}

impl Receiver {
    /// Takes the next good receive buffer, does ONE read from `input` into it (call it when
    /// the stream is readable, so the read doesn't block) and completes it with the bytes
    /// read. Bad buffers on the way are completed with length 0. When the read yields
    /// nothing (end of file, error) the buffer goes back to the queue untouched.
    pub fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        input: &mut dyn Read,
        counters: &Counters,
    ) -> RxRound {
        let mut completed = false;
        let end = self.receive_inner(queue, mem, input, counters, &mut completed);
        let interrupt = completed && queue.needs_notification(mem).unwrap_or(true);
        RxRound { interrupt, end }
    }

    fn receive_inner(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        input: &mut dyn Read,
        counters: &Counters,
        completed: &mut bool,
    ) -> RxEnd {
        if !queue.ready() {
            return RxEnd::Unusable;
        }
        // Bounded: each pass consumes an available entry or ends.
        for _ in 0..=queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    self.warn(format_args!("receiveq unusable: {e}"));
                    return RxEnd::Unusable;
                }
            };
            let Some(chain) = chain else {
                // Out of buffers: ask for a kick when the next one comes. If one arrived
                // meanwhile, go round again.
                match queue.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => return RxEnd::NoBuffers,
                    Err(_) => return RxEnd::Unusable,
                }
            };
            let head = chain.head_index();
            let room = match collect(chain, mem, true, &mut self.segs) {
                Ok(room) => room,
                Err(bad) => {
                    counters.bad_rx_chains.fetch_add(1, Ordering::Relaxed);
                    self.warn(format_args!("receive chain {head} refused: {bad:?}"));
                    self.complete(queue, mem, head, 0, completed);
                    continue;
                }
            };
            let want = room.min(SCRATCH);
            let n = loop {
                match input.read(&mut self.scratch[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match n {
                Ok(0) => {
                    queue.go_to_previous_position();
                    return RxEnd::Eof;
                }
                Ok(n) => n,
                Err(e) => {
                    queue.go_to_previous_position();
                    return RxEnd::Error(e);
                }
            };
            self.copy_in(mem, n);
            self.complete(queue, mem, head, n as u32, completed);
            return RxEnd::Delivered(n);
        }
        RxEnd::Skipped
    }

    fn copy_in(&self, mem: &GuestRam, n: usize) {
        let mut from = 0usize;
        for &(addr, len) in &self.segs {
            if from >= n {
                break;
            }
            let k = len.min(n - from);
            // In range: `collect` checked every buffer.
            let _ = mem.write_slice(&self.scratch[from..from + k], addr);
            from += k;
        }
    }

    fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &GuestRam,
        head: u16,
        len: u32,
        done: &mut bool,
    ) {
        match queue.add_used(mem, head, len) {
            Ok(()) => *done = true,
            Err(e) => self.warn(format_args!("completing receive chain {head}: {e}")),
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if std::mem::replace(&mut self.logged, true) {
            debug_limited!("{message}");
        } else {
            warn_limited!("{message} (further guest errors on this queue go to the debug log)");
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
