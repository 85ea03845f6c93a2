//! The baseline of `bulkhead bench blk`: the host's own pread/pwrite on the same file, at
//! the same block size and depth (depth = that many threads, each with one request in
//! flight), for the same time.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One I/O pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential reads.
    SeqRead,
    /// Sequential writes.
    SeqWrite,
}

impl Pattern {
    /// The name the test guest prints.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::SeqRead => "seqread",
            Pattern::SeqWrite => "seqwrite",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }

    fn random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite)
    }
}

/// Result of one run: completed requests and the time they took.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Requests completed.
    pub ios: u64,
    /// Elapsed time.
    pub elapsed: Duration,
    /// Bytes per request.
    pub bs: u64,
}

impl Throughput {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6) per second.
    pub fn mbps(&self) -> f64 {
        self.iops() * self.bs as f64 / 1e6
    }
}

/// Runs `pattern` with `bs`-byte requests, `depth` at a time, over `path` for `time`.
pub fn run(
    path: &Path,
    pattern: Pattern,
    bs: u64,
    depth: u32,
    time: Duration,
) -> std::io::Result<Throughput> {
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(pattern.writes())
            .open(path)?,
    );
    let blocks = file.metadata()?.len() / bs;
    if blocks == 0 {
        return Err(std::io::Error::other(format!(
            "{} is smaller than one {bs}-byte block",
            path.display()
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..depth)
        .map(|t| {
            let (file, stop, total) = (file.clone(), stop.clone(), total.clone());
            std::thread::spawn(move || worker(&file, pattern, bs, blocks, t, depth, &stop, &total))
        })
        .collect();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("an I/O thread panicked")),
            Ok(Ok(())) => {}
        }
    }
    result?;
    Ok(Throughput {
        ios: total.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        bs,
    })
}

#[allow(clippy::too_many_arguments)]
fn worker(
    file: &File,
    pattern: Pattern,
    bs: u64,
    blocks: u64,
    thread: u32,
    depth: u32,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0xa5u8; bs as usize];
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ u64::from(thread);
    let mut next = u64::from(thread);
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let block = if pattern.random() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % blocks
        } else {
            let b = next % blocks;
            next += u64::from(depth);
            b
        };
        if pattern.writes() {
            file.write_all_at(&buf, block * bs)?;
        } else {
            file.read_exact_at(&mut buf, block * bs)?;
        }
        done += 1;
    }
    total.fetch_add(done, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_a_file() {
        let path = std::env::temp_dir().join(format!("bulkhead-hostio-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        for p in [Pattern::RandRead, Pattern::SeqWrite] {
            let t = run(&path, p, 4096, 2, Duration::from_millis(20)).unwrap();
            assert!(t.ios > 0 && t.iops() > 0.0);
        }
        let _ = std::fs::remove_file(&path);
    }
}
