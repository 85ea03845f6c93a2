//! Descriptor chains ↔ packets. A transmit chain is checked whole (every buffer
//! device-readable and inside guest memory, the chain not cut short) and at most a header
//! and [`MAX_PAYLOAD`] bytes of it are copied out, whatever its header claims; a receive
//! chain likewise (device-writable), and a packet is built only for the room it has. A
//! bad chain is completed with used length 0 and counted.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::muxer::MAX_PAYLOAD;
use super::packet::{Header, HEADER_SIZE};
use super::GuestRam;

/// What a round on a queue asks of its caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Signal the driver.
    pub interrupt: bool,
    /// Chains refused.
    pub bad: u64,
    /// rx: the guest gave too few buffers for everything there was to send.
    pub starved: bool,
    /// tx: the driver's available index is further ahead than the queue has entries, so
    /// nothing on it can be trusted; the queue is left alone until the driver fixes it.
    pub unusable: bool,
}

/// The buffers of a chain, all in the direction `writable`, inside guest memory, the
/// chain complete; their total length.
fn collect(
    chain: DescriptorChain<&GuestRam>,
    mem: &GuestRam,
    writable: bool,
    segs: &mut Vec<(GuestAddress, usize)>,
) -> Option<usize> {
    segs.clear();
    let mut total = 0usize;
    let mut last_has_next = true;
    for desc in chain {
        last_has_next = desc.has_next();
        let len = desc.len() as usize;
        if desc.is_write_only() != writable || !mem.check_range(desc.addr(), len) {
            return None;
        }
        if len > 0 {
            segs.push((desc.addr(), len));
            total = total.saturating_add(len);
        }
    }
    (!last_has_next).then_some(total)
}

/// Drains the tx queue: each packet (header and payload, at most [`MAX_PAYLOAD`] bytes of
/// it) goes to `packet`; a chain shorter than a header is refused.
pub fn drain_tx(
    queue: &mut Queue,
    mem: &GuestRam,
    mut packet: impl FnMut(&Header, &[u8]),
) -> Round {
    let mut round = Round::default();
    if !queue.ready() {
        return round;
    }
    let mut segs = Vec::new();
    let mut bytes = Vec::with_capacity(HEADER_SIZE + MAX_PAYLOAD);
    loop {
        // At most a queue's worth of chains per pass; `iter` refuses an available index
        // more than that ahead (`pop_descriptor_chain` only answered `None`, and with
        // notifications re-enabled saying there is more, this loop never ended). A pass
        // that takes nothing while the driver's index says there is more is the same.
        let mut taken = 0;
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut chains) => chains.next(),
                Err(_) => None,
            };
            let Some(chain) = chain else {
                break;
            };
            taken += 1;
            let head = chain.head_index();
            bytes.clear();
            let ok =
                collect(chain, mem, false, &mut segs).is_some() && copy_out(mem, &segs, &mut bytes);
            match Header::parse(&bytes).filter(|_| ok) {
                Some(h) => packet(&h, &bytes[HEADER_SIZE..]),
                None => round.bad += 1,
            }
            if queue.add_used(mem, head, 0).is_ok() {
                round.interrupt = true;
            }
        }
        if !queue.enable_notification(mem).unwrap_or(false) {
            break;
        }
        if taken == 0 {
            round.unusable = true;
            break;
        }
    }
    round.interrupt &= queue.needs_notification(mem).unwrap_or(true);
    round
}

/// Copies up to a header and [`MAX_PAYLOAD`] bytes of `segs` into `out`.
fn copy_out(mem: &GuestRam, segs: &[(GuestAddress, usize)], out: &mut Vec<u8>) -> bool {
    let cap = HEADER_SIZE + MAX_PAYLOAD;
    for &(addr, len) in segs {
        let n = len.min(cap - out.len());
        if n == 0 {
            break;
        }
        let at = out.len();
        out.resize(at + n, 0);
        if mem.read_slice(&mut out[at..], addr).is_err() {
            return false;
        }
    }
    true
}

/// Fills rx buffers with what `next` produces (given room for the payload, it returns a
/// header whose `len` bytes it put at the start of the room), until it has nothing or the
/// guest has no buffer.
pub fn fill_rx(
    queue: &mut Queue,
    mem: &GuestRam,
    scratch: &mut [u8],
    mut next: impl FnMut(&mut [u8]) -> Option<Header>,
) -> Round {
    let mut round = Round::default();
    if !queue.ready() {
        return round;
    }
    let mut segs = Vec::new();
    loop {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            round.starved = true;
            break;
        };
        let head = chain.head_index();
        let room = match collect(chain, mem, true, &mut segs) {
            Some(room) if room >= HEADER_SIZE => room,
            _ => {
                round.bad += 1;
                if queue.add_used(mem, head, 0).is_ok() {
                    round.interrupt = true;
                }
                continue;
            }
        };
        let data_room = (room - HEADER_SIZE).min(scratch.len()).min(MAX_PAYLOAD);
        let Some(h) = next(&mut scratch[..data_room]) else {
            queue.go_to_previous_position();
            break;
        };
        let len = (h.len as usize).min(data_room);
        let written = write_in(mem, &segs, &h.bytes(), &scratch[..len]);
        if queue.add_used(mem, head, written as u32).is_ok() {
            round.interrupt = true;
        }
    }
    round.interrupt &= queue.needs_notification(mem).unwrap_or(true);
    round
}

/// Writes `a` then `b` across `segs` (which have room for both); returns bytes written.
fn write_in(mem: &GuestRam, segs: &[(GuestAddress, usize)], a: &[u8], b: &[u8]) -> usize {
    let mut written = 0usize;
    let mut src = a.iter().chain(b.iter()).copied();
    let total = a.len() + b.len();
    let mut tmp = Vec::with_capacity(total);
    for &(addr, len) in segs {
        if written == total {
            break;
        }
        let n = len.min(total - written);
        tmp.clear();
        tmp.extend(src.by_ref().take(n));
        if mem.write_slice(&tmp, addr).is_err() {
            break;
        }
        written += n;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Address;

    const QUEUE_SIZE: u16 = 16;

    fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Sets the driver's available index of `vq` to `idx`.
    fn set_avail_idx(mem: &GuestRam, vq: &MockSplitQueue<'_, GuestRam>, idx: u16) {
        mem.write_obj(idx, vq.avail_addr().unchecked_add(2))
            .unwrap();
    }

    /// Runs `drain_tx` on another thread; its round, or `None` if it did not return within
    /// 5 s (it spun).
    fn drain_bounded(mem: GuestRam, mut queue: Queue) -> Option<(Round, usize)> {
        let (done, rounds) = mpsc::channel();
        std::thread::spawn(move || {
            let mut packets = 0;
            let r = drain_tx(&mut queue, &mem, |_, _| packets += 1);
            let _ = done.send((r, packets));
        });
        rounds.recv_timeout(Duration::from_secs(5)).ok()
    }

    #[test]
    fn an_available_index_beyond_the_queue_size_makes_tx_unusable_not_a_spin() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let queue = vq.create_queue::<Queue>().unwrap();
        // 100 chains announced on a 16-entry queue.
        set_avail_idx(&mem, &vq, 100);
        let (round, packets) = drain_bounded(mem.clone(), queue).expect("drain_tx returned");
        assert!(round.unusable, "{round:?}");
        assert_eq!((packets, round.interrupt), (0, false), "{round:?}");
    }

    #[test]
    fn a_packet_chain_is_delivered_and_completed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let queue = vq.create_queue::<Queue>().unwrap();
        // One device-readable buffer holding a header of zeroes and no payload.
        let buf = 0x8000u64;
        let desc = RawDescriptor::from(SplitDescriptor::new(buf, HEADER_SIZE as u32, 0, 0));
        mem.write_obj(desc, vq.desc_table_addr()).unwrap();
        mem.write_obj(0u16, vq.avail_addr().unchecked_add(4))
            .unwrap();
        set_avail_idx(&mem, &vq, 1);
        let (round, packets) = drain_bounded(mem.clone(), queue).expect("drain_tx returned");
        assert!(!round.unusable, "{round:?}");
        assert_eq!((packets, round.bad), (1, 0), "{round:?}");
        let used_idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1);
    }
}
