//! `bulkhead bench blk`: the test guest's block benchmark (4 KiB random and 128 KiB
//! sequential reads and writes at depth 1 and 32, polling its used ring) through
//! bulkhead-blk and through qemu-storage-daemon on the same image, beside the host's own
//! pread/pwrite on that file; and how many exits the vmm saw while the guest did its I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::host_io::{self, Pattern, Throughput};
use super::qsd;
use crate::cli::BlkBenchArgs;

/// The tests, as the guest runs them.
const TESTS: [(Pattern, u64, u32); 8] = [
    (Pattern::RandRead, 4096, 1),
    (Pattern::RandRead, 4096, 32),
    (Pattern::RandWrite, 4096, 1),
    (Pattern::RandWrite, 4096, 32),
    (Pattern::SeqRead, 131072, 1),
    (Pattern::SeqRead, 131072, 32),
    (Pattern::SeqWrite, 131072, 1),
    (Pattern::SeqWrite, 131072, 32),
];

/// What one guest run reported.
struct GuestRun {
    results: HashMap<(String, u64, u32), Throughput>,
    kicks: u64,
    exits: HashMap<String, u64>,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BlkBenchArgs) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bulkhead bench blk: {e}");
            crate::run::EXIT_BULKHEAD_FAILED
        }
    }
}

fn run(args: &BlkBenchArgs) -> Result<(), String> {
    let scratch;
    let image: &Path = match &args.image {
        Some(p) => p,
        None => {
            scratch = Scratch::new(args.size)?;
            &scratch.0
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding the bulkhead binary: {e}"))?;
    println!(
        "bulkhead bench blk: {} ({} MiB), {} ms per test, guest polls its used ring (interrupts suppressed)",
        image.display(),
        std::fs::metadata(image).map(|m| m.len() >> 20).unwrap_or(0),
        args.ms
    );
    println!("running the guest on bulkhead-blk ...");
    let ours = guest_run(&exe, &format!("path={}", image.display()), args.ms)?;
    let theirs = if args.no_qsd {
        None
    } else {
        println!("running the guest on qemu-storage-daemon ...");
        match qsd::start(image, false, "bench") {
            Ok(qsd) => Some(guest_run(
                &exe,
                &format!("socket={}", qsd.socket.display()),
                args.ms,
            )?),
            Err(e) => {
                println!("  skipped: {e}");
                None
            }
        }
    };
    println!("running the host's own pread/pwrite ...");
    println!();
    println!(
        "{:<9} {:>7} {:>3} | {:>22} | {:>22} | {:>22} | {:>7} {:>8}",
        "test",
        "bs",
        "qd",
        "bulkhead-blk",
        "qemu-storage-daemon",
        "host pread/pwrite",
        "vs qsd",
        "vs host"
    );
    for (pattern, bs, qd) in TESTS {
        let key = (pattern.name().to_owned(), bs, qd);
        let host = host_io::run(image, pattern, bs, qd, Duration::from_millis(args.ms))
            .map_err(|e| format!("host {} on {}: {e}", pattern.name(), image.display()))?;
        let o = ours.results.get(&key);
        let t = theirs.as_ref().and_then(|r| r.results.get(&key));
        let ratio = |a: Option<&Throughput>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a.iops() / b),
            _ => "-".into(),
        };
        println!(
            "{:<9} {:>7} {:>3} | {:>22} | {:>22} | {:>22} | {:>7} {:>8}",
            pattern.name(),
            bs,
            qd,
            cell(o),
            cell(t),
            cell(Some(&host)),
            ratio(o, t.map(|t| t.iops())),
            ratio(o, Some(host.iops())),
        );
    }
    let requests: u64 = ours.results.values().map(|t| t.ios).sum();
    println!();
    println!(
        "bulkhead-blk run: {requests} guest requests, {} kicks; exits to the vmm over the whole run: {} MMIO, {} port I/O, {} other",
        ours.kicks,
        ours.exits.get("exits_mmio").unwrap_or(&0),
        ours.exits.get("exits_pio").unwrap_or(&0),
        ours.exits.get("exits_other").unwrap_or(&0),
    );
    println!(
        "  (MMIO exits are device set-up and config reads; port I/O exits are the guest's serial console output; the requests themselves go guest -> ioeventfd -> backend -> irqfd without an exit: {:.4} MMIO exits per request)",
        *ours.exits.get("exits_mmio").unwrap_or(&0) as f64 / requests.max(1) as f64
    );
    Ok(())
}

fn cell(t: Option<&Throughput>) -> String {
    match t {
        Some(t) => format!("{:>8.0} IOPS {:>7.1} MB/s", t.iops(), t.mbps()),
        None => "-".into(),
    }
}

/// Boots the test guest's `blk-bench` on `disk` and collects its lines and the vmm's stats.
fn guest_run(exe: &Path, disk: &str, ms: u64) -> Result<GuestRun, String> {
    let out = Command::new(exe)
        .args(["run", "--report-stats", "--memory", "512", "--disk", disk])
        .arg("--cmdline")
        .arg(format!(
            "bulkhead.test=blk-bench bulkhead.blk.bench-ms={ms}"
        ))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bulkhead: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "the guest benchmark on {disk} failed ({}):\n{stdout}\n{stderr}",
            out.status
        ));
    }
    let mut results = HashMap::new();
    let mut kicks = 0;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("bulkhead-guest: blk-bench ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap_or_default().to_owned();
        let kv: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
        if let (Some(bs), Some(qd), Some(ios), Some(ms)) =
            (num("bs"), num("qd"), num("ios"), num("ms"))
        {
            results.insert(
                (name, bs as u64, qd as u32),
                Throughput {
                    ios: ios as u64,
                    elapsed: Duration::from_secs_f64(ms / 1000.0),
                    bs: bs as u64,
                },
            );
            kicks += num("kicks").unwrap_or(0.0) as u64;
        }
    }
    if results.is_empty() {
        return Err(format!("the guest printed no blk-bench lines:\n{stdout}"));
    }
    let exits = stderr
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| k.starts_with("exits_"))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect();
    Ok(GuestRun {
        results,
        kicks,
        exits,
    })
}

/// A scratch image, filled so reads hit allocated blocks; deleted when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(mib: u64) -> Result<Scratch, String> {
        let path = std::env::temp_dir().join(format!("bulkhead-bench-{}.img", std::process::id()));
        let chunk = vec![0x5au8; 1 << 20];
        let mut f = std::fs::File::create(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        for _ in 0..mib {
            std::io::Write::write_all(&mut f, &chunk)
                .map_err(|e| format!("filling {}: {e}", path.display()))?;
        }
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
