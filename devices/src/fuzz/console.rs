//! virtio-console chains: the transmitq drained into a buffer, or a byte stream read into
//! the receiveq, by the console device's own code.

use std::sync::atomic::Ordering;

use super::input::Input;
use super::ring::Ring;
use crate::console::{Counters, Receiver, RxEnd, Transmitter};

/// Runs the transmitter or the receiver (the input's first byte says which) on the queue
/// the input describes. Panics if the device breaks a rule of [`Ring::check`], completes
/// transmit chains with a length, or reports more received bytes than the stream held or
/// than it completed. Returns the number of used entries.
pub fn fuzz_console(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let counters = Counters::default();
    if input.bool() {
        let len = usize::from(input.u16() % 0x4000);
        let stream = vec![input.u8(); len];
        let mut ring = Ring::build(&mut input);
        let mut receiver = Receiver::default();
        let mut from = &stream[..];
        let mut delivered = 0usize;
        for call in 0.. {
            let round = receiver.receive(&mut ring.queue, &ring.mem, &mut from, &counters);
            match round.end {
                RxEnd::Delivered(n) => delivered += n,
                RxEnd::Skipped => {}
                _ => break,
            }
            assert!(call <= 4 * 256 + 4, "the receiver never stops");
        }
        let used = ring.check();
        assert!(delivered <= len, "{delivered} bytes delivered from {len}");
        let completed: u64 = used.iter().map(|u| u64::from(u.len)).sum();
        assert_eq!(
            completed, delivered as u64,
            "used lengths {used:?} vs bytes delivered"
        );
        used.len()
    } else {
        let mut ring = Ring::build(&mut input);
        let mut transmitter = Transmitter::default();
        let mut out = Vec::new();
        let mut rounds = 0;
        while transmitter
            .round(&mut ring.queue, &ring.mem, &mut out, &counters)
            .again
        {
            rounds += 1;
            assert!(rounds < 4, "the transmitter keeps asking for rounds");
        }
        let used = ring.check();
        assert!(
            used.iter().all(|u| u.len == 0),
            "transmit chains completed with a length: {used:?}"
        );
        let _ = counters.bad_tx_chains.load(Ordering::Relaxed);
        used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;
    use crate::fuzz::ring::encode;

    /// A well-formed queue of `n` one-buffer chains (writable for the receiveq).
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let rx = rng.below(2) == 1;
        let mut out = vec![u8::from(rx)];
        if rx {
            out.extend(300u16.to_le_bytes());
            out.push(b'x');
        }
        encode::header(&mut out, 8, rng.below(2) == 1);
        // 512 bytes each
        encode::single_buffer_chains(&mut out, 1 + rng.below(4), 0x40, rx);
        out.extend(b"hello from the guest\n");
        out
    }

    #[test]
    fn valid_chains_complete() {
        let mut rng = Rng::new(5);
        for _ in 0..8 {
            assert!(
                fuzz_console(&valid(&mut rng)) >= 1,
                "the generator makes chains"
            );
        }
    }

    #[test]
    fn bounded_fuzz_of_console_chains() {
        run_bounded("console", valid, fuzz_console);
    }
}
