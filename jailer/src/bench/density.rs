//! `bulkhead bench density`: how many confined VMs this host holds and how fast it starts
//! them. N VMs (the test guest's `idle` scenario, each with a scratch disk, `--net auto`
//! and a console file, every device in its own jailed process) are started at once, as
//! an orchestrator would (`fleet.rs`: one thread and one `bulkhead run` per VM), and the
//! bench waits until every guest said it is idle. It then prints the start latency
//! distribution (to the guest's first line and to its idle line), VMs started per
//! second, the host memory each VM costs (the drop in MemAvailable, and the PSS of its
//! processes with the guest memory the guest touched counted apart), the CPU each start
//! took and the CPU the idle VMs use over a window; then stops them all (SIGTERM to each
//! launcher) and checks from outside that nothing is left (`leftovers.rs`), failing if
//! anything is. Baselines, in the same run: the same fleet under `--jail off`, and a bare
//! clone+exec of a statically linked program (`bare.rs`: `busybox true` to exit,
//! `busybox sleep` for memory), with ratios. Every phase is bounded; on any failure every
//! VM started is stopped (and killed if it does not stop).

mod bare;
mod fleet;
mod leftovers;
mod procs;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::DensityBenchArgs as BenchArgs;
use bare::Bare;
use fleet::{Fleet, Spec};
use leftovers::{Owner, Places};

/// What the idle guest prints once it waits (its readiness).
const READY_LINE: &str = "idle: waiting for ctrl-alt-del";
/// The guest's command line: the idle scenario alone.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off bulkhead.test=idle";
/// The exit status of `bulkhead run` stopped by SIGTERM (128 + 15).
const STOPPED_BY_SIGTERM: i32 = 143;
/// Where a statically linked busybox is looked for (Debian's busybox-static).
const STATIC_PROGRAMS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// One fleet's figures, per VM where it says so.
struct Figures {
    first_line_ms: Vec<f64>,
    ready_ms: Vec<f64>,
    per_second: f64,
    start_cpu_ms: f64,
    life_cpu_ms: f64,
    pss_kib: f64,
    guest_kib: f64,
    avail_kib: f64,
    idle_pct: f64,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    super::exit_status(run(&args))
}

fn run(args: &BenchArgs) -> Result<(), String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err("bench density runs as root (jails, cgroups, --net auto namespaces)".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding the bulkhead binary: {e}"))?;
    let program = match &args.static_program {
        Some(p) => p.clone(),
        None => STATIC_PROGRAMS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(
                "no static busybox (/bin/busybox; package busybox-static): give --static-program",
            )?,
    };
    let scratch =
        std::env::temp_dir().join(format!("bulkhead-bench-density-{}", std::process::id()));
    std::fs::create_dir(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let baseline = args.baseline_vms.unwrap_or(args.vms);
    println!(
        "bulkhead bench density: {} confined VMs started at once (test guest `idle`, {} MiB, a \
         disk, --net auto, a console file; every device its own jailed process); baselines: \
         {baseline} with --jail off, {} clone+exec of {}",
        args.vms,
        args.memory,
        args.vms,
        program.display()
    );
    let result = (|| {
        let confined = fleet_phase("confined", args.vms, &[], args, &exe, &scratch)?;
        let unconfined = match baseline {
            0 => None,
            m => Some(fleet_phase(
                "--jail off",
                m,
                &["--jail", "off"],
                args,
                &exe,
                &scratch,
            )?),
        };
        let bare = bare::phase(&program, args.vms, args.timeout_secs)?;
        print_ratios(&confined, unconfined.as_ref(), &bare);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Starts `n` VMs with `extra` arguments, measures them, stops them and checks they left
/// nothing.
fn fleet_phase(
    label: &str,
    n: u32,
    extra: &[&str],
    args: &BenchArgs,
    exe: &Path,
    scratch: &Path,
) -> Result<Figures, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let tag = if extra.is_empty() { "jailed" } else { "plain" };
    let mut specs = Vec::new();
    for i in 0..n {
        let image = scratch.join(format!("{tag}-{i}.img"));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(|e| format!("creating {}: {e}", image.display()))?;
        let mut a: Vec<OsString> = [
            "run",
            "--memory",
            &args.memory.to_string(),
            "--cmdline",
            CMDLINE,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        a.push("--disk".into());
        a.push(format!("path={}", image.display()).into());
        a.extend(["--net".into(), "auto".into(), "--console".into()]);
        a.push(
            format!(
                "file={}",
                scratch.join(format!("{tag}-{i}.console")).display()
            )
            .into(),
        );
        a.extend(extra.iter().map(OsString::from));
        specs.push(Spec {
            exe: exe.to_path_buf(),
            args: a,
            stderr: scratch.join(format!("{tag}-{i}.stderr")),
        });
    }
    println!("{label}: starting {n} VMs at once");
    let avail_before = procs::mem_available_kib()?;
    let cpu_before = procs::children_cpu_ns();
    let mut fleet = Fleet::start(specs, READY_LINE)?;
    if let Err(e) = fleet.wait_ready(timeout) {
        let stopped = fleet.stop(timeout).err().unwrap_or_default();
        let left = leftovers::find(&owners_now(&fleet, !extra.is_empty()), &Places::default());
        return Err(format!("{label}: {e}{stopped}{}", left_text(&left)));
    }
    let last_ready = fleet
        .vms
        .iter()
        .filter_map(|v| v.ready)
        .max()
        .unwrap_or(fleet.started);
    let span_s = last_ready.saturating_sub(fleet.started) as f64 / 1e9;
    // Let the launchers finish what follows readiness before sampling.
    std::thread::sleep(Duration::from_secs(1));
    let owners = owners_now(&fleet, !extra.is_empty());
    let avail_running = procs::mem_available_kib()?;
    for (o, vm) in owners.iter().zip(&fleet.vms) {
        let list: Vec<String> = o
            .procs
            .iter()
            .map(|p| format!("{} {}", p.comm, p.pid))
            .collect();
        println!(
            "  vm {:>3}: {}; uid {}; first line {:.2} ms, ready {:.2} ms",
            o.vm,
            list.join(", "),
            o.uid.map_or("-".into(), |u| u.to_string()),
            vm.first_line_ms().unwrap_or(0.0),
            vm.ready_ms().unwrap_or(0.0)
        );
    }
    let all: Vec<&procs::Proc> = owners.iter().flat_map(|o| &o.procs).collect();
    let (mut pss, mut shmem) = (0u64, 0u64);
    let mut by_kind: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for p in &all {
        let (ps, sh) = procs::pss_kib(p.pid).unwrap_or((0, 0));
        pss += ps;
        shmem += sh;
        by_kind.entry(&p.comm).or_default().0 += ps - sh;
    }
    let mut start_cpu = 0;
    for p in &all {
        let ns = procs::cpu_ns(p.pid);
        start_cpu += ns;
        by_kind.entry(&p.comm).or_default().2 += ns;
    }
    let idle0: Vec<u64> = all.iter().map(|p| procs::cpu_ns(p.pid)).collect();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let idle1: Vec<u64> = all.iter().map(|p| procs::cpu_ns(p.pid)).collect();
    for ((p, a), b) in all.iter().zip(&idle0).zip(&idle1) {
        by_kind.entry(&p.comm).or_default().1 += b.saturating_sub(*a);
    }
    let idle_ns: u64 = idle0
        .iter()
        .zip(&idle1)
        .map(|(a, b)| b.saturating_sub(*a))
        .sum();
    let stop = fleet.stop(timeout);
    let cpu_after = procs::children_cpu_ns();
    let bad_exits: Vec<String> = fleet
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.exit.and_then(|s| s.code()) != Some(STOPPED_BY_SIGTERM))
        .map(|(i, v)| format!("VM {i} ended with {:?}:\n{}", v.exit, v.stderr_tail()))
        .collect();
    let left = leftovers::find(&owners, &Places::default());
    let nf = f64::from(n);
    let fig = Figures {
        first_line_ms: fleet.vms.iter().filter_map(|v| v.first_line_ms()).collect(),
        ready_ms: fleet.vms.iter().filter_map(|v| v.ready_ms()).collect(),
        per_second: nf / span_s.max(1e-9),
        start_cpu_ms: start_cpu as f64 / 1e6 / nf,
        life_cpu_ms: cpu_after.saturating_sub(cpu_before) as f64 / 1e6 / nf,
        pss_kib: pss.saturating_sub(shmem) as f64 / nf,
        guest_kib: shmem as f64 / nf,
        avail_kib: avail_before.saturating_sub(avail_running) as f64 / nf,
        idle_pct: idle_ns as f64 / 1e9 / args.idle_secs as f64 * 100.0 / nf,
    };
    print_fleet(label, n, &fleet, &fig, &by_kind, args.idle_secs);
    let stop_ms = stop.as_ref().map(|ns| *ns as f64 / 1e6);
    match &stop_ms {
        Ok(ms) => println!("  stop: SIGTERM to every launcher, all {n} ended in {ms:.0} ms"),
        Err(e) => println!("  stop: {e}"),
    }
    if left.is_empty() {
        println!("  left behind: nothing (processes, VM uids, netns, cgroups, launcher locks, scratch dirs)");
    }
    let mut failures = Vec::new();
    failures.extend(stop.err());
    failures.extend(bad_exits);
    if !left.is_empty() {
        failures.push(left_text(&left));
    }
    match failures.is_empty() {
        true => Ok(fig),
        false => Err(format!("{label}: {}", failures.join("\n"))),
    }
}

/// The fleet's VMs as the leftover check knows them, from `/proc` now.
fn owners_now(fleet: &Fleet, plain: bool) -> Vec<Owner> {
    fleet
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.launcher != 0)
        .map(|(vm, v)| {
            let procs = procs::tree(v.launcher);
            let uid = match plain {
                true => None,
                false => procs
                    .iter()
                    .skip(1)
                    .find_map(|p| procs::uid(p.pid))
                    .filter(|&u| u != 0),
            };
            Owner {
                vm,
                launcher: v.launcher,
                procs,
                uid,
            }
        })
        .collect()
}

fn left_text(left: &[String]) -> String {
    match left.len() {
        0 => String::new(),
        n => format!("\n{n} thing(s) left behind:\n  {}", left.join("\n  ")),
    }
}

/// The `p`th percentile of `v` (nearest rank), 0 for none.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n => v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// p50, p99, min and max of `v` as one line.
fn spread(v: &[f64]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
        percentile(v, 50.0),
        percentile(v, 99.0),
        percentile(v, 0.0),
        percentile(v, 100.0)
    )
}

fn print_fleet(
    label: &str,
    n: u32,
    fleet: &Fleet,
    f: &Figures,
    by_kind: &BTreeMap<&str, (u64, u64, u64)>,
    idle_secs: u64,
) {
    let slowest = fleet.vms.iter().enumerate().max_by(|a, b| {
        a.1.first_line_ms()
            .unwrap_or(0.0)
            .total_cmp(&b.1.first_line_ms().unwrap_or(0.0))
    });
    println!("{label}: {n} VMs, all ready");
    println!("  start to first guest line: {}", spread(&f.first_line_ms));
    if let Some((i, v)) = slowest {
        println!(
            "  slowest to its first line: vm {i}, {:.2} ms (all {n} started at once)",
            v.first_line_ms().unwrap_or(0.0)
        );
    }
    println!("  start to ready (idle line): {}", spread(&f.ready_ms));
    println!(
        "  VMs started per second: {:.1} (all {n} ready after {:.0} ms)",
        f.per_second,
        f64::from(n) / f.per_second * 1e3
    );
    println!(
        "  memory per VM: PSS beside guest memory {:.2} MiB; guest memory touched (Pss_Shmem) {:.2} MiB; \
         MemAvailable drop {:.2} MiB (guest pages and kernel memory included; other work on the host counts too)",
        f.pss_kib / 1024.0,
        f.guest_kib / 1024.0,
        f.avail_kib / 1024.0
    );
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, (kib, _, _))| format!("{k} {:.2}", *kib as f64 / 1024.0 / f64::from(n)))
        .collect();
    println!(
        "    PSS beside guest memory by process, MiB per VM: {}",
        kinds.join(", ")
    );
    println!(
        "  CPU per start (every thread of the VM's processes once ready): {:.2} ms; per VM over its life \
         (start, idle, stop; rusage): {:.2} ms",
        f.start_cpu_ms, f.life_cpu_ms
    );
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, (_, _, ns))| format!("{k} {:.2}", *ns as f64 / 1e6 / f64::from(n)))
        .collect();
    println!(
        "    CPU per start by process, ms per VM: {}",
        kinds.join(", ")
    );
    println!(
        "  idle CPU over {idle_secs} s: {:.4}% of a core per VM ({:.3}% for all {n})",
        f.idle_pct,
        f.idle_pct * f64::from(n)
    );
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, (_, ns, _))| {
            format!(
                "{k} {:.4}%",
                *ns as f64 / 1e7 / idle_secs as f64 / f64::from(n)
            )
        })
        .collect();
    println!(
        "    idle CPU by process, % of a core per VM: {}",
        kinds.join(", ")
    );
}

fn print_ratios(c: &Figures, u: Option<&Figures>, b: &Bare) {
    let p50 = |v: &[f64]| percentile(v, 50.0);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.1}x", a / b)
        } else {
            "-".into()
        }
    };
    println!("ratios, confined against the baselines of this run:");
    if let Some(u) = u {
        println!(
            "  against --jail off: first line p50 {}, p99 {}; CPU per start {}; PSS beside guest memory {}; idle CPU {}",
            ratio(p50(&c.first_line_ms), p50(&u.first_line_ms)),
            ratio(percentile(&c.first_line_ms, 99.0), percentile(&u.first_line_ms, 99.0)),
            ratio(c.start_cpu_ms, u.start_cpu_ms),
            ratio(c.pss_kib, u.pss_kib),
            ratio(c.idle_pct, u.idle_pct)
        );
    }
    println!(
        "  against clone+exec: first line p50 {} (of exit p50 {:.2} ms); CPU per start {}; PSS {}",
        ratio(p50(&c.first_line_ms), p50(&b.exit_ms)),
        p50(&b.exit_ms),
        ratio(c.start_cpu_ms, b.cpu_ms),
        ratio(c.pss_kib, b.pss_kib)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
