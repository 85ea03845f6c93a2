//! `bulkhead bench confine`: what confinement costs. The same VM (the test guest with a
//! scratch disk, a network device in its own namespace and a console file, each in its own
//! process) started confined (the default: jailer, seccomp, landlock) and unconfined
//! (`--jail off --seccomp off --landlock off`), alternating, over several runs. Figures:
//! the time from starting `bulkhead run` to the guest's first console line, and the total
//! RSS of all the VM's processes (launcher, vmm, backends) minus guest memory (the shared
//! memfd pages every process maps), sampled once every process serves.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bulkhead_vmm::kvm::run_loop::monotonic_ns;
use bulkhead_vmm::process::status_kib;

use super::median;
use crate::cli::ConfineBenchArgs as BenchArgs;

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_line_ms: f64,
    rss_kib: u64,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    super::exit_status(run(&args))
}

fn run(args: &BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the bulkhead binary: {e}"))?;
    let dir = std::env::temp_dir();
    let image = dir.join(format!("bulkhead-bench-confine-{}.img", std::process::id()));
    let console = dir.join(format!("bulkhead-bench-confine-{}.log", std::process::id()));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .map_err(|e| format!("creating {}: {e}", image.display()))?;
    println!(
        "bulkhead bench confine: {} runs each of the test guest with a disk, a network device \
         and a console, confined and unconfined",
        args.runs
    );
    let mut confined = Vec::new();
    let mut unconfined = Vec::new();
    let result = (|| {
        for i in 0..args.runs {
            for (jailed, samples) in [(true, &mut confined), (false, &mut unconfined)] {
                let s = run_once(&exe, jailed, &image, &console)?;
                println!(
                    "  run {:>2} {:<10}: first line {:>7.2} ms, RSS minus guest memory {:>6} KiB",
                    i + 1,
                    if jailed { "confined" } else { "unconfined" },
                    s.first_line_ms,
                    s.rss_kib
                );
                samples.push(s);
            }
        }
        Ok::<(), String>(())
    })();
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&console);
    result?;
    let first = |v: &[Sample]| median(&v.iter().map(|s| s.first_line_ms).collect::<Vec<_>>());
    let rss = |v: &[Sample]| median(&v.iter().map(|s| s.rss_kib as f64).collect::<Vec<_>>());
    println!("median over {} runs:", args.runs);
    println!(
        "  start to first guest line: confined {:.2} ms, unconfined {:.2} ms ({:.2}x)",
        first(&confined),
        first(&unconfined),
        first(&confined) / first(&unconfined)
    );
    println!(
        "  RSS of all processes minus guest memory: confined {:.2} MiB, unconfined {:.2} MiB ({:.2}x)",
        rss(&confined) / 1024.0,
        rss(&unconfined) / 1024.0,
        rss(&confined) / rss(&unconfined)
    );
    Ok(())
}

fn run_once(exe: &Path, jailed: bool, image: &Path, console: &Path) -> Result<Sample, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--disk")
        .arg(format!("path={}", image.display()))
        .args(["--net", "auto"])
        .arg("--console")
        .arg(format!("file={}", console.display()))
        .args([
            "--cmdline",
            "bulkhead.test=net-serve bulkhead.net.serve-ms=300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if !jailed {
        cmd.args(["--jail", "off", "--seccomp", "off", "--landlock", "off"]);
    }
    let t0 = monotonic_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting bulkhead run: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut first_line_ns = 0;
    let mut rss_kib = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if first_line_ns == 0 {
            first_line_ns = monotonic_ns();
        }
        if line.contains("serving ip=") {
            rss_kib = Some(rss_minus_shmem(child.id()));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for bulkhead run: {e}"))?;
    if !status.success() {
        return Err(format!(
            "bulkhead run ({}) failed: {status}",
            if jailed { "confined" } else { "unconfined" }
        ));
    }
    Ok(Sample {
        first_line_ms: first_line_ns.saturating_sub(t0) as f64 / 1e6,
        rss_kib: rss_kib.ok_or("the guest never served the network")?,
    })
}

/// VmRSS minus RssShmem of `pid` and its children, in KiB.
fn rss_minus_shmem(pid: u32) -> u64 {
    let mut pids = vec![pid];
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok()),
    );
    pids.iter()
        .map(|p| {
            let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{p}/status")))
                .unwrap_or_default();
            status_kib(&status, "VmRSS:").saturating_sub(status_kib(&status, "RssShmem:"))
        })
        .sum()
}
