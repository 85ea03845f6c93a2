//! Fixed-size buffers on a virtqueue, as virtio-net and virtio-console use them: an
//! [`RxRing`] keeps every one of its buffers posted (device-writable) and hands back
//! filled ones; a [`TxRing`] copies each outgoing message into a free buffer of its own and
//! posts it as a one-descriptor, device-readable chain, reclaiming buffers as the device
//! returns them. Buffers are `count` x `buf_len` bytes from one base address. Neither
//! publishes on its own: `publish` makes one batch visible (one index store) and says
//! whether to notify.

use super::queue::{AddError, Buf, Queue, UsedError};
use core::fmt;

/// The device broke a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The used ring itself.
    Used(UsedError),
    /// A used entry for a chain that is not ours (cannot happen with a sane queue).
    Unknown(u16),
    /// The device claims to have written more than the buffer holds.
    TooLong {
        /// Bytes claimed.
        len: u32,
        /// Buffer size.
        buf_len: u32,
    },
    /// Adding a buffer failed (queue full: cannot happen while counts match).
    Add(AddError),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Used(e) => e.fmt(f),
            Self::Unknown(h) => write!(f, "used entry for unknown chain {h}"),
            Self::TooLong { len, buf_len } => {
                write!(f, "device wrote {len} bytes into a {buf_len}-byte buffer")
            }
            Self::Add(e) => e.fmt(f),
        }
    }
}

impl From<UsedError> for RingError {
    fn from(e: UsedError) -> Self {
        Self::Used(e)
    }
}

const NONE: u16 = u16::MAX;

/// Buffers the device writes into.
pub struct RxRing {
    /// The queue.
    pub queue: Queue,
    base: u64,
    buf_len: u32,
    count: u16,
    /// Buffer index per chain head ([`NONE`]: not posted).
    owner: [u16; super::queue::MAX_SIZE as usize],
}

/// A filled receive buffer, until [`RxRing::repost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Buffer index.
    pub index: u16,
    /// Bytes the device wrote.
    pub len: u32,
}

impl RxRing {
    /// `count` buffers of `buf_len` bytes at `base` on `queue` (at most its size).
    ///
    /// # Safety
    /// `base..base + count * buf_len` must be valid, writable memory used only by this ring
    /// and its device while the queue is live.
    pub unsafe fn new(queue: Queue, base: u64, buf_len: u32, count: u16) -> Self {
        Self {
            count: count.min(queue.size()),
            queue,
            base,
            buf_len,
            owner: [NONE; super::queue::MAX_SIZE as usize],
        }
    }

    /// Buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Size of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Post buffer `index` (unpublished).
    pub fn repost(&mut self, index: u16) -> Result<(), RingError> {
        let addr = self.base + u64::from(index) * u64::from(self.buf_len);
        let head = self
            .queue
            .add(&[Buf::writable(addr, self.buf_len)])
            .map_err(RingError::Add)?;
        self.owner[usize::from(head)] = index;
        Ok(())
    }

    /// Post every buffer (unpublished).
    pub fn post_all(&mut self) -> Result<(), RingError> {
        (0..self.count).try_for_each(|i| self.repost(i))
    }

    /// Make posted buffers visible; whether to notify.
    pub fn publish(&mut self) -> bool {
        self.queue.publish()
    }

    /// The next filled buffer, if any. It stays the caller's until [`repost`](Self::repost).
    pub fn pop(&mut self) -> Result<Option<Filled>, RingError> {
        let Some(used) = self.queue.pop_used()? else {
            return Ok(None);
        };
        let index = core::mem::replace(&mut self.owner[usize::from(used.head)], NONE);
        if index == NONE {
            return Err(RingError::Unknown(used.head));
        }
        if used.len > self.buf_len {
            // Keep the buffer in use, but never read past its end.
            self.repost(index)?;
            return Err(RingError::TooLong {
                len: used.len,
                buf_len: self.buf_len,
            });
        }
        Ok(Some(Filled {
            index,
            len: used.len,
        }))
    }

    /// The bytes of a filled buffer.
    pub fn data(&self, filled: &Filled) -> &[u8] {
        let addr = self.base + u64::from(filled.index) * u64::from(self.buf_len);
        // SAFETY: the buffer is inside the ring's memory (`new`), popped and not reposted,
        // so the device no longer writes it; `len <= buf_len` (checked in `pop`).
        unsafe { core::slice::from_raw_parts(addr as *const u8, filled.len as usize) }
    }
}

/// Buffers the device reads.
pub struct TxRing {
    /// The queue.
    pub queue: Queue,
    base: u64,
    buf_len: u32,
    /// Free buffer indexes (a stack).
    free: [u16; super::queue::MAX_SIZE as usize],
    num_free: u16,
    owner: [u16; super::queue::MAX_SIZE as usize],
}

impl TxRing {
    /// `count` buffers of `buf_len` bytes at `base` on `queue` (at most its size).
    ///
    /// # Safety
    /// As [`RxRing::new`].
    pub unsafe fn new(queue: Queue, base: u64, buf_len: u32, count: u16) -> Self {
        let count = count.min(queue.size());
        let mut free = [0u16; super::queue::MAX_SIZE as usize];
        for (i, f) in free.iter_mut().enumerate().take(usize::from(count)) {
            *f = count - 1 - i as u16;
        }
        Self {
            queue,
            base,
            buf_len,
            free,
            num_free: count,
            owner: [NONE; super::queue::MAX_SIZE as usize],
        }
    }

    /// Size of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Free buffers.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Take back every buffer the device is done with; returns how many.
    pub fn reclaim(&mut self) -> Result<usize, RingError> {
        let mut n = 0;
        while let Some(used) = self.queue.pop_used()? {
            let index = core::mem::replace(&mut self.owner[usize::from(used.head)], NONE);
            if index == NONE {
                return Err(RingError::Unknown(used.head));
            }
            self.free[usize::from(self.num_free)] = index;
            self.num_free += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Fill a free buffer with `fill` (given the whole buffer, returns the bytes used) and
    /// add it (unpublished). `Ok(false)`: no free buffer (reclaim, or wait).
    pub fn send(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<bool, RingError> {
        if self.num_free == 0 {
            return Ok(false);
        }
        let index = self.free[usize::from(self.num_free - 1)];
        let addr = self.base + u64::from(index) * u64::from(self.buf_len);
        // SAFETY: a free buffer inside the ring's memory (`new`): the device does not read
        // it, and nothing else refers to it.
        let buf =
            unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, self.buf_len as usize) };
        let len = fill(buf).min(self.buf_len as usize) as u32;
        let head = self
            .queue
            .add(&[Buf::readable(addr, len)])
            .map_err(RingError::Add)?;
        self.num_free -= 1;
        self.owner[usize::from(head)] = index;
        Ok(true)
    }

    /// Make added buffers visible; whether to notify.
    pub fn publish(&mut self) -> bool {
        self.queue.publish()
    }
}
