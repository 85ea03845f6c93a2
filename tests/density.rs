//! `bulkhead bench density` end to end (issue 14): a few confined VMs (the idle test
//! guest with a disk, `--net auto` and a console each) started at once all become ready,
//! are all stopped, and leave nothing, by the bench's own check ("left behind: nothing")
//! and by this test's, from outside: every process the bench listed is gone, no network
//! namespace or cgroup named after any of its launchers, no mount of theirs, no new TAP
//! in the host's namespace. Then 20 at once: each reaches its first line and the slowest
//! is reported. First, a positive control: the same outside checks see a running VM's
//! namespace, cgroups and processes (so they would see them left behind), and see them
//! gone once it is stopped by SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::running::{assert_nothing_left, cgroups_of, namespaces_of};
use common::skip::SkipKind;

/// What the idle guest prints once it waits.
const READY: &str = "bulkhead-guest: idle: waiting for ctrl-alt-del ms=forever";

/// Skips unless this host can run the bench: KVM, root and namespaces, a static busybox.
macro_rules! require_bench {
    () => {
        require_kvm!();
        require_netns!();
        if !std::path::Path::new("/bin/busybox").exists() {
            skip!(SkipKind::MissingTool, "no /bin/busybox (busybox-static)");
        }
    };
}

/// One VM of the bench's listing: its launcher and every process (pid, comm).
#[derive(Debug)]
struct Listed {
    launcher: u32,
    procs: Vec<(u32, String)>,
    first_line_ms: f64,
}

/// The `  vm N: bulkhead 12, vmm 20, ...; uid U; first line X ms, ready Y ms` lines.
fn listed(out: &str) -> Vec<Listed> {
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("vm "))
        .map(|l| {
            let (_, rest) = l.split_once(": ").expect("vm line");
            let mut parts = rest.split("; ");
            let procs: Vec<(u32, String)> = parts
                .next()
                .unwrap()
                .split(", ")
                .map(|p| {
                    let (comm, pid) = p.rsplit_once(' ').expect("comm pid");
                    (pid.parse().expect("pid"), comm.to_string())
                })
                .collect();
            let first_line_ms = l
                .split("first line ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|t| t.parse().ok())
                .expect("first line ms");
            Listed {
                launcher: procs[0].0,
                procs,
                first_line_ms,
            }
        })
        .collect()
}

/// The host namespace's TUN/TAP devices.
fn host_taps() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "tun"])
        .output()
        .expect("running ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
        .collect()
}

/// Runs the bench with `args`, bounded; returns its stdout, having asserted exit 0.
fn bench(args: &[&str], limit: Duration) -> String {
    let mut child = common::bulkhead()
        .args(["bench", "density"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead bench density");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            // Each launcher gets SIGTERM when the bench dies (its parent-death signal),
            // so killing the bench stops its VMs.
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaping the bench");
            panic!(
                "bench density {args:?} still ran after {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child
        .wait_with_output()
        .expect("reading the bench's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench density {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Everything the bench listed is gone, checked from outside.
fn assert_fleet_gone(vms: &[Listed]) {
    for vm in vms {
        let children: Vec<(u32, String)> = vm.procs[1..]
            .iter()
            // A pid reused since is another program: the listed comm must match to count.
            .filter(|(pid, comm)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
            })
            .cloned()
            .collect();
        assert!(
            children.is_empty(),
            "processes of launcher {} left: {children:?}",
            vm.launcher
        );
        assert_nothing_left(vm.launcher, &[]);
    }
}

#[test]
fn the_outside_checks_see_a_running_vm_and_its_end() {
    require_bench!();
    let _serial = common::running::serial();
    let img = common::disk::Image::new("density-control", 1 << 20);
    let console = std::env::temp_dir().join(format!(
        "bulkhead-density-control-{}.log",
        std::process::id()
    ));
    let taps_before = host_taps();
    let mut child = common::bulkhead()
        .args([
            "run",
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 pci=off bulkhead.test=idle",
        ])
        .args([
            "--disk",
            &format!("path={}", img.path.display()),
            "--net",
            "auto",
        ])
        .args(["--console", &format!("file={}", console.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting bulkhead run");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == READY {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    let kids = common::running::children(pid);
    let (ns, cgroups) = (namespaces_of(pid), cgroups_of(pid));
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().expect("waiting for bulkhead run");
    let _ = std::fs::remove_file(&console);
    assert!(ready.is_ok(), "the idle guest never said it waits");
    assert_eq!(kids.len(), 4, "vmm, blk, net, console: {kids:?}");
    assert_eq!(ns.len(), 1, "{ns:?}");
    assert!(cgroups.iter().any(|c| c.ends_with("-vmm")), "{cgroups:?}");
    assert_eq!(
        status.code(),
        Some(143),
        "SIGTERM stops the VM with 128 + 15"
    );
    assert_nothing_left(pid, &kids);
    let new: Vec<String> = host_taps()
        .into_iter()
        .filter(|t| !taps_before.contains(t))
        .collect();
    assert!(new.is_empty(), "TAPs left in the host's namespace: {new:?}");
}

#[test]
fn five_vms_start_together_and_leave_nothing() {
    require_bench!();
    let _serial = common::running::serial();
    let taps_before = host_taps();
    let out = bench(
        &[
            "--vms",
            "5",
            "--baseline-vms",
            "2",
            "--idle-secs",
            "2",
            "--timeout-secs",
            "60",
        ],
        Duration::from_secs(180),
    );
    let vms = listed(&out);
    assert_eq!(
        vms.len(),
        5 + 2,
        "5 confined and 2 unconfined VMs listed:\n{out}"
    );
    for vm in &vms {
        let comms: Vec<&str> = vm.procs.iter().map(|(_, c)| c.as_str()).collect();
        for want in [
            "bulkhead",
            "vmm",
            "bulkhead-blk",
            "bulkhead-net",
            "bulkhead-consol",
        ] {
            assert!(
                comms.contains(&want),
                "{want} missing from {comms:?}:\n{out}"
            );
        }
    }
    assert!(out.contains("confined: 5 VMs, all ready"), "{out}");
    assert!(out.contains("--jail off: 2 VMs, all ready"), "{out}");
    assert_eq!(out.matches("left behind: nothing").count(), 2, "{out}");
    for figure in [
        "start to first guest line: p50 ",
        "VMs started per second: ",
        "idle CPU over 2 s: ",
    ] {
        assert!(out.contains(figure), "{figure} missing:\n{out}");
    }
    assert!(
        out.contains("ratios, confined against the baselines"),
        "{out}"
    );
    // Issue 14's goal for idle VMs, every process of each counted (CPU time, not a timing:
    // measured here at 0.0001%; the guest's old 100 ms timer alone made it 0.28%).
    let idle: f64 = out
        .split("idle CPU over 2 s: ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no idle CPU figure:\n{out}"));
    assert!(idle < 0.1, "idle VMs use {idle}% of a core each:\n{out}");
    assert_fleet_gone(&vms);
    let new: Vec<String> = host_taps()
        .into_iter()
        .filter(|t| !taps_before.contains(t))
        .collect();
    assert!(new.is_empty(), "TAPs left in the host's namespace: {new:?}");
}

#[test]
fn twenty_at_once_all_reach_their_first_line() {
    require_bench!();
    let _serial = common::running::serial();
    let out = bench(
        &[
            "--vms",
            "20",
            "--baseline-vms",
            "0",
            "--idle-secs",
            "1",
            "--timeout-secs",
            "90",
        ],
        Duration::from_secs(240),
    );
    let vms = listed(&out);
    assert_eq!(vms.len(), 20, "{out}");
    assert!(vms.iter().all(|v| v.first_line_ms > 0.0), "{out}");
    let slowest = vms.iter().map(|v| v.first_line_ms).fold(0.0, f64::max);
    let line = out
        .lines()
        .find(|l| l.contains("slowest to its first line: vm "))
        .unwrap_or_else(|| panic!("no slowest line:\n{out}"));
    assert!(
        line.contains(&format!("{slowest:.2} ms")),
        "{line} against {slowest}:\n{out}"
    );
    assert!(out.contains("confined: 20 VMs, all ready"), "{out}");
    assert!(out.contains("left behind: nothing"), "{out}");
    assert_fleet_gone(&vms);
}
