//! `bulkhead bench vsock`: stream throughput and round-trip latency between a host program
//! and the guest through `bulkhead-vsock` (hybrid vsock: CONNECT to the guest's
//! `vsock-echo`), over virtio-mmio and virtio-pci, beside the same workload over a Unix
//! socket pair on the host (an echo thread) in the same run. Each figure is the median over
//! `--runs` runs with its spread; throughput counts the bytes sent (each also comes back).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_vmm::config::Transport;

use super::runs::{cell, ratio, Spread};
use crate::cli::VsockBenchArgs;

/// Bytes per write in the throughput test.
const CHUNK: usize = 64 * 1024;
/// Bytes per round trip in the latency test (the guest's `vsock-latency` size).
const PING: usize = 64;

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Figures {
    /// MiB/s each way.
    mib_s: f64,
    /// Median round trip, µs.
    rtt_us: f64,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: VsockBenchArgs) -> i32 {
    super::exit_status(bench(&args))
}

fn bench(args: &VsockBenchArgs) -> Result<(), String> {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for t in [Transport::Mmio, Transport::Pci] {
        let mut figures = Vec::new();
        for i in 0..args.runs {
            match guest_run(t, args, i) {
                Ok(f) => figures.push(f),
                Err(e) => {
                    eprintln!("bulkhead bench vsock: {t} run {i}: {e}");
                    failed.push(format!("{t} run {i}"));
                }
            }
        }
        rows.push((t.as_str().to_owned(), figures));
    }
    let mut host = Vec::new();
    for _ in 0..args.runs {
        host.push(host_run(args)?);
    }
    rows.push(("unix socket pair (host)".to_owned(), host));
    let spread =
        |f: &[Figures], g: fn(&Figures) -> f64| Spread::of(&f.iter().map(g).collect::<Vec<_>>());
    let host_tp = spread(&rows[rows.len() - 1].1, |f| f.mib_s);
    let host_rtt = spread(&rows[rows.len() - 1].1, |f| f.rtt_us);
    println!(
        "vsock: {} MiB echoed per run, {} round trips of {PING} bytes; medians over {} runs (± half the range)",
        args.mib, args.rounds, args.runs
    );
    println!(
        "{:<26} {:>18} {:>10} {:>18} {:>10}",
        "path", "MiB/s each way", "vs host", "round trip µs", "vs host"
    );
    for (name, f) in &rows {
        let (tp, rtt) = (spread(f, |f| f.mib_s), spread(f, |f| f.rtt_us));
        println!(
            "{name:<26} {:>18} {:>10} {:>18} {:>10}",
            cell(tp, |v| format!("{v:.1}")),
            ratio(tp, host_tp),
            cell(rtt, |v| format!("{v:.1}")),
            ratio(rtt, host_rtt),
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("the vsock runs failed: {}", failed.join(", ")))
    }
}

/// The workload on `stream` (an echo at its other end): `mib` MiB through it (written
/// by a thread while this one reads it back), then `rounds` round trips of [`PING`] bytes.
fn workload(stream: UnixStream, mib: u64, rounds: u32) -> Result<Figures, String> {
    let io = |e: std::io::Error| e.to_string();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let total = (mib << 20) as usize;
    let mut writer = stream.try_clone().map_err(io)?;
    let start = Instant::now();
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            writer.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut reader = &stream;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0usize;
    while got < total {
        match reader.read(&mut buf) {
            Ok(0) => return Err(format!("the echo ended after {got} of {total} bytes")),
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading the echo after {got} bytes: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    sending
        .join()
        .map_err(|_| "the writer panicked".to_owned())?
        .map_err(io)?;
    let mut rtts = Vec::with_capacity(rounds as usize);
    let ping = [0xa5u8; PING];
    let mut pong = [0u8; PING];
    let mut s = &stream;
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&ping).map_err(io)?;
        s.read_exact(&mut pong).map_err(io)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(Figures {
        mib_s: mib as f64 / secs,
        rtt_us: super::median(&rtts),
    })
}

/// The same workload over a Unix socket pair with an echo thread.
fn host_run(args: &VsockBenchArgs) -> Result<Figures, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut s = &theirs;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let f = workload(ours, args.mib, args.rounds);
    let _ = echo.join();
    f
}

/// Boots the guest's `vsock-echo` over `t` and runs the workload through hybrid vsock.
fn guest_run(t: Transport, args: &VsockBenchArgs, i: u32) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding bulkhead: {e}"))?;
    let uds = std::env::temp_dir().join(format!(
        "bulkhead-bench-vsock-{}-{t}-{i}.sock",
        std::process::id()
    ));
    let mut child = Command::new(exe)
        .args(["run", "--transport", t.as_str()])
        .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
        .arg("--cmdline")
        .arg("bulkhead.test=vsock-echo bulkhead.vsock-streams=1 bulkhead.vsock-ms=600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting bulkhead: {e}"))?;
    let result = connect(&uds).and_then(|s| workload(s, args.mib, args.rounds));
    // The stream closed: the guest's echo ends and the VM stops; make sure it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    match result {
        Ok(f) if status.success() => Ok(f),
        Ok(_) => Err(format!("bulkhead ended with {status}: {stderr}")),
        Err(e) => Err(format!("{e}; bulkhead ended with {status}: {stderr}")),
    }
}

/// A stream to the guest's echo port 5000 through hybrid vsock at `uds`, retried until
/// the guest listens.
fn connect(uds: &Path) -> Result<UnixStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let path: PathBuf = uds.to_owned();
    while Instant::now() < deadline {
        if let Ok(mut s) = UnixStream::connect(&path) {
            if s.write_all(b"CONNECT 5000\n").is_ok() {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while matches!(s.read(&mut b), Ok(1)) && b[0] != b'\n' && line.len() < 32 {
                    line.push(b[0]);
                }
                if line.starts_with(b"OK ") {
                    return Ok(s);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no OK on {} within 60 s", uds.display()))
}
