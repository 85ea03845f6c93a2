//! Turning a descriptor chain into a virtio-blk request, trusting nothing in it.
//!
//! virtio 1.x lets a driver lay a request out over descriptors as it likes (section 2.6.4,
//! "message framing"), so a chain is read as two byte streams: the device-readable
//! descriptors, which come first and hold the 16-byte header followed by any data the
//! device reads, and the device-writable descriptors after them, which hold any data the
//! device writes followed by the one status byte, the last writable byte of the chain.
//! Linux puts the header, each data segment and the status in descriptors of their own;
//! a header split over two descriptors or a status byte at the end of the data buffer
//! works the same way.
//!
//! What can go wrong, and what the guest is told ([`Rejected`] carries the status byte's
//! address when the chain has one; without one the request is completed with nothing
//! written):
//! - the chain does not end: virtio-queue stops walking after as many descriptors as the
//!   table holds, so a loop looks like a chain that runs out with its last descriptor still
//!   pointing on. When a descriptor repeats within the first [`MAX_DESCRIPTORS`], the loop
//!   is closed there and the chain up to it is used to find the status byte; otherwise
//!   (a `next` index past the table, an unreadable or nested indirect table) there is none;
//! - more than [`MAX_DESCRIPTORS`] descriptors; a readable descriptor after a writable one;
//!   a buffer outside guest memory; no writable byte (so no status); fewer than 16 readable
//!   bytes (no header, e.g. a header in a write-only descriptor).
//!
//! Nothing here allocates per request: the walk and segment lists live in a [`ChainParser`]
//! that a queue's worker keeps and reuses, and guest-claimed lengths are only ever compared
//! and summed, never used to size a buffer.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::virtio::{RequestHeader, HEADER_SIZE, MAX_DESCRIPTORS};
use super::GuestRam;

/// A run of guest memory that is part of a request's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero in a parsed request).
    pub len: u32,
}

/// A chain that parsed: header decoded, data located, status byte found.
#[derive(Debug)]
pub struct Request<'a> {
    /// The decoded header.
    pub header: RequestHeader,
    /// Device-readable bytes after the header (OUT data, DISCARD/WRITE_ZEROES segments).
    pub readable: &'a [Segment],
    /// Total length of `readable`.
    pub readable_len: u64,
    /// Device-writable bytes before the status byte (IN data, the GET_ID buffer).
    pub writable: &'a [Segment],
    /// Total length of `writable`.
    pub writable_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// What is wrong with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head descriptor (or its indirect table) could not be read at all.
    #[error("no readable descriptor in the chain")]
    Empty,
    /// The chain runs on past the table: a loop, or a `next` index out of range.
    #[error("the chain does not end (a descriptor loop or a next index out of range)")]
    Unterminated,
    /// More descriptors than a request may use.
    #[error("the chain has {0} descriptors, more than {max}", max = MAX_DESCRIPTORS)]
    TooLong(usize),
    /// A device-readable descriptor after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// No device-writable byte for the status.
    #[error("no device-writable byte for the status")]
    NoStatus,
    /// A buffer (or the status byte) outside guest memory.
    #[error("a buffer at {addr:#x} ({len} bytes) is outside guest memory")]
    OutsideMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Fewer device-readable bytes than a header.
    #[error("{0} device-readable bytes, fewer than the {size}-byte header", size = HEADER_SIZE)]
    HeaderTooShort(u64),
}

/// A chain that can't be served, and where (if anywhere) to say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The status byte, when the chain has a usable one.
    pub status: Option<GuestAddress>,
    /// Why.
    pub error: ChainError,
}

/// One descriptor as walked (the split descriptor type has no `PartialEq`, which loop
/// detection needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    writable: bool,
    has_next: bool,
    next: u16,
}

/// What walking a chain found.
struct Walk {
    count: usize,
    terminated: bool,
    last_writable: Option<Desc>,
}

/// Reusable scratch space for parsing chains; one per queue worker.
#[derive(Debug)]
pub struct ChainParser {
    walked: Vec<Desc>,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl Default for ChainParser {
    fn default() -> Self {
        ChainParser {
            walked: Vec::with_capacity(MAX_DESCRIPTORS),
            readable: Vec::with_capacity(MAX_DESCRIPTORS),
            writable: Vec::with_capacity(MAX_DESCRIPTORS),
        }
    }
}

impl ChainParser {
    /// Parses one chain: a `DescriptorChain` popped from the available ring, or a
    /// [`super::resubmit::HeadChain`] walked from a head the inflight region names.
    pub fn parse<'s>(
        &'s mut self,
        chain: impl IntoIterator<Item = Descriptor>,
        mem: &GuestRam,
    ) -> Result<Request<'s>, Rejected> {
        let Walk {
            count,
            terminated,
            last_writable,
        } = self.walk(chain);
        if count == 0 {
            return Err(Rejected {
                status: None,
                error: ChainError::Empty,
            });
        }
        if !terminated {
            // Close a loop where a descriptor repeats; without a repeat there is no end.
            match first_repeat(&self.walked) {
                Some(end) => self.walked.truncate(end),
                None => {
                    return Err(Rejected {
                        status: None,
                        error: ChainError::Unterminated,
                    })
                }
            }
        }
        let status = self.split_streams(mem);
        let reject = |error| Err(Rejected { status, error });
        if !terminated {
            return reject(ChainError::Unterminated);
        }
        if count > MAX_DESCRIPTORS {
            // The kept prefix may not reach the status byte: use the one seen on the walk.
            let status = last_writable
                .and_then(|d| GuestAddress(d.addr).checked_add(u64::from(d.len) - 1))
                .filter(|a| mem.address_in_range(*a));
            return Err(Rejected {
                status,
                error: ChainError::TooLong(count),
            });
        }
        if self
            .walked
            .iter()
            .skip_while(|d| !d.writable)
            .any(|d| !d.writable)
        {
            return reject(ChainError::ReadableAfterWritable);
        }
        let Some(status_addr) = status else {
            return Err(Rejected {
                status: None,
                error: ChainError::NoStatus,
            });
        };
        for seg in self.readable.iter().chain(self.writable.iter()) {
            if !mem.check_range(seg.addr, seg.len as usize) {
                return reject(ChainError::OutsideMemory {
                    addr: seg.addr.raw_value(),
                    len: u64::from(seg.len),
                });
            }
        }
        let readable_len: u64 = self.readable.iter().map(|s| u64::from(s.len)).sum();
        if readable_len < HEADER_SIZE as u64 {
            return reject(ChainError::HeaderTooShort(readable_len));
        }
        let mut header = [0u8; HEADER_SIZE];
        if copy_from_guest(mem, &self.readable, 0, &mut header).is_err() {
            // The segments were checked above; memory can't have shrunk since.
            return reject(ChainError::OutsideMemory {
                addr: self.readable[0].addr.raw_value(),
                len: HEADER_SIZE as u64,
            });
        }
        skip_front(&mut self.readable, HEADER_SIZE as u64);
        let writable_len = self.writable.iter().map(|s| u64::from(s.len)).sum();
        Ok(Request {
            header: RequestHeader::from_bytes(&header),
            readable: &self.readable,
            readable_len: readable_len - HEADER_SIZE as u64,
            writable: &self.writable,
            writable_len,
            status: status_addr,
        })
    }

    /// Walks the chain to its end (virtio-queue bounds the walk by the table size), keeping
    /// the first `MAX_DESCRIPTORS`. Returns how many descriptors there were, whether the
    /// last one ends the chain, and the last non-empty writable one (the status byte's
    /// home, needed when the chain is too long to keep whole).
    fn walk(&mut self, chain: impl IntoIterator<Item = Descriptor>) -> Walk {
        self.walked.clear();
        let mut count = 0;
        let mut last_has_next = false;
        let mut last_writable = None;
        for d in chain {
            let desc = Desc {
                addr: d.addr().raw_value(),
                len: d.len(),
                writable: d.is_write_only(),
                has_next: d.has_next(),
                next: d.next(),
            };
            if self.walked.len() < MAX_DESCRIPTORS {
                self.walked.push(desc);
            }
            if desc.writable && desc.len > 0 {
                last_writable = Some(desc);
            }
            count += 1;
            last_has_next = desc.has_next;
        }
        Walk {
            count,
            terminated: count > 0 && !last_has_next,
            last_writable,
        }
    }

    /// Splits the walked descriptors into readable and writable segments (zero-length ones
    /// dropped) and takes the status byte off the end of the writable stream. Returns the
    /// status byte's address if there is a writable byte and it is in guest memory.
    fn split_streams(&mut self, mem: &GuestRam) -> Option<GuestAddress> {
        self.readable.clear();
        self.writable.clear();
        for d in self.walked.iter().filter(|d| d.len > 0) {
            let seg = Segment {
                addr: GuestAddress(d.addr),
                len: d.len,
            };
            if d.writable {
                self.writable.push(seg);
            } else {
                self.readable.push(seg);
            }
        }
        let last = self.writable.last_mut()?;
        let status = last.addr.checked_add(u64::from(last.len) - 1);
        last.len -= 1;
        if last.len == 0 {
            self.writable.pop();
        }
        status.filter(|a| mem.address_in_range(*a))
    }
}

/// Index of the first descriptor that repeats an earlier one: where a loop closes.
fn first_repeat(walked: &[Desc]) -> Option<usize> {
    (1..walked.len()).find(|&k| walked[..k].contains(&walked[k]))
}

/// Drops the first `n` bytes of a segment list.
fn skip_front(segs: &mut Vec<Segment>, mut n: u64) {
    let mut whole = 0;
    for seg in segs.iter_mut() {
        if n == 0 {
            break;
        }
        if u64::from(seg.len) <= n {
            n -= u64::from(seg.len);
            whole += 1;
        } else {
            // n < seg.len here, so it fits in u32, and the address stays inside the segment.
            seg.addr = seg.addr.unchecked_add(n);
            seg.len -= n as u32;
            n = 0;
        }
    }
    segs.drain(..whole);
}

/// Calls `f(guest_address, range_in_buf)` for each piece of the byte range
/// `[offset, offset + len)` of a segment list. Stops at the end of the list.
fn for_each_piece<E>(
    segs: &[Segment],
    offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut skip = offset;
    let mut done = 0usize;
    for seg in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        // skip < seg_len <= u32::MAX, so both fit in usize.
        let take = ((seg_len - skip) as usize).min(len - done);
        f(seg.addr.unchecked_add(skip), done..done + take)?;
        done += take;
        skip = 0;
    }
    Ok(done)
}

/// Copies bytes `[offset, offset + buf.len())` of a segment list out of guest memory.
/// Fails if the list is shorter or memory is out of range.
pub fn copy_from_guest(
    mem: &GuestRam,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let len = buf.len();
    let done = for_each_piece(segs, offset, len, |addr, range| {
        mem.read_slice(&mut buf[range], addr)
    })?;
    if done == len {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: len,
            completed: done,
        })
    }
}

/// Copies `buf` into bytes `[offset, offset + buf.len())` of a segment list in guest memory.
pub fn copy_to_guest(
    mem: &GuestRam,
    segs: &[Segment],
    offset: u64,
    buf: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let len = buf.len();
    let done = for_each_piece(segs, offset, len, |addr, range| {
        mem.write_slice(&buf[range], addr)
    })?;
    if done == len {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: len,
            completed: done,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::block::virtio::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    pub const MEM_SIZE: u64 = 0x40_0000;
    pub const W: u16 = VRING_DESC_F_WRITE as u16;
    pub const N: u16 = VRING_DESC_F_NEXT as u16;

    pub fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    pub fn write_header(mem: &GuestRam, at: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(at))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
    }

    /// Parses the first chain of a raw descriptor table.
    fn parse_raw(
        mem: &GuestRam,
        descs: &[RawDescriptor],
    ) -> Result<(RequestHeader, Vec<Segment>, Vec<Segment>, u64), Rejected> {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(mem).unwrap().next().unwrap();
        let mut p = ChainParser::default();
        p.parse(chain, mem).map(|r| {
            (
                r.header,
                r.readable.to_vec(),
                r.writable.to_vec(),
                r.status.0,
            )
        })
    }

    #[test]
    fn linux_layout() {
        let mem = memory();
        write_header(&mem, 0x10000, VIRTIO_BLK_T_IN, 5);
        let (h, r, w, s) = parse_raw(
            &mem,
            &[
                desc(0x10000, 16, N, 1),
                desc(0x20000, 4096, W | N, 2),
                desc(0x30000, 1, W, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            h,
            RequestHeader {
                request_type: VIRTIO_BLK_T_IN,
                sector: 5
            }
        );
        assert!(r.is_empty());
        assert_eq!(
            w,
            vec![Segment {
                addr: GuestAddress(0x20000),
                len: 4096
            }]
        );
        assert_eq!(s, 0x30000);
    }

    #[test]
    fn header_split_and_status_sharing_the_data_buffer() {
        let mem = memory();
        write_header(&mem, 0x10000, VIRTIO_BLK_T_OUT, 9);
        // The header's last 6 bytes sit in front of the data in a second descriptor.
        let mut tail = [0u8; 6];
        mem.read_slice(&mut tail, GuestAddress(0x1000a)).unwrap();
        mem.write_slice(&tail, GuestAddress(0x20000)).unwrap();
        let (h, r, w, s) = parse_raw(
            &mem,
            &[
                desc(0x10000, 10, N, 1),
                desc(0x20000, 6 + 512, N, 2),
                desc(0x30000, 0, W | N, 3),
                desc(0x40000, 1, W, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            h,
            RequestHeader {
                request_type: VIRTIO_BLK_T_OUT,
                sector: 9
            }
        );
        assert_eq!(
            r,
            vec![Segment {
                addr: GuestAddress(0x20006),
                len: 512
            }]
        );
        assert!(w.is_empty());
        assert_eq!(s, 0x40000);

        // IN data and the status byte in one writable buffer.
        write_header(&mem, 0x10000, VIRTIO_BLK_T_IN, 0);
        let (_, _, w, s) =
            parse_raw(&mem, &[desc(0x10000, 16, N, 1), desc(0x20000, 513, W, 0)]).unwrap();
        assert_eq!(
            w,
            vec![Segment {
                addr: GuestAddress(0x20000),
                len: 512
            }]
        );
        assert_eq!(s, 0x20200);
    }

    #[test]
    fn indirect_chain() {
        let mem = memory();
        write_header(&mem, 0x10000, VIRTIO_BLK_T_IN, 1);
        // The indirect table at 0x50000: header, data, status.
        let table = [
            desc(0x10000, 16, N, 1),
            desc(0x20000, 512, W | N, 2),
            desc(0x30000, 1, W, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(0x50000 + 16 * i as u64))
                .unwrap();
        }
        let (h, _, w, s) =
            parse_raw(&mem, &[desc(0x50000, 48, VRING_DESC_F_INDIRECT as u16, 0)]).unwrap();
        assert_eq!(h.sector, 1);
        assert_eq!(w.len(), 1);
        assert_eq!(s, 0x30000);
    }

    #[test]
    fn loop_is_closed_and_status_found() {
        let mem = memory();
        write_header(&mem, 0x10000, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 0 -> ...: the status is the descriptor that loops back.
        let err = parse_raw(
            &mem,
            &[
                desc(0x10000, 16, N, 1),
                desc(0x20000, 512, W | N, 2),
                desc(0x30000, 1, W | N, 0),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            Rejected {
                status: Some(GuestAddress(0x30000)),
                error: ChainError::Unterminated
            }
        );
    }

    #[test]
    fn next_out_of_range_has_no_status() {
        let mem = memory();
        let err = parse_raw(
            &mem,
            &[desc(0x10000, 16, N, 1), desc(0x30000, 1, W | N, 99)],
        )
        .unwrap_err();
        assert_eq!(
            err,
            Rejected {
                status: None,
                error: ChainError::Unterminated
            }
        );
    }

    #[test]
    fn status_outside_memory_is_no_status() {
        let mem = memory();
        let err = parse_raw(
            &mem,
            &[desc(0x10000, 16, N, 1), desc(MEM_SIZE + 0x1000, 1, W, 0)],
        )
        .unwrap_err();
        assert_eq!(err.status, None);
    }

    #[test]
    fn segment_helpers() {
        let mut segs = vec![
            Segment {
                addr: GuestAddress(0x100),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 10,
            },
        ];
        skip_front(&mut segs, 12);
        assert_eq!(
            segs,
            vec![Segment {
                addr: GuestAddress(0x202),
                len: 8
            }]
        );
        let mem = memory();
        let segs = [
            Segment {
                addr: GuestAddress(0x100),
                len: 3,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 3,
            },
        ];
        copy_to_guest(&mem, &segs, 1, &[1, 2, 3, 4]).unwrap();
        let mut back = [0u8; 6];
        copy_from_guest(&mem, &segs, 0, &mut back).unwrap();
        assert_eq!(back, [0, 1, 2, 3, 4, 0]);
        assert!(copy_to_guest(&mem, &segs, 4, &[9, 9, 9]).is_err());
    }
}
