//! The baseline of `bench density` that is no VM at all: N clone+execs of a statically
//! linked program at once (`PROGRAM true`, spawn to exit, and the CPU they took), then N
//! of `PROGRAM sleep` for the memory a minimal process costs (PSS, MemAvailable).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bulkhead_vmm::kvm::run_loop::monotonic_ns;

use super::{procs, spread};

/// The clone+exec baseline's figures.
pub struct Bare {
    pub exit_ms: Vec<f64>,
    pub cpu_ms: f64,
    pub pss_kib: f64,
    pub avail_kib: f64,
}

/// `n` clone+execs of `program true` at once (spawn to exit), then `n` of `program sleep`
/// for their memory.
pub fn phase(program: &Path, n: u32, sleep_secs: u64) -> Result<Bare, String> {
    let barrier = Arc::new(Barrier::new(n as usize));
    let cpu_before = procs::children_cpu_ns();
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, program) = (barrier.clone(), program.to_path_buf());
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = monotonic_ns();
                let status = Command::new(&program)
                    .arg("true")
                    .stdin(Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => Ok((monotonic_ns() - t0) as f64 / 1e6),
                    Ok(s) => Err(format!("{} true: {s}", program.display())),
                    Err(e) => Err(format!("starting {}: {e}", program.display())),
                }
            })
        })
        .collect();
    let mut exit_ms = Vec::new();
    for t in threads {
        exit_ms.push(
            t.join()
                .map_err(|_| "a clone+exec thread panicked".to_string())??,
        );
    }
    let cpu_ms = procs::children_cpu_ns().saturating_sub(cpu_before) as f64 / 1e6 / f64::from(n);
    let avail_before = procs::mem_available_kib()?;
    let mut sleepers = Vec::new();
    let spawned: Result<(), String> = (0..n).try_for_each(|_| {
        let c = Command::new(program)
            .args(["sleep", &sleep_secs.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {} sleep: {e}", program.display()))?;
        sleepers.push(c);
        Ok(())
    });
    // Let each reach its sleep (spawn returns at exec, before the program ran).
    std::thread::sleep(Duration::from_millis(500));
    let avail_running = procs::mem_available_kib()?;
    let pss: u64 = sleepers
        .iter()
        .filter_map(|c| procs::pss_kib(c.id()))
        .map(|(p, _)| p)
        .sum();
    for c in &mut sleepers {
        let _ = c.kill();
        let _ = c.wait();
    }
    spawned?;
    let bare = Bare {
        exit_ms,
        cpu_ms,
        pss_kib: pss as f64 / f64::from(n),
        avail_kib: avail_before.saturating_sub(avail_running) as f64 / f64::from(n),
    };
    println!("clone+exec of {} ({n} at once):", program.display());
    println!("  start to exit (`true`): {}", spread(&bare.exit_ms));
    println!("  CPU per run: {:.2} ms", bare.cpu_ms);
    println!(
        "  memory per process (`sleep`): PSS {:.2} MiB, MemAvailable drop {:.2} MiB",
        bare.pss_kib / 1024.0,
        bare.avail_kib / 1024.0
    );
    Ok(bare)
}
