//! `bulkhead bench blk`: the test guest's block benchmark (4 KiB random and 128 KiB
//! sequential reads and writes at depth 1 and 32, polling its used ring) through
//! bulkhead-blk over virtio-mmio and over virtio-pci side by side (several runs each:
//! medians and spread), through qemu-storage-daemon on the same image, beside the host's
//! own pread/pwrite on that file; and the vmm's exits per request on each transport.
//! With `--format qcow2`, also raw vs qcow2 vs qemu-storage-daemon's qcow2
//! (`blk_format.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_vmm::config::Transport;

use super::host_io::{self, Pattern, Throughput};
use super::runs::{self, run_ms, RunExits, Spread, TRANSPORTS};
use super::{guest_transport, qsd};
use crate::cli::BlkBenchArgs;

#[path = "blk_format.rs"]
mod format;

/// The tests, as the guest runs them.
pub(super) const TESTS: [(Pattern, u64, u32); 8] = [
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
pub(super) struct GuestRun {
    pub(super) results: HashMap<(String, u64, u32), Throughput>,
    kicks: u64,
    exits: RunExits,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BlkBenchArgs) -> i32 {
    super::exit_status(run(&args))
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
        "bulkhead bench blk: {} ({} MiB), {} runs per transport of {} ms per test (odd runs \
         twice that), guest polls its used ring (interrupts suppressed)",
        image.display(),
        std::fs::metadata(image).map(|m| m.len() >> 20).unwrap_or(0),
        args.runs,
        args.ms
    );
    let disk = format!("path={}", image.display());
    let mut ours: Vec<(Transport, Result<Vec<GuestRun>, String>)> = Vec::new();
    for t in TRANSPORTS {
        println!("running the guest on bulkhead-blk over {t} ...");
        let runs = (0..args.runs)
            .map(|i| guest_run(&exe, t, &disk, run_ms(args.ms, i)))
            .collect::<Result<Vec<_>, _>>();
        if let Err(e) = &runs {
            println!("  {t} failed: {e}");
        }
        ours.push((t, runs));
    }
    let theirs = if args.no_qsd {
        None
    } else {
        println!("running the guest on qemu-storage-daemon (mmio, one run) ...");
        match qsd::start(image, false, "bench") {
            Ok(qsd) => {
                let socket = format!("socket={}", qsd.socket.display());
                guest_run(&exe, Transport::Mmio, &socket, args.ms)
                    .map_err(|e| println!("  failed: {e}"))
                    .ok()
            }
            Err(e) => {
                println!("  skipped: {e}");
                None
            }
        }
    };
    println!("running the host's own pread/pwrite ...");
    println!();
    println!("IOPS and MB/s: median over the runs, ± half their range in percent of it");
    println!(
        "{:<9} {:>6} {:>2} | {:>29} | {:>29} | {:>7} | {:>22} | {:>22} | {:>7}",
        "test",
        "bs",
        "qd",
        "bulkhead-blk mmio",
        "bulkhead-blk pci",
        "pci/mmio",
        "qemu-storage-daemon",
        "host pread/pwrite",
        "pci/host"
    );
    let spread = |t: Transport, key: &(String, u64, u32), f: fn(&Throughput) -> f64| {
        let runs = ours.iter().find(|(o, _)| *o == t)?.1.as_ref().ok()?;
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.results.get(key))
            .map(f)
            .collect();
        Spread::of(&v)
    };
    for (pattern, bs, qd) in TESTS {
        let key = (pattern.name().to_owned(), bs, qd);
        let host = host_io::run(image, pattern, bs, qd, Duration::from_millis(args.ms))
            .map_err(|e| format!("host {} on {}: {e}", pattern.name(), image.display()))?;
        let ours_cell = |t| {
            let iops = spread(t, &key, Throughput::iops);
            let mbps = spread(t, &key, Throughput::mbps).map_or(0.0, |s| s.median);
            runs::cell(iops, |v| format!("{v:>7.0} IOPS {mbps:>6.1} MB/s"))
        };
        let one = |t: Option<&Throughput>| match t {
            Some(t) => format!("{:>8.0} IOPS {:>7.1} MB/s", t.iops(), t.mbps()),
            None => "-".into(),
        };
        let pci = spread(Transport::Pci, &key, Throughput::iops);
        let host_iops = Spread::of(&[host.iops()]);
        println!(
            "{:<9} {:>6} {:>2} | {:>29} | {:>29} | {:>7} | {:>22} | {:>22} | {:>7}",
            pattern.name(),
            bs,
            qd,
            ours_cell(Transport::Mmio),
            ours_cell(Transport::Pci),
            runs::ratio(pci, spread(Transport::Mmio, &key, Throughput::iops)),
            one(theirs.as_ref().and_then(|r| r.results.get(&key))),
            one(Some(&host)),
            runs::ratio(pci, host_iops),
        );
    }
    println!();
    let mut failed = Vec::new();
    for (t, runs) in &ours {
        match runs {
            Ok(runs) => {
                let exits: Vec<RunExits> = runs.iter().map(|r| r.exits.clone()).collect();
                let kicks: Vec<u64> = runs.iter().map(|r| r.kicks).collect();
                println!("{}", runs::exits_summary(*t, &exits));
                println!("     kicks per run: {kicks:?}");
            }
            Err(e) => {
                println!("{t:<4} failed: {e}");
                failed.push(t.as_str());
            }
        }
    }
    println!(
        "(set-up exits are device discovery and configuration, port I/O exits the guest's \
         serial console; the requests go guest -> ioeventfd -> backend -> irqfd/MSI without \
         an exit)"
    );
    if args.format == Some(bulkhead_devices::image::ImageFormat::Qcow2) {
        println!();
        if let Err(e) = format::compare(&exe, image, args) {
            println!("bench blk --format qcow2: {e}");
            failed.push("qcow2");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the guest benchmark failed on {}",
            failed.join(", ")
        ))
    }
}

/// Boots the test guest's `blk-bench` on `disk` over transport `t` for `ms` per test and
/// collects its lines and the vmm's exits; checks it had its disk on `t`.
pub(super) fn guest_run(exe: &Path, t: Transport, disk: &str, ms: u64) -> Result<GuestRun, String> {
    let out = Command::new(exe)
        .args(["run", "--report-stats", "--memory", "512", "--disk", disk])
        .args(["--transport", t.as_str()])
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
            "the guest benchmark on {disk} over {t} failed ({}):\n{stdout}\n{stderr}",
            out.status
        ));
    }
    guest_transport::check(t, &stdout)?;
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
    let requests = results.values().map(|r| r.ios).sum();
    let exits = RunExits::parse(&stderr, requests)
        .ok_or_else(|| format!("no bulkhead-stats line from the vmm:\n{stderr}"))?;
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
