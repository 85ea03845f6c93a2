//! Guest buffers as `iovec`s, so `preadv`/`pwritev` move data straight between the image
//! and guest memory with no copy in this process.
//!
//! Also the bounce buffer `--direct` falls back to when a guest buffer is not aligned the
//! way `O_DIRECT` needs.

use std::alloc::{self, Layout};

use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestMemoryBackend, GuestMemoryError};

use super::request::Segment;
use super::GuestRam;

/// The iovecs for one request, and the pointer guards that keep them valid.
///
/// Kept by a queue worker and reused, so a request costs no allocation once the vectors
/// have grown to their working size.
#[derive(Debug, Default)]
pub struct IoVecs {
    iovs: Vec<libc::iovec>,
    guards: Vec<PtrGuardMut>,
}

// SAFETY: the raw pointers inside are created, used and dropped within one request by the
// thread that holds the queue worker's lock (the executor clears them when the request's
// I/O is done); between requests the vectors are empty. Moving them between threads moves
// no live pointer.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Describes the guest memory of `segs` (a request's data, already checked to be in
    /// guest memory). A segment that spans guest memory regions becomes several iovecs.
    pub fn fill(&mut self, mem: &GuestRam, segs: &[Segment]) -> Result<(), GuestMemoryError> {
        self.clear();
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                let slice = slice?;
                // With vm-memory's `xen` feature off (it is) the guard owns no mapping and
                // the pointer is the region's own; we keep the guard anyway, until the I/O
                // is done, as its API asks.
                let guard = slice.ptr_guard_mut();
                self.iovs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                self.guards.push(guard);
            }
        }
        Ok(())
    }

    /// The iovecs, for `preadv`/`pwritev` (which advance them as they go).
    pub fn as_mut_slice(&mut self) -> &mut [libc::iovec] {
        &mut self.iovs
    }

    /// Whether every iovec starts at a multiple of `memory` and is a multiple of `length`
    /// long: what `O_DIRECT` needs to use the buffers as they are.
    pub fn aligned(&self, memory: usize, length: u64) -> bool {
        self.iovs
            .iter()
            .all(|iov| (iov.iov_base as usize) % memory == 0 && (iov.iov_len as u64) % length == 0)
    }

    /// Forgets the buffers (call once the I/O is done).
    pub fn clear(&mut self) {
        self.iovs.clear();
        self.guards.clear();
    }
}

/// A page-aligned buffer for `O_DIRECT` I/O on behalf of unaligned guest buffers.
#[derive(Debug)]
pub struct BounceBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory, like a `Box<[u8]>`.
unsafe impl Send for BounceBuffer {}

impl BounceBuffer {
    /// Size of the bounce buffer: requests larger than this go through it in pieces.
    pub const SIZE: usize = 1 << 20;
    const ALIGN: usize = 4096;

    /// Allocates the buffer (zeroed). `None` if the allocation fails.
    pub fn new() -> Option<Self> {
        let layout = Layout::from_size_align(Self::SIZE, Self::ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        std::ptr::NonNull::new(ptr).map(|ptr| BounceBuffer { ptr, layout })
    }

    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points at `layout.size()` initialised (zeroed) bytes that we own
        // uniquely; the borrow of `self` keeps them alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout and not freed before.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn segment_across_regions_becomes_two_iovecs() {
        let mem =
            GuestRam::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)])
                .unwrap();
        let mut iovs = IoVecs::default();
        iovs.fill(
            &mem,
            &[Segment {
                addr: GuestAddress(0xf000),
                len: 0x2000,
            }],
        )
        .unwrap();
        let v = iovs.as_mut_slice();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].iov_len, 0x1000);
        assert_eq!(v[1].iov_len, 0x1000);
        assert!(iovs.aligned(4096, 4096));
        iovs.clear();
        assert!(iovs.as_mut_slice().is_empty());
    }

    #[test]
    fn outside_memory_fails() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut iovs = IoVecs::default();
        assert!(iovs
            .fill(
                &mem,
                &[Segment {
                    addr: GuestAddress(0xff00),
                    len: 0x200,
                }],
            )
            .is_err());
    }

    #[test]
    fn bounce_buffer_is_aligned() {
        let mut b = BounceBuffer::new().unwrap();
        let s = b.as_mut_slice();
        assert_eq!(s.len(), BounceBuffer::SIZE);
        assert_eq!(s.as_ptr() as usize % 4096, 0);
    }
}
