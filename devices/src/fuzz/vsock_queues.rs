//! vsock's queue code (`vsock/queues.rs`): transmit chains drained into packets, or packets
//! of any length filled into receive buffers, on the queue the input describes. The ring
//! may announce more chains than the queue holds (the index that once made `drain_tx`
//! spin), so a hang here is a bug too (libFuzzer's timeout).

use super::input::Input;
use super::ring::Ring;
use crate::vsock::muxer::MAX_PAYLOAD;
use crate::vsock::packet::{Header, HEADER_SIZE};
use crate::vsock::queues::{drain_tx, fill_rx};

/// Runs `drain_tx` or `fill_rx` (the input's first byte says which). Panics if the device
/// breaks a rule of [`Ring::check`], completes a transmit chain with a length, hands on a
/// payload over [`MAX_PAYLOAD`], completes more chains than it took packets and refusals
/// from, or completes a receive buffer with more than a header and the payload it was given.
/// Returns the number of used entries.
pub fn fuzz_vsock_queues(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    if input.bool() {
        let lens: Vec<u32> = (0..input.u8() % 8)
            .map(|_| u32::from(input.u16()))
            .collect();
        let mut ring = Ring::build(&mut input);
        let mut scratch = vec![0u8; MAX_PAYLOAD];
        let mut pending = lens.iter().copied();
        let mut largest = 0u32;
        for _ in 0..lens.len() + 1 {
            let round = fill_rx(&mut ring.queue, &ring.mem, &mut scratch, |room| {
                let len = pending.next()?.min(room.len() as u32);
                largest = largest.max(len);
                room[..len as usize].fill(0x5a);
                Some(Header {
                    len,
                    ..Header::default()
                })
            });
            if round.starved {
                break;
            }
        }
        let used = ring.check();
        let most = HEADER_SIZE as u32 + largest;
        assert!(
            used.iter().all(|u| u.len <= most),
            "receive buffers completed past {most} bytes: {used:?}"
        );
        used.len()
    } else {
        let mut ring = Ring::build(&mut input);
        let mut packets = 0u64;
        let round = drain_tx(&mut ring.queue, &ring.mem, |_, payload| {
            assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
            packets += 1;
        });
        let used = ring.check();
        assert!(
            used.iter().all(|u| u.len == 0),
            "transmit chains completed with a length: {used:?}"
        );
        // One packet or one refusal per chain taken; a chain whose used entry could not be
        // written (a ring moved out of memory, or overlapping another) has none.
        assert!(
            packets + round.bad >= used.len() as u64,
            "{packets} packets and {} refusals for {} used entries",
            round.bad,
            used.len()
        );
        used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;
    use crate::fuzz::ring::encode;

    /// A well-formed queue of one-buffer chains (writable for the receive side), with
    /// headers of zeroes in the data area.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let rx = rng.below(2) == 1;
        let mut out = vec![u8::from(rx)];
        if rx {
            out.push(3);
            for len in [0u16, 100, 5000] {
                out.extend(len.to_le_bytes());
            }
        }
        encode::header(&mut out, 8, rng.below(2) == 1);
        encode::single_buffer_chains(&mut out, 1 + rng.below(4), 0x40, rx);
        out
    }

    #[test]
    fn valid_chains_complete() {
        let mut rng = Rng::new(7);
        for _ in 0..8 {
            assert!(
                fuzz_vsock_queues(&valid(&mut rng)) >= 1,
                "the generator makes chains"
            );
        }
    }

    #[test]
    fn bounded_fuzz_of_vsock_queues() {
        run_bounded("vsock_queues", valid, fuzz_vsock_queues);
    }
}
