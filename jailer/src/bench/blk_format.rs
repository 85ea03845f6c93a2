//! `bulkhead bench blk --format qcow2`: the guest's block benchmark, in one run, on the
//! raw image and on a fully allocated qcow2 copy of it (`qemu-img convert`), each served
//! by a standalone `bulkhead-blk` (`--blk-file F --format raw|qcow2 --socket-path S`,
//! `bulkhead run --disk socket=S`, virtio-mmio, `--runs` runs each: medians and spread),
//! and on an identical qcow2 copy served by qemu-storage-daemon (its qcow2 driver) the
//! same number of times. Prints qcow2/raw (the goal: 4 KiB random reads within 20%) and ours/QSD.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_vmm::config::Transport;

use super::host_io::Throughput;
use super::runs::{self, run_ms, Spread};
use super::{guest_run, qsd, GuestRun, TESTS};
use crate::cli::BlkBenchArgs;

/// A file removed when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A standalone bulkhead-blk on a socket, killed (by pid) when dropped.
struct Standalone {
    child: Child,
    socket: PathBuf,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Standalone {
    fn start(exe: &Path, image: &Path, format: &str) -> Result<Standalone, String> {
        let program = exe.with_file_name("bulkhead-blk");
        let socket = std::env::temp_dir().join(format!(
            "bulkhead-bench-{format}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(&program)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--blk-file")
            .arg(image)
            .args(["--format", format])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let mut me = Standalone { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !me.socket.exists() {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(format!("bulkhead-blk on {}: {status}", image.display()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "bulkhead-blk made no socket for {}",
                    image.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }
}

/// A fully allocated qcow2 copy of `raw` at `dest` (`qemu-img convert`).
fn qcow2_copy(raw: &Path, dest: &Path) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(dest)
        .output()
        .map_err(|e| format!("qemu-img (package qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img convert to {}: {}",
            dest.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Makes the qcow2 copies of `raw`, runs the three, prints the table.
pub fn compare(exe: &Path, raw: &Path, args: &BlkBenchArgs) -> Result<(), String> {
    let scratch = |what: &str| {
        Removed(std::env::temp_dir().join(format!("bulkhead-bench-{}{what}", std::process::id())))
    };
    let qcow2 = scratch(".qcow2");
    qcow2_copy(raw, &qcow2.0)?;
    // qemu-storage-daemon gets a copy of its own: both servers hold their image's write
    // lock (and would each refuse the other), and two writers of one qcow2 corrupt it.
    let qsd_qcow2 = scratch("-qsd.qcow2");
    if !args.no_qsd {
        qcow2_copy(raw, &qsd_qcow2.0)?;
    }
    println!(
        "bench blk --format qcow2: {} and its fully allocated qcow2 copy {}, {} runs each \
         on virtio-mmio",
        raw.display(),
        qcow2.0.display(),
        args.runs
    );
    // All three backends up first; then the runs interleaved (raw, qcow2, QSD, raw, ...),
    // so that the machine's load at any moment weighs on each alike.
    let raw_backend = Standalone::start(exe, raw, "raw");
    let qcow2_backend = Standalone::start(exe, &qcow2.0, "qcow2");
    let qsd_backend = if args.no_qsd {
        Err("--no-qsd".to_string())
    } else {
        qsd::start_as(&qsd_qcow2.0, "qcow2", false, "bench-qcow2").map_err(|e| e.to_string())
    };
    let sockets = [
        raw_backend.as_ref().map(|b| b.socket.clone()),
        qcow2_backend.as_ref().map(|b| b.socket.clone()),
        qsd_backend.as_ref().map(|q| q.socket.clone()),
    ];
    let names = [
        "bulkhead-blk raw",
        "bulkhead-blk qcow2",
        "qemu-storage-daemon qcow2",
    ];
    let mut columns: Vec<(&str, Result<Vec<GuestRun>, String>)> = names
        .iter()
        .zip(&sockets)
        .map(|(n, s)| (*n, s.clone().map(|_| Vec::new()).map_err(|e| e.clone())))
        .collect();
    for i in 0..args.runs {
        println!("run {} of {} on each backend ...", i + 1, args.runs);
        for (column, socket) in columns.iter_mut().zip(&sockets) {
            let (Ok(runs), Ok(socket)) = (&mut column.1, socket) else {
                continue;
            };
            let disk = format!("socket={}", socket.display());
            match guest_run(exe, Transport::Mmio, &disk, run_ms(args.ms, i)) {
                Ok(run) => runs.push(run),
                Err(e) => {
                    println!("  {} failed: {e}", column.0);
                    column.1 = Err(e);
                }
            }
        }
    }
    for (name, runs) in &columns {
        if let Err(e) = runs {
            println!("{name}: not measured: {e}");
        }
    }
    println!();
    println!("IOPS: median over the runs, ± half their range in percent of it");
    println!(
        "{:<9} {:>6} {:>2} | {:>22} | {:>22} | {:>10} | {:>25} | {:>9}",
        "test", "bs", "qd", columns[0].0, columns[1].0, "qcow2/raw", columns[2].0, "ours/QSD"
    );
    let spread = |c: usize, key: &(String, u64, u32)| -> Option<Spread> {
        let runs = columns[c].1.as_ref().ok()?;
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.results.get(key))
            .map(Throughput::iops)
            .collect();
        Spread::of(&v)
    };
    let mut goal = None;
    for (pattern, bs, qd) in TESTS {
        let key = (pattern.name().to_owned(), bs, qd);
        let cell = |c| runs::cell(spread(c, &key), |v| format!("{v:>9.0} IOPS"));
        let (raw, q, theirs) = (spread(0, &key), spread(1, &key), spread(2, &key));
        if bs == 4096 && pattern.name() == "randread" && qd == 1 {
            goal = q.zip(raw).map(|(q, r)| q.median / r.median);
        }
        println!(
            "{:<9} {:>6} {:>2} | {:>22} | {:>22} | {:>10} | {:>25} | {:>9}",
            pattern.name(),
            bs,
            qd,
            cell(0),
            cell(1),
            runs::ratio(q, raw),
            cell(2),
            runs::ratio(q, theirs),
        );
    }
    if let Some(g) = goal {
        println!(
            "goal: qcow2 within 20% of raw for 4 KiB random reads (qd 1): {:.2}x, {}",
            g,
            if g >= 0.8 { "met" } else { "NOT met" }
        );
    }
    let failed: Vec<&str> = columns
        .iter()
        .take(2)
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the guest benchmark failed on {}",
            failed.join(", ")
        ))
    }
}
