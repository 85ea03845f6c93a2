//! `bulkhead bench boot`: start-up time and memory overhead of `bulkhead run`, over several
//! runs.
//!
//! Each run starts `bulkhead run --report-stats` as a child and measures, from just before
//! the spawn (CLOCK_MONOTONIC): the first guest entry (reported by the child), the first
//! byte on the guest's serial console, and the child's exit (the guest powered off). The
//! child reports its peak RSS and the part of its RSS that is guest memory (shared memfd
//! pages); their difference is the vmm's own overhead. The baseline, measured in the same
//! run, is starting and ending the same binary without a VM (`bulkhead --version`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bulkhead_vmm::kvm::run_loop::monotonic_ns;

use super::median;
use crate::cli::BootBenchArgs as BenchArgs;

/// One boot's figures, in microseconds and KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    entry_us: f64,
    first_line_us: f64,
    exit_us: f64,
    overhead_kib: u64,
    peak_kib: u64,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    super::exit_status(run(&args))
}

fn run(args: &BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the bulkhead binary: {e}"))?;
    let what = args
        .kernel
        .as_ref()
        .map(|k| k.display().to_string())
        .unwrap_or_else(|| "the built-in test guest".into());
    println!(
        "bulkhead bench: {} boots of {what}, {} MiB, {} vCPU(s)",
        args.runs, args.memory, args.cpus
    );
    let mut baseline = Vec::new();
    let mut samples = Vec::new();
    for i in 0..args.runs {
        baseline.push(time_version(&exe)?);
        let s = boot_once(&exe, args)?;
        println!(
            "  run {:>2}: entry {:>8.2} ms  first line {:>8.2} ms  power-off {:>8.2} ms  overhead {:>6} KiB (peak RSS {} KiB)",
            i + 1,
            s.entry_us / 1e3,
            s.first_line_us / 1e3,
            s.exit_us / 1e3,
            s.overhead_kib,
            s.peak_kib
        );
        samples.push(s);
    }
    let base = median(&baseline);
    let entry = median(&samples.iter().map(|s| s.entry_us).collect::<Vec<_>>());
    let first = median(&samples.iter().map(|s| s.first_line_us).collect::<Vec<_>>());
    let exit = median(&samples.iter().map(|s| s.exit_us).collect::<Vec<_>>());
    let overhead = median(
        &samples
            .iter()
            .map(|s| s.overhead_kib as f64)
            .collect::<Vec<_>>(),
    );
    println!("median over {} runs:", samples.len());
    println!(
        "  baseline (bulkhead --version, start to exit): {:.2} ms",
        base / 1e3
    );
    println!(
        "  start to guest entry:      {:>8.2} ms  ({:.1}x baseline; goal < 10 ms)",
        entry / 1e3,
        entry / base
    );
    println!(
        "  start to first guest line: {:>8.2} ms  ({:.1}x baseline)",
        first / 1e3,
        first / base
    );
    println!(
        "  start to power-off:        {:>8.2} ms  ({:.1}x baseline)",
        exit / 1e3,
        exit / base
    );
    println!(
        "  vmm overhead (peak RSS - guest memory): {:.0} KiB = {:.2} MiB (goal < 5 MiB)",
        overhead,
        overhead / 1024.0
    );
    Ok(())
}

/// Microseconds to start and end `bulkhead --version`.
fn time_version(exe: &PathBuf) -> Result<f64, String> {
    let t0 = monotonic_ns();
    let status = Command::new(exe)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running {} --version: {e}", exe.display()))?;
    if !status.success() {
        return Err(format!("{} --version failed: {status}", exe.display()));
    }
    Ok((monotonic_ns() - t0) as f64 / 1e3)
}

fn boot_once(exe: &PathBuf, args: &BenchArgs) -> Result<Sample, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--report-stats")
        .args([
            "--memory",
            &args.memory.to_string(),
            "--cpus",
            &args.cpus.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = &args.kernel {
        cmd.arg("--kernel").arg(k);
    }
    let t0 = monotonic_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting bulkhead run: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut first_line_ns = 0;
    let mut buf = [0u8; 4096];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(_) if first_line_ns == 0 => first_line_ns = monotonic_ns(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the guest console: {e}")),
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for bulkhead run: {e}"))?;
    let exit_ns = monotonic_ns();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("bulkhead run failed ({status}):\n{stderr}"));
    }
    let field = |name: &str| -> Result<u64, String> {
        stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bulkhead run did not report {name}:\n{stderr}"))
    };
    let entry_ns = field("first_entry_monotonic_ns")?;
    let peak = field("vm_hwm_kib")?;
    let shmem = field("rss_shmem_kib")?;
    let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
    Ok(Sample {
        entry_us: us(entry_ns),
        first_line_us: us(first_line_ns),
        exit_us: us(exit_ns),
        overhead_kib: peak.saturating_sub(shmem),
        peak_kib: peak,
    })
}
