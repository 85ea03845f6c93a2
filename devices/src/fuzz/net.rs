//! virtio-net chains: TX chains sent by the net device's TX worker into a socketpair
//! standing in for the TAP, or frames from the "TAP" read by its RX worker into RX chains.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket;

use super::input::Input;
use super::ring::Ring;
use crate::net::{Counters, RxEnd, RxWorker, TxWorker, MAX_FRAME, NET_HDR_SIZE};

/// A non-blocking SOCK_SEQPACKET pair: one read or write per frame, like a TAP. (The
/// device's "TAP", the far side the caller reads and writes; the net device's unit tests
/// use it too.)
pub(crate) fn fake_tap() -> (Arc<OwnedFd>, OwnedFd) {
    let (a, b) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_NONBLOCK | socket::SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    (Arc::new(a), b)
}

/// The lengths of the packets waiting on `fd`.
fn drain(fd: &OwnedFd) -> Vec<usize> {
    let mut buf = vec![0u8; MAX_FRAME + NET_HDR_SIZE + 1];
    let mut out = Vec::new();
    loop {
        let flags = socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_TRUNC;
        match socket::recv(fd.as_raw_fd(), &mut buf, flags) {
            Ok(n) => out.push(n),
            Err(_) => return out,
        }
    }
}

/// Runs the TX or the RX worker (the input's first byte says which) on the queue the input
/// describes. Panics if the device breaks a rule of [`Ring::check`], sends a frame shorter
/// than a header or longer than [`MAX_FRAME`], miscounts, or completes RX buffers with more
/// bytes than the TAP gave. Returns the number of used entries.
pub fn fuzz_net(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let (tap, far) = fake_tap();
    let counters = Arc::new(Counters::default());
    if input.bool() {
        rx(&mut input, tap, &far, counters)
    } else {
        tx(&mut input, tap, &far, counters)
    }
}

fn tx(input: &mut Input, tap: Arc<OwnedFd>, far: &OwnedFd, counters: Arc<Counters>) -> usize {
    let mut worker = TxWorker::new(tap, Arc::clone(&counters));
    let mut ring = Ring::build(input);
    let mut rounds = 0;
    loop {
        let round = match worker.serve_round(&mut ring.queue, &ring.mem) {
            Ok(round) => round,
            Err(gone) => panic!("the fake TAP is still open: {gone}"),
        };
        if !round.again {
            break;
        }
        rounds += 1;
        assert!(
            rounds < 4,
            "the TX worker keeps asking for rounds on a static ring"
        );
    }
    let used = ring.check();
    assert!(
        used.iter().all(|u| u.len == 0),
        "TX chains completed with a length: {used:?}"
    );
    let sent = drain(far);
    for &n in &sent {
        assert!(
            (NET_HDR_SIZE..=NET_HDR_SIZE + MAX_FRAME).contains(&n),
            "a {n}-byte packet reached the TAP"
        );
    }
    let c = counters.snapshot();
    assert_eq!(c.tx_frames, sent.len() as u64, "frames counted vs sent");
    let bytes: usize = sent.iter().map(|n| n - NET_HDR_SIZE).sum();
    assert_eq!(c.tx_bytes, bytes as u64, "bytes counted vs sent");
    used.len()
}

fn rx(input: &mut Input, tap: Arc<OwnedFd>, far: &OwnedFd, counters: Arc<Counters>) -> usize {
    let mut offered = 0usize;
    for _ in 0..input.u8() % 8 {
        let len = match input.u8() {
            m @ 0..=0x7f => usize::from(m),
            _ => usize::from(input.u16()),
        };
        if len == 0 {
            // A TAP never reads empty (every frame has its virtio-net header), and an empty
            // datagram here would read as the end of file, which the worker rightly takes
            // for a TAP that has gone.
            continue;
        }
        let frame = vec![input.u8(); len];
        if socket::send(far.as_raw_fd(), &frame, socket::MsgFlags::empty()).is_ok() {
            offered += len;
        }
    }
    let mut worker = RxWorker::new(tap, Arc::clone(&counters));
    let mrg_rxbuf = input.bool();
    worker.set_features(mrg_rxbuf, usize::from(input.u16()));
    let mut ring = Ring::build(input);
    for call in 0.. {
        let round = match worker.serve(&mut ring.queue, &ring.mem) {
            Ok(round) => round,
            Err(gone) => panic!("the fake TAP is still open: {gone}"),
        };
        if round.end != RxEnd::Budget {
            break;
        }
        assert!(call < 8, "the RX worker keeps asking for calls");
    }
    let used = ring.check();
    let delivered: u64 = used.iter().map(|u| u64::from(u.len)).sum();
    assert!(
        delivered <= offered as u64,
        "RX chains completed with {delivered} bytes, the TAP gave {offered}"
    );
    used.len()
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;
    use crate::fuzz::ring::encode;

    /// A well-formed queue of `n` chains of one buffer each (writable for RX).
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let rx = rng.below(2) == 1;
        let mut out = vec![u8::from(rx)];
        if rx {
            out.push(3); // three frames of 60 bytes
            for _ in 0..3 {
                out.extend([60, 0x11]);
            }
            out.push(u8::from(rng.below(2) == 1)); // MRG_RXBUF
            out.extend(1514u16.to_le_bytes());
        }
        encode::header(&mut out, 8, rng.below(2) == 1);
        // 2 KiB each
        encode::single_buffer_chains(&mut out, 1 + rng.below(4), 0x43, rx);
        out.extend(vec![0u8; 64]); // zero headers: no offloads
        out
    }

    #[test]
    fn valid_chains_complete() {
        let mut rng = Rng::new(3);
        for _ in 0..8 {
            assert!(
                fuzz_net(&valid(&mut rng)) >= 1,
                "the generator makes chains"
            );
        }
    }

    /// Inputs libFuzzer found (each once a crash; see `devices/fuzz/README.md`).
    const REGRESSIONS: &[&[u8]] = &[
        // An empty frame from the fake TAP: a read of 0 bytes, taken for a TAP gone (a
        // harness bug: a TAP never reads empty).
        &[
            0x31, 0x32, 0x79, 0x1a, 0x00, 0x6e, 0x30, 0x00, 0x00, 0x1a, 0x30, 0x6e, 0x00, 0x79,
            0x08, 0x00, 0x01, 0x0a, 0x08, 0x08, 0x31, 0xba, 0xba, 0xba, 0xba, 0xba, 0xba, 0x01,
            0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x01,
        ],
    ];

    #[test]
    fn regressions() {
        for input in REGRESSIONS {
            fuzz_net(input);
        }
    }

    #[test]
    fn bounded_fuzz_of_net_chains() {
        run_bounded("net", valid, fuzz_net);
    }
}
