//! Bounded fuzzing on stable Rust, for `cargo test`: a seeded xorshift generator makes
//! random inputs, well-formed ones (from a harness-specific generator) and mutations of
//! those, and runs them through a harness. A panic fails the test and prints the seed and
//! the input, which then belongs in the harness's regression list.
//!
//! Budget: 1.5 seconds or 20 000 inputs, whichever comes first. `BULKHEAD_FUZZ_SECS=N`
//! runs for N seconds with no input limit; `BULKHEAD_FUZZ_SEED=N` changes the seed;
//! `BULKHEAD_FUZZ_SEEDS_DIR=DIR` also writes 16 well-formed inputs there (`NAME-N`), a
//! seed corpus for the libFuzzer target.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64*: tiny, seedable, good enough to pick mutations.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Flips, replaces, inserts, duplicates and removes a few bytes of `data`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    const EDGES: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len());
        match rng.below(6) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at] = EDGES[rng.below(EDGES.len())],
            2 if !data.is_empty() => data[at] = rng.next_u64() as u8,
            3 => {
                let extra = rng.bytes(8);
                data.splice(at..at, extra);
            }
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                let chunk = data[at..end].to_vec();
                data.splice(at..at, chunk);
            }
            _ => {
                let end = (at + rng.below(8)).min(data.len());
                data.drain(at..end);
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Runs `harness` on generated inputs within the budget; returns how many ran. `valid`
/// makes a well-formed input (mutated most of the time). Panics, naming the seed and the
/// input, if the harness panics.
pub fn run_bounded<T>(
    name: &str,
    mut valid: impl FnMut(&mut Rng) -> Vec<u8>,
    harness: impl Fn(&[u8]) -> T,
) -> usize {
    let (budget, max_inputs) = match env_u64("BULKHEAD_FUZZ_SECS") {
        Some(secs) => (Duration::from_secs(secs), usize::MAX),
        None => (Duration::from_millis(1500), 20_000),
    };
    let seed = env_u64("BULKHEAD_FUZZ_SEED").unwrap_or(0x5eed_b10c_f00d);
    let mut rng = Rng::new(seed);
    if let Some(dir) = std::env::var_os("BULKHEAD_FUZZ_SEEDS_DIR") {
        for i in 0..16 {
            let path = std::path::Path::new(&dir).join(format!("{name}-{i}"));
            if let Err(e) = std::fs::write(&path, valid(&mut rng)) {
                panic!("writing seed {}: {e}", path.display());
            }
        }
    }
    let start = Instant::now();
    let mut inputs = 0usize;
    while inputs < max_inputs && start.elapsed() < budget {
        let data = match rng.below(8) {
            0 => rng.bytes(512),
            1 => valid(&mut rng),
            _ => {
                let mut data = valid(&mut rng);
                mutate(&mut rng, &mut data);
                data
            }
        };
        if panic::catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
            panic!("{name} harness panicked (seed {seed}, input #{inputs}): {data:02x?}");
        }
        inputs += 1;
    }
    eprintln!(
        "fuzz {name}: {inputs} inputs in {:.2?} (seed {seed})",
        start.elapsed()
    );
    assert!(inputs >= 100, "too few inputs to mean anything: {inputs}");
    inputs
}
