//! `bulkhead bench boot`: start-up time, CPU and memory overhead of `bulkhead run`, over
//! several runs.
//!
//! Each run starts `bulkhead run --report-stats --boot-timer` as a child and measures,
//! from just before the spawn (CLOCK_MONOTONIC): the first guest entry (reported by the
//! vmm), the first line on the guest's serial console (read here), and the child's exit
//! (the guest powered off); the CPU (user + system) to start: the launcher's own (whole
//! run: it idles once the VM runs) and the vmm's until it said Ready (reported by each);
//! the CPU of the launcher and every process it started and reaped over the whole run,
//! guest included (`RUSAGE_CHILDREN` before and after); the vmm's peak RSS beside the
//! part of it that is guest memory. `--devices` gives the VM a disk, a network device
//! (`--net auto`) and a console, each in its own process; `--jail off` starts them
//! plainly; `--compare` alternates each run with one started as earlier versions did
//! (`BULKHEAD_START=serial`); `--trace` prints the median time of every step of the
//! start-up trace (`launch::trace`). The baseline, measured in the same run, is starting
//! and ending the same binary without a VM (`bulkhead --version`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bulkhead_vmm::kvm::run_loop::monotonic_ns;

use super::median;
use crate::cli::BootBenchArgs as BenchArgs;
use crate::launch::trace;

/// One boot's figures, in microseconds and KiB.
#[derive(Debug, Default, Clone)]
struct Sample {
    entry_us: f64,
    first_line_us: f64,
    exit_us: f64,
    cpu_us: f64,
    /// The launcher's own CPU and the vmm's, each until the vmm said Ready.
    start_cpu_us: f64,
    /// The launcher's own CPU over its whole run (supervising, stopping, the deferred
    /// sweep of what gone launchers left).
    launcher_run_cpu_us: f64,
    overhead_kib: u64,
    peak_kib: u64,
    /// (process, step) → microseconds after the spawn.
    steps: Vec<((String, String), f64)>,
}

/// The two ways a VM is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StartPath {
    /// As `bulkhead run` does now.
    Current,
    /// `BULKHEAD_START=serial`.
    Serial,
}

impl StartPath {
    fn name(self) -> &'static str {
        match self {
            StartPath::Current => "concurrent",
            StartPath::Serial => "serial (BULKHEAD_START=serial)",
        }
    }
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
        "bulkhead bench: {} boots of {what}, {} MiB, {} vCPU(s), {}, {}",
        args.runs,
        args.memory,
        args.cpus,
        if args.devices {
            "with a disk, --net auto and a console file"
        } else {
            "no devices"
        },
        if args.jail { "jailed" } else { "--jail off" }
    );
    let scratch = Scratch::new()?;
    let paths: &[StartPath] = if args.compare {
        &[StartPath::Current, StartPath::Serial]
    } else {
        &[StartPath::Current]
    };
    let mut baseline = Vec::new();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    for i in 0..args.runs {
        baseline.push(time_version(&exe)?);
        for (k, &path) in paths.iter().enumerate() {
            let s = boot_once(&exe, args, path, &scratch)?;
            println!(
                "  run {:>2} {:<10}: entry {:>7.2} ms  first line {:>7.2} ms  power-off {:>7.2} ms  CPU to start {:>5.2} ms, whole run {:>6.2} ms  overhead {:>6} KiB (peak RSS {} KiB)",
                i + 1,
                if path == StartPath::Current { "" } else { "serial" },
                s.entry_us / 1e3,
                s.first_line_us / 1e3,
                s.exit_us / 1e3,
                s.start_cpu_us / 1e3,
                s.cpu_us / 1e3,
                s.overhead_kib,
                s.peak_kib
            );
            samples[k].push(s);
        }
    }
    let base = median(&baseline);
    println!(
        "baseline (bulkhead --version, start to exit): {:.2} ms median",
        base / 1e3
    );
    for (k, &path) in paths.iter().enumerate() {
        summarize(path, &samples[k], args);
    }
    Ok(())
}

/// Median and spread (min..max) of `f` over `samples`, in ms.
fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> String {
    let v: Vec<f64> = samples.iter().map(f).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!(
        "{:>7.2} ms median ({:.2} .. {:.2})",
        median(&v) / 1e3,
        min / 1e3,
        max / 1e3
    )
}

fn summarize(path: StartPath, samples: &[Sample], args: &BenchArgs) {
    println!("{} start, over {} runs:", path.name(), samples.len());
    println!(
        "  start to guest entry:      {}",
        spread(samples, |s| s.entry_us)
    );
    println!(
        "  start to first guest line: {}{}",
        spread(samples, |s| s.first_line_us),
        if args.devices && args.jail {
            " (goal < 30 ms)"
        } else {
            ""
        }
    );
    println!(
        "  start to power-off:        {}",
        spread(samples, |s| s.exit_us)
    );
    println!(
        "  CPU to start: launcher + vmm until Ready: {}{}",
        spread(samples, |s| s.start_cpu_us),
        if !args.jail && !args.devices {
            " (goal <= 6 ms)"
        } else {
            ""
        }
    );
    println!(
        "  CPU of the launcher, whole run (start, supervision, stop): {}",
        spread(samples, |s| s.launcher_run_cpu_us)
    );
    println!(
        "  CPU of all processes, whole run (the guest's own included): {}",
        spread(samples, |s| s.cpu_us)
    );
    let overhead = median(
        &samples
            .iter()
            .map(|s| s.overhead_kib as f64)
            .collect::<Vec<_>>(),
    );
    println!(
        "  vmm overhead (peak RSS - guest memory): {overhead:.0} KiB = {:.2} MiB",
        overhead / 1024.0
    );
    if args.trace {
        print_steps(samples);
    }
}

/// The median time of each step of the trace, in order.
fn print_steps(samples: &[Sample]) {
    let mut by_step: BTreeMap<&(String, String), Vec<f64>> = BTreeMap::new();
    for s in samples {
        for (step, us) in &s.steps {
            by_step.entry(step).or_default().push(*us);
        }
    }
    let mut rows: Vec<(f64, f64, f64, &(String, String))> = by_step
        .into_iter()
        .map(|(step, v)| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            (median(&v), min, max, step)
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("  start-up trace, ms after the spawn of bulkhead run (median, min .. max):");
    for (med, min, max, (process, step)) in rows {
        println!(
            "    {:>7.2}  ({:>7.2} .. {:>7.2})  {process:<9} {step}",
            med / 1e3,
            min / 1e3,
            max / 1e3
        );
    }
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

/// The disk image and console file of `--devices`, removed on drop.
struct Scratch {
    image: PathBuf,
    console: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let s = Scratch {
            image: dir.join(format!("bulkhead-bench-boot-{id}.img")),
            console: dir.join(format!("bulkhead-bench-boot-{id}.log")),
        };
        std::fs::File::create(&s.image)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(|e| format!("creating {}: {e}", s.image.display()))?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_file(&self.console);
    }
}

/// CPU (user + system) of this process's reaped children so far, in microseconds.
fn children_cpu_us() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return 0.0;
    };
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    us(usage.user_time()) + us(usage.system_time())
}

fn boot_once(
    exe: &Path,
    args: &BenchArgs,
    path: StartPath,
    scratch: &Scratch,
) -> Result<Sample, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--report-stats")
        .arg("--boot-timer")
        .args([
            "--memory",
            &args.memory.to_string(),
            "--cpus",
            &args.cpus.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !args.jail {
        cmd.args(["--jail", "off"]);
    }
    if args.devices {
        let _ = std::fs::remove_file(&scratch.console);
        cmd.arg("--disk")
            .arg(format!("path={}", scratch.image.display()))
            .args(["--net", "auto", "--console"])
            .arg(format!("file={}", scratch.console.display()));
    }
    if path == StartPath::Serial {
        cmd.env("BULKHEAD_START", "serial");
    }
    if let Some(k) = &args.kernel {
        cmd.arg("--kernel").arg(k);
    }
    let cpu0 = children_cpu_us();
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
            Ok(n) if first_line_ns == 0 && buf[..n].contains(&b'\n') => {
                first_line_ns = monotonic_ns()
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the guest console: {e}")),
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for bulkhead run: {e}"))?;
    let exit_ns = monotonic_ns();
    let cpu_us = children_cpu_us() - cpu0;
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
    let start_cpu_us = (field("launcher_ready_cpu_us")? + field("ready_cpu_us")?) as f64;
    let launcher_run_cpu_us = field("launcher_cpu_us")? as f64;
    let peak = field("vm_hwm_kib")?;
    let shmem = field("rss_shmem_kib")?;
    let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
    let steps = stderr
        .lines()
        .filter_map(trace::parse)
        .map(|(t, process, step)| ((process.to_owned(), step.to_owned()), us(t)))
        .collect();
    Ok(Sample {
        entry_us: us(entry_ns),
        first_line_us: us(first_line_ns),
        exit_us: us(exit_ns),
        cpu_us,
        start_cpu_us,
        launcher_run_cpu_us,
        overhead_kib: peak.saturating_sub(shmem),
        peak_kib: peak,
        steps,
    })
}
