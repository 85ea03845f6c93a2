//! Resubmission from an inflight region: a queue from the input, a region a predecessor
//! (possibly a compromised one) left, laid out from the input too (header fields, the
//! entries of the next available heads in flight in some counter order, stray entries),
//! then the block worker resumes the queue (checks the region against the ring, walks the
//! chains it names from their head index, serves them) and serves the ring as usual.
//!
//! Beyond [`Ring::check`] (used entries are the available heads in order, lengths and
//! writes within the chains' writable buffers; which also compares the resubmission
//! walker with virtio-queue's walk), the harness asserts that no more requests are
//! resubmitted than the queue holds.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::block::memfd;
use super::input::Input;
use super::ring::Ring;
use crate::block::{Disk, DiskOptions, QueueWorker};
use crate::daemon::inflight::scratch_region;

/// What the input says the predecessor left.
struct Left {
    version: u16,
    desc_num: Option<u16>,
    used_shift: u16,
    last_batch_head: u16,
    in_flight: u8,
    reversed: bool,
    stray: Vec<(u16, u8, u64)>,
    other_size: Option<u16>,
}

impl Left {
    fn read(input: &mut Input) -> Left {
        let version = match input.u8() {
            0..=0xdf => 1,
            0xe0..=0xef => 0,
            _ => input.u16(),
        };
        let desc_num = (input.u8() >= 0xf0).then(|| input.u16());
        let used_shift = match input.u8() {
            0..=0xbf => 0,
            0xc0..=0xef => 1,
            _ => input.u16(),
        };
        let last_batch_head = u16::from(input.u8());
        let in_flight = input.u8() % 8;
        let reversed = input.u8() >= 0xf0;
        let stray = (0..input.u8() % 4)
            .map(|_| (u16::from(input.u8()), input.u8() % 3, u64::from(input.u8())))
            .collect();
        let other_size = (input.u8() == 0xff).then(|| 1 << (input.u8() % 9));
        Left {
            version,
            desc_num,
            used_shift,
            last_batch_head,
            in_flight,
            reversed,
            stray,
            other_size,
        }
    }
}

/// Resumes the queue the input describes with the region it describes, then serves it.
/// Returns the number of requests resubmitted.
pub fn fuzz_resubmit(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let left = Left::read(&mut input);
    let size = 4096;
    let image = memfd(c"fuzz-resubmit", size);
    let options = DiskOptions {
        read_only: false,
        direct: false,
        logical_block_size: 512,
    };
    let disk = Disk::from_fd(OwnedFd::from(image), "fuzz image".into(), options)
        .expect("a memfd image of whole blocks opens");
    let mut worker = QueueWorker::new(Arc::new(disk.into()), [0; 20], Duration::ZERO);
    let mut ring = Ring::build(&mut input);

    let qsize = ring.queue.size();
    let region =
        scratch_region(1, left.other_size.unwrap_or(qsize).max(1)).expect("a memfd for the region");
    if let Some(part) = region.queue(0) {
        let start = ring.queue.next_avail();
        part.write_header(
            left.version,
            left.desc_num.unwrap_or(qsize),
            left.last_batch_head,
            start.wrapping_sub(left.used_shift),
        );
        let avail = ring.queue.avail_ring();
        for i in 0..u16::from(left.in_flight) {
            let slot = u64::from(start.wrapping_add(i) % qsize.max(1));
            let head: u16 = avail
                .checked_add(4 + 2 * slot)
                .and_then(|a| ring.mem.read_obj(GuestAddress(a)).ok())
                .unwrap_or(u16::MAX);
            let counter = if left.reversed {
                u64::from(u16::MAX - i)
            } else {
                u64::from(i)
            };
            part.write_entry(head, 1, counter);
        }
        for &(head, byte, counter) in &left.stray {
            part.write_entry(head, byte, counter);
        }
    }
    let resubmitted = worker.resume(&mut ring.queue, &ring.mem, Some(Arc::new(region)), 0);
    assert!(
        resubmitted <= usize::from(qsize),
        "{resubmitted} resubmitted on a queue of {qsize}"
    );
    let mut rounds = 0;
    while worker.serve_round(&mut ring.queue, &ring.mem).again {
        rounds += 1;
        assert!(
            rounds < 4,
            "the worker keeps asking for rounds on a static ring"
        );
    }
    let used = ring.check();
    assert!(
        resubmitted <= used.len(),
        "{resubmitted} resubmitted, {} used",
        used.len()
    );
    resubmitted
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;
    use crate::fuzz::ring::encode;

    /// Two or three well-formed writes available, the region with the first ones in flight.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let n = 2 + rng.below(2);
        let in_flight = 1 + rng.below(n);
        // version 1, desc_num = size, used_idx = start, lbh 0, in flight, in order, no
        // stray entry, the ring's own size.
        let mut out = vec![0, 0, 0, 0, in_flight as u8, 0, 0, 0];
        encode::header(&mut out, 8, rng.below(2) == 1);
        out.push((3 * n) as u8);
        for i in 0..n {
            let (base, next) = (0x100 * i as u64, (3 * i) as u8);
            encode::desc(&mut out, base, 16, 1, next + 1);
            encode::desc(&mut out, 0x2000 + 0x400 * i as u64, 0x40, 1, next + 2);
            encode::desc(&mut out, base + 0x80, 1, 2, 0);
        }
        encode::available(&mut out, &(0..n).map(|i| (3 * i) as u8).collect::<Vec<_>>());
        let mut area = vec![0u8; 0x100 * n];
        for i in 0..n {
            area[0x100 * i] = 1; // VIRTIO_BLK_T_OUT
            area[0x100 * i + 8] = rng.below(8) as u8;
        }
        out.extend(area);
        out
    }

    #[test]
    fn what_was_in_flight_is_resubmitted() {
        let mut rng = Rng::new(3);
        for _ in 0..8 {
            let input = valid(&mut rng);
            let in_flight = usize::from(input[4]);
            assert_eq!(fuzz_resubmit(&input), in_flight, "{input:x?}");
        }
    }

    #[test]
    fn bounded_fuzz_of_resubmission() {
        run_bounded("resubmit", valid, fuzz_resubmit);
    }
}
