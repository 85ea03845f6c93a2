//! End to end, issue 12's "What must hold": device processes that die, or are replaced,
//! under the test guest's soaks, on both transports (`mmio::`, `pci::`).
//!
//! - `kill -9` of the device process five times at random moments under each soak: the
//!   launcher reports each restart, the guest sees no error (its soak passes, the VM exits
//!   0), and the host checks the outcome: the image holds every write the guest saw
//!   complete (`blk-soak`); ping and the UDP echo resume after the last restart, loss is
//!   reported, nothing corrupt came back (the guest refuses it) (`net-soak`); the console
//!   file has every line in order, repeats only (`console-soak`).
//! - The same five times with `bulkhead ctl restart DEVICE`.
//! - The sixth death within the default budget (5 in 60 s) stops the device with a clear
//!   message: the guest's soak fails with DEVICE_NEEDS_RESET, and the VM goes on (the next
//!   scenario runs).
//! - `kill -SYS` (what a seccomp kill looks like) is never restarted by default: the VM
//!   stops, and the message names seccomp; with `--restart-on-sigsys` it is restarted.
//! - `restart=off` keeps a death fatal, as before restarts existed.
//!
//! The moments are random (seed printed; `BULKHEAD_TEST_SEED=N` repeats a run).

mod common;

use common::report_line::restarted_as;
use common::soak::{check_blk_image, stalls, Finished, Kind, SoakVm, AREA, GUEST_IP};
use common::transport::{assert_guest_used, Transport};
use std::time::{Duration, Instant};

/// How long each soak runs: long enough for five kills and their restarts on a loaded
/// two-core host (checked: the soak must still be running after the last restart).
const SOAK_MS: u64 = 15_000;
/// Kills (or `ctl restart`s) per soak.
const KILLS: usize = 5;
/// How long a restart may take to be reported.
const RESTART_BOUND: Duration = Duration::from_secs(30);

/// xorshift64*: random moments without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("BULKHEAD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("random moments: BULKHEAD_TEST_SEED={seed}");
        Rng(seed)
    }

    /// A duration in `lo..hi` ms.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_millis(lo + r % (hi - lo).max(1))
    }
}

/// The launcher's report lines about `device` that contain `needle`.
fn reports(stderr: &str, device: &str, needle: &str) -> Vec<String> {
    let prefix = format!("bulkhead: {device}: ");
    stderr
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The device process's pid now: from the launcher's last restart report, else from
/// `ctl status`; checked to be that program (so nothing else is ever signalled).
fn device_pid(vm: &SoakVm) -> u32 {
    let restarted = reports(&vm.stderr(), vm.kind.device(), "restarted as pid ");
    let pid = restarted
        .last()
        .and_then(|l| restarted_as(l))
        .or_else(|| vm.device_pid())
        .unwrap_or_else(|| {
            panic!(
                "no pid for {}: ctl status says\n{}\nstderr:\n{}",
                vm.kind.device(),
                vm.ctl(&["status"]).0,
                vm.stderr()
            )
        });
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert!(
        exe.file_name()
            .is_some_and(|n| n.to_string_lossy() == vm.kind.program()),
        "pid {pid} is {} , not {}",
        exe.display(),
        vm.kind.program()
    );
    pid
}

/// Waits until the launcher made `n` reports about `device` containing `needle`.
fn await_reports(vm: &mut SoakVm, needle: &str, n: usize) -> Vec<String> {
    let end = Instant::now() + RESTART_BOUND;
    loop {
        let found = reports(&vm.stderr(), vm.kind.device(), needle);
        if found.len() >= n {
            return found;
        }
        if Instant::now() > end {
            vm.drain();
            panic!(
                "{} report(s) with {needle:?} of {n} after {RESTART_BOUND:?}; stdout:\n{}\nstderr:\n{}",
                found.len(),
                vm.stdout.join("\n"),
                vm.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the device process is made to go.
#[derive(Clone, Copy, Debug)]
enum Blow {
    /// `kill -9`.
    Kill,
    /// `bulkhead ctl restart DEVICE`.
    CtlRestart,
}

/// `count` times, after a random pause: make the device process go, then wait until the
/// launcher reports its restart. Returns the report lines.
fn blows(vm: &mut SoakVm, how: Blow, count: usize, rng: &mut Rng) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 1..=count {
        std::thread::sleep(rng.ms(100, 900));
        let pid = device_pid(vm);
        match how {
            Blow::Kill => {
                // SAFETY: plain kill(2) of the device process this test's launcher
                // started (checked by its executable just above).
                let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                assert_eq!(r, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
            }
            Blow::CtlRestart => {
                let (out, err, ok) = vm.ctl(&["restart", vm.kind.device()]);
                assert!(
                    ok,
                    "ctl restart {}: {out}{err}\n{}",
                    vm.kind.device(),
                    vm.stderr()
                );
            }
        }
        lines = await_reports(vm, "restarted as pid ", i);
        let line = lines.last().expect("at least one");
        assert!(
            restarted_as(line).is_some_and(|p| p != pid),
            "restart {i} of pid {pid}: {line}"
        );
        match how {
            // Also when the vmm's DeviceLost comes first (the socket closes before the
            // dying process can be reaped): the launcher reports the real cause.
            Blow::Kill => assert!(
                line.contains(&format!("(pid {pid}) killed by signal 9"))
                    && line.contains(&format!("(restart {i} of 5 within 60 s)")),
                "{line}"
            ),
            Blow::CtlRestart => assert!(line.contains(&format!("(pid {pid}) replaced")), "{line}"),
        }
        assert!(line.contains("; unavailable "), "{line}");
    }
    // The soak must still be running: the blows happened under it.
    vm.drain();
    assert!(
        !vm.stdout
            .iter()
            .any(|l| l.contains("PASS ") || l.contains("FAIL ")),
        "the soak ended before the {count} restarts were done (raise SOAK_MS); stdout:\n{}",
        vm.stdout.join("\n")
    );
    lines
}

/// The soak passed, the VM exited 0, the guest used `t`.
fn assert_passed(t: Transport, done: &Finished, kind: Kind) {
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert!(!done.stdout.contains("FAIL"), "{}", done.dump());
    assert_guest_used(t, &done.stdout);
    done.pass(kind);
}

fn blk_under(t: Transport, how: Blow) {
    require_kvm!();
    let mut rng = Rng::new();
    let mut vm = SoakVm::start(Kind::Blk, t, SOAK_MS, "", &[]);
    vm.wait_started();
    let lines = blows(&mut vm, how, KILLS, &mut rng);
    let done = vm.finish(Duration::from_secs(120));
    assert_passed(t, &done, Kind::Blk);
    let c = done.pass(Kind::Blk);
    assert_eq!(
        (c["reads"], c["last"]),
        (c["writes"], c["writes"]),
        "{}",
        done.dump()
    );
    let img = done.image.as_ref().expect("an image");
    check_blk_image(&img.read(), &img.original, c["last"], AREA)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", img.path.display(), done.dump()));
    let resubmitted: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("resubmitted"))
        .collect();
    eprintln!(
        "blk-soak {t} {how:?} x{KILLS}: writes={} max-stall-ms={} stalls={:?}\n{}\n{}",
        c["writes"],
        c["max-stall-ms"],
        stalls(&done.stdout, "blk-soak"),
        lines.join("\n"),
        resubmitted.join("\n")
    );
}

fn blk_soak_survives_five_kills(t: Transport) {
    blk_under(t, Blow::Kill);
}

fn blk_soak_survives_five_ctl_restarts(t: Transport) {
    blk_under(t, Blow::CtlRestart);
}

/// Pings the guest from namespace `ns`: 3 replies within 10 s (with `-w`, ping keeps
/// sending until it has 3, so a slow guest may answer more: "6 received").
fn ping(ns: &str) -> Result<(), String> {
    let out = common::netns::exec(ns, &["ping", "-c", "3", "-i", "0.2", "-w", "10", GUEST_IP]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = text
        .split(", ")
        .find_map(|part| part.strip_suffix(" received"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if out.status.success() && received.is_some_and(|n| n >= 3) {
        Ok(())
    } else {
        Err(text)
    }
}

fn net_under(t: Transport, how: Blow) {
    require_kvm!();
    require_netns!();
    let mut rng = Rng::new();
    let mut vm = SoakVm::start(Kind::Net, t, SOAK_MS, "", &[]);
    vm.wait_started();
    let lines = blows(&mut vm, how, KILLS, &mut rng);
    // After the last restart: ping answers and the echo goes on.
    let ns = vm.ns.clone().expect("a namespace");
    // Datagrams in flight at the last kill may be lost: the guest lets each go after
    // 100 ms, so the echo may pause that long before it goes on.
    let echo = vm.echo.as_ref().expect("an echo");
    let (echoed, since) = (echo.echoed(), Instant::now());
    while echo.echoed() == echoed && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (echoed_after, resumed_in) = (echo.echoed(), since.elapsed());
    let pinged = ping(&ns);
    let done = vm.finish(Duration::from_secs(120));
    pinged.unwrap_or_else(|e| panic!("no ping after the restarts: {e}\n{}", done.dump()));
    assert!(
        echoed_after > echoed,
        "the UDP echo did not resume within 5 s of the last restart ({echoed} datagrams)\n{}",
        done.dump()
    );
    assert_passed(t, &done, Kind::Net);
    let c = done.pass(Kind::Net);
    assert_eq!(c["received"] + c["lost"], c["sent"], "{}", done.dump());
    assert!(c["received"] > 0, "{}", done.dump());
    eprintln!(
        "net-soak {t} {how:?} x{KILLS}: sent={} received={} lost={} duplicates={} max-stall-ms={} \
         (echo resumed {resumed_in:?} after the last report)\n{}",
        c["sent"],
        c["received"],
        c["lost"],
        c["duplicates"],
        c["max-stall-ms"],
        lines.join("\n")
    );
}

fn net_soak_survives_five_kills(t: Transport) {
    net_under(t, Blow::Kill);
}

fn net_soak_survives_five_ctl_restarts(t: Transport) {
    net_under(t, Blow::CtlRestart);
}

fn console_under(t: Transport, how: Blow) {
    require_kvm!();
    let mut rng = Rng::new();
    let mut vm = SoakVm::start(Kind::Console, t, SOAK_MS, "", &[]);
    vm.wait_started();
    let lines = blows(&mut vm, how, KILLS, &mut rng);
    let done = vm.finish(Duration::from_secs(120));
    assert_passed(t, &done, Kind::Console);
    let c = done.pass(Kind::Console);
    let seen = done
        .console_lines(c["lines"])
        .unwrap_or_else(|e| panic!("console output: {e}\n{}", done.dump()));
    eprintln!(
        "console-soak {t} {how:?} x{KILLS}: lines={} repeated={} max-stall-ms={}\n{}",
        seen.lines,
        seen.repeated,
        c["max-stall-ms"],
        lines.join("\n")
    );
}

fn console_soak_survives_five_kills(t: Transport) {
    console_under(t, Blow::Kill);
}

fn console_soak_survives_five_ctl_restarts(t: Transport) {
    console_under(t, Blow::CtlRestart);
}

fn sixth_kill_stops_the_device_and_the_vm_goes_on(t: Transport) {
    require_kvm!();
    let mut rng = Rng::new();
    // After the soak fails, `memory` runs: the VM went on.
    let mut vm = SoakVm::start_then(Kind::Blk, t, 60_000, "", &[], ",memory");
    vm.wait_started();
    blows(&mut vm, Blow::Kill, KILLS, &mut rng);
    std::thread::sleep(rng.ms(100, 900));
    let pid = device_pid(&vm);
    // SAFETY: kill(2) of the device process this test's launcher started (checked).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let stopped = await_reports(&mut vm, "is stopped", 1);
    let line = &stopped[0];
    assert!(
        line.contains(&format!("(pid {pid}) killed by signal 9"))
            && line.contains("restart budget (restart=5/60) is spent")
            && line.contains("the VM goes on"),
        "{line}"
    );
    let fail = vm.wait_line("FAIL blk-soak", Duration::from_secs(30));
    assert!(fail.contains("DEVICE_NEEDS_RESET"), "{fail}");
    // The VM goes on: the next scenario runs, and the guest ends by itself (status 1: a
    // scenario failed).
    let done = vm.finish(Duration::from_secs(60));
    assert!(
        done.stdout.contains("bulkhead-guest: PASS memory")
            && done.stdout.contains("bulkhead-guest: done status=1"),
        "the VM did not go on after the device stopped:\n{}",
        done.dump()
    );
    assert!(done.code.is_some_and(|c| c != 0), "{}", done.dump());
    assert_eq!(
        reports(&done.stderr, "disk0", "restarted as pid ").len(),
        KILLS,
        "{}",
        done.dump()
    );
}

fn sigsys_is_not_restarted_and_stops_the_vm(t: Transport) {
    require_kvm!();
    let mut vm = SoakVm::start(Kind::Blk, t, 60_000, "", &[]);
    vm.wait_started();
    std::thread::sleep(Duration::from_millis(300));
    let pid = device_pid(&vm);
    // SAFETY: kill(2) of the device process this test's launcher started (checked).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSYS) }, 0);
    let done = vm.finish(Duration::from_secs(60));
    assert!(
        matches!(done.code, Some(c) if c != 0),
        "the VM must stop with a non-zero status:\n{}",
        done.dump()
    );
    let events = reports(&done.stderr, "disk0", "security event");
    assert_eq!(events.len(), 1, "{}", done.dump());
    assert!(
        events[0].contains("seccomp") && events[0].contains("not restarted"),
        "{}",
        events[0]
    );
    assert!(
        reports(&done.stderr, "disk0", "restarted as pid ").is_empty(),
        "{}",
        done.dump()
    );
    assert!(
        !done.stdout.contains("PASS blk-soak"),
        "the soak cannot have passed:\n{}",
        done.dump()
    );
}

fn sigsys_is_restarted_with_restart_on_sigsys(t: Transport) {
    require_kvm!();
    let mut vm = SoakVm::start(Kind::Blk, t, 5000, "", &["--restart-on-sigsys"]);
    vm.wait_started();
    std::thread::sleep(Duration::from_millis(300));
    let pid = device_pid(&vm);
    // SAFETY: kill(2) of the device process this test's launcher started (checked).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSYS) }, 0);
    let line = await_reports(&mut vm, "restarted as pid ", 1).remove(0);
    assert!(line.contains(&format!("(pid {pid})")), "{line}");
    let done = vm.finish(Duration::from_secs(60));
    assert_passed(t, &done, Kind::Blk);
    let c = done.pass(Kind::Blk);
    let img = done.image.as_ref().expect("an image");
    check_blk_image(&img.read(), &img.original, c["last"], AREA)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", img.path.display(), done.dump()));
}

fn restart_off_keeps_a_death_fatal(t: Transport) {
    require_kvm!();
    let mut vm = SoakVm::start(Kind::Blk, t, 60_000, ",restart=off", &[]);
    vm.wait_started();
    std::thread::sleep(Duration::from_millis(300));
    let pid = device_pid(&vm);
    // SAFETY: kill(2) of the device process this test's launcher started (checked).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let done = vm.finish(Duration::from_secs(60));
    assert!(
        matches!(done.code, Some(c) if c != 0),
        "the VM must stop with a non-zero status:\n{}",
        done.dump()
    );
    assert!(
        reports(&done.stderr, "disk0", "restarted as pid ").is_empty(),
        "{}",
        done.dump()
    );
    assert!(!done.stdout.contains("PASS blk-soak"), "{}", done.dump());
}

on_both_transports!(
    blk_soak_survives_five_kills,
    blk_soak_survives_five_ctl_restarts,
    net_soak_survives_five_kills,
    net_soak_survives_five_ctl_restarts,
    console_soak_survives_five_kills,
    console_soak_survives_five_ctl_restarts,
    sixth_kill_stops_the_device_and_the_vm_goes_on,
    sigsys_is_not_restarted_and_stops_the_vm,
    sigsys_is_restarted_with_restart_on_sigsys,
    restart_off_keeps_a_death_fatal
);
