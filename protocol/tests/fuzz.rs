//! Bounded fuzzing on stable Rust, run by `cargo test`: random and mutated-valid frame
//! streams through [`fuzz_decode`] (the whole stream decoder) and, for a sample of them,
//! through a real `Channel` on a socket. Any panic fails the test and prints the input.
//!
//! Budget: 2 seconds or 200 000 inputs, whichever comes first. `BULKHEAD_FUZZ_SECS=N`
//! runs for N seconds with no input limit; `BULKHEAD_FUZZ_SEED=N` changes the seed.

mod common;

use bulkhead_protocol::codec::encode;
use bulkhead_protocol::frame::{frame, MAGIC};
use bulkhead_protocol::fuzz::fuzz_decode;
use bulkhead_protocol::{Message, ProcessChannel, ToLauncher, ToProcess, MAX_FRAME};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic;
use std::time::{Duration, Instant};

/// xorshift64*: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn text(&mut self) -> String {
        let pool = ['a', 'Z', '0', ' ', '/', 'é', '✓', '\0', '𝄞'];
        let len = self.below(24);
        (0..len).map(|_| pool[self.below(pool.len())]).collect()
    }
}

/// Encoded payloads of every sample message plus random-text ones.
fn valid_payload(rng: &mut Rng) -> Vec<u8> {
    fn pick<M: Message>(rng: &mut Rng, msgs: &[M]) -> Vec<u8> {
        let msg = &msgs[rng.below(msgs.len())];
        encode(msg).expect("samples encode")
    }
    match rng.below(6) {
        0 => pick(rng, &common::to_launcher()),
        1 => pick(rng, &common::to_process()),
        2 => pick(rng, &common::api_requests()),
        3 => pick(rng, &common::api_replies()),
        4 => encode(&ToLauncher::DeviceFailed {
            device: rng.text(),
            reason: rng.text(),
        })
        .expect("encodes"),
        _ => encode(&ToProcess::Resources {
            names: (0..rng.below(4)).map(|_| rng.text()).collect(),
        })
        .expect("encodes"),
    }
}

fn valid_stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        out.extend_from_slice(&frame(&valid_payload(rng)).expect("frames"));
    }
    out
}

const INTERESTING_U32: [u32; 7] = [
    0,
    1,
    7,
    0x7fff_ffff,
    0xffff_ffff,
    MAX_FRAME as u32,
    MAX_FRAME as u32 + 1,
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len());
        match rng.below(7) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)],
            2 => data.truncate(at),
            3 => {
                let extra = rng.bytes(8);
                data.splice(at..at, extra);
            }
            4 if data.len() >= 8 => {
                // A length field (or any 4 bytes) replaced by an edge value.
                let value = INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_le_bytes();
                let at = at.min(data.len() - 4);
                data[at..at + 4].copy_from_slice(&value);
            }
            5 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                let chunk = data[at..end].to_vec();
                data.splice(at..at, chunk);
            }
            _ => {
                let cut = rng.below(data.len());
                data.drain(cut..(cut + rng.below(8)).min(data.len()));
            }
        }
    }
}

fn input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => rng.bytes(256),
        1 => {
            let mut data = MAGIC.to_vec();
            data.extend_from_slice(&rng.bytes(64));
            data
        }
        _ => {
            let mut data = valid_stream(rng);
            mutate(rng, &mut data);
            data
        }
    }
}

/// Feeds `data` to a channel through a real socket; receiving must end (closed or an
/// error), never hang or panic.
fn through_channel(data: &[u8]) {
    let (ours, mut raw) = UnixStream::pair().expect("socketpair");
    let mut ch = ProcessChannel::new(ours, "fuzz peer");
    ch.set_timeouts(Some(Duration::from_secs(5)), None)
        .expect("timeouts");
    raw.write_all(data).expect("fits in the socket buffer");
    raw.shutdown(std::net::Shutdown::Write).expect("shutdown");
    for _ in 0..=data.len() / 8 + 1 {
        if let Err(err) = ch.recv() {
            assert!(!err.is_timeout(), "recv waited on a closed stream: {err}");
            return;
        }
    }
    panic!("more messages than a {}-byte stream can hold", data.len());
}

#[test]
fn bounded_fuzz_of_the_decoder() {
    let env_secs = std::env::var("BULKHEAD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let (budget, max_inputs) = match env_secs {
        Some(secs) => (Duration::from_secs(secs), usize::MAX),
        None => (Duration::from_secs(2), 200_000),
    };
    let seed = std::env::var("BULKHEAD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xb01d_face_5eed_u64);
    let mut rng = Rng(seed.max(1));

    // Unmutated streams decode completely: the generator produces real frames.
    for _ in 0..100 {
        let frames = 1 + rng.below(3);
        let mut data = Vec::new();
        for _ in 0..frames {
            data.extend_from_slice(&frame(&valid_payload(&mut rng)).unwrap());
        }
        assert!(fuzz_decode(&data) >= frames);
    }

    let start = Instant::now();
    let (mut inputs, mut decoded_some) = (0usize, 0usize);
    while inputs < max_inputs && start.elapsed() < budget {
        let data = input(&mut rng);
        let socket = inputs % 512 == 0;
        let outcome = panic::catch_unwind(|| {
            let n = fuzz_decode(&data);
            if socket {
                through_channel(&data);
            }
            n
        });
        match outcome {
            Ok(n) => decoded_some += usize::from(n > 0),
            Err(_) => panic!(
                "decoder panicked (seed {seed}, input #{inputs}): {:02x?}",
                data
            ),
        }
        inputs += 1;
    }
    eprintln!(
        "fuzz: {inputs} inputs in {:.2?} (seed {seed}), {decoded_some} still held a decodable message",
        start.elapsed()
    );
    assert!(inputs >= 1000, "too few inputs to mean anything: {inputs}");
    assert!(
        decoded_some > 0,
        "mutations never reached the message decoder"
    );
}
