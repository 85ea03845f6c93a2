//! `bulkhead-firecracker` stopped as orchestrators stop Firecracker, by a signal: SIGTERM,
//! SIGINT and SIGHUP end it in order (the VM's launcher stopped, then the API socket and
//! its private directory `$TMPDIR/bulkhead-firecracker-<id>-<pid>` removed) with exit
//! status 128 + the signal, before a VM is started, while one starts and while one runs;
//! nothing of the VM is left (processes by pid, namespaces, cgroups, a process holding the
//! orchestrator's TAP).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fc_vm::HostTap;
use common::running::{assert_gone, assert_nothing_left, children};
use common::scratch::Dir;
use common::spawned::Spawned;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BOOT: Duration = Duration::from_secs(60);
/// Its launcher gets 8 s after SIGTERM, then the removal: well within this.
const STOP: Duration = Duration::from_secs(20);

/// `bulkhead-firecracker` with `args`, its private directory under `tmp`.
fn firecracker(tmp: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-firecracker"));
    cmd.args(args)
        .env("TMPDIR", tmp)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Its private directory.
fn private_dir(tmp: &Path, id: &str, pid: u32) -> PathBuf {
    tmp.join(format!("bulkhead-firecracker-{id}-{pid}"))
}

fn wait_for_file(path: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < end, "no {} within 10 s", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid"));
    kill(pid, signal).expect("signalling bulkhead-firecracker");
}

#[test]
fn a_stop_signal_before_boot_removes_the_socket_and_the_private_dir() {
    for (sig, status) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
    ] {
        let dir = Dir::new("fcstop", "api");
        let sock = dir.0.join("api.sock");
        let fc = Spawned::start(&mut firecracker(
            &dir.0,
            &["--api-sock", sock.to_str().unwrap(), "--id", "stop1"],
        ));
        let private = private_dir(&dir.0, "stop1", fc.pid());
        wait_for_file(&sock);
        assert!(private.is_dir(), "{sig}: no {}", private.display());
        signal(fc.pid(), sig);
        let (code, stderr) = fc.wait_exit(STOP);
        assert_eq!(code, Some(status), "{sig}: {stderr}");
        assert!(!sock.exists(), "{sig}: the API socket is left");
        assert!(
            !private.exists(),
            "{sig}: {} is left: {:?}",
            private.display(),
            std::fs::read_dir(&private).map(|d| d.count())
        );
    }
}

/// A scratch directory (also the processes' TMPDIR) with the test guest's ELF, a root
/// image and the orchestrator's TAP, removed on drop.
struct Vm {
    dir: Dir,
    tap: HostTap,
}

impl Vm {
    fn new(tag: &str) -> Vm {
        let dir = Dir::new("fcstop", tag);
        common::fc_vm::write_guest_files(&dir.0);
        let tap = HostTap::add(format!("fcs{tag}{}", std::process::id() % 100_000));
        Vm { dir, tap }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).to_str().unwrap().to_owned()
    }

    /// The config file: the guest idles until Ctrl+Alt+Del.
    fn config_file(&self) -> String {
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": self.path("guest.elf"),
                            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off bulkhead.test=idle"},
            "drives": [{"drive_id": "rootfs", "path_on_host": self.path("root.img"),
                        "is_root_device": true, "is_read_only": false}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": self.tap.0}],
        });
        let file = self.path("vm.json");
        std::fs::write(&file, config.to_string()).unwrap();
        file
    }

    /// The processes with the orchestrator's TAP open (`iff:` in a tun fd's fdinfo).
    fn tap_holders(&self) -> Vec<String> {
        let want = format!("iff:\t{}", self.tap.0);
        let mut holders = Vec::new();
        for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let fdinfo = proc.path().join("fdinfo");
            for fd in std::fs::read_dir(&fdinfo).into_iter().flatten().flatten() {
                let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
                if info.lines().any(|l| l == want) {
                    holders.push(fd.path().display().to_string());
                }
            }
        }
        holders
    }
}

/// The VM's launcher once bulkhead-firecracker has started it (within 10 s).
fn launcher_started(fc: &Spawned) -> (u32, String) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = children(fc.pid()).into_iter().find(|c| c.1 == "bulkhead") {
            return l;
        }
        assert!(Instant::now() < end, "no launcher within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The VM's launcher (bulkhead-firecracker's one child) and the launcher's children.
fn vm_processes(fc: &Spawned) -> ((u32, String), Vec<(u32, String)>) {
    let launchers = children(fc.pid());
    assert_eq!(
        launchers.len(),
        1,
        "bulkhead-firecracker's children: {launchers:?}"
    );
    assert_eq!(launchers[0].1, "bulkhead");
    let kids = children(launchers[0].0);
    (launchers[0].clone(), kids)
}

#[test]
fn sigterm_stops_a_running_vm_and_leaves_nothing() {
    require_kvm!();
    require_netns!();
    let _serial = common::running::serial();
    let vm = Vm::new("run");
    let sock = vm.path("api.sock");
    let file = vm.config_file();
    let mut fc = Spawned::start(&mut firecracker(
        &vm.dir.0,
        &["--api-sock", &sock, "--id", "stop2", "--config-file", &file],
    ));
    let private = private_dir(&vm.dir.0, "stop2", fc.pid());
    // Terminal resizes (SIGWINCH, which shares the stop signals' pipe) all through the
    // VM's start are no stop signal: the start goes on. (Sent from this thread, which
    // alone reaps the process, and only while `running` says it is not reaped.)
    let idle = "bulkhead-guest: idle: waiting for ctrl-alt-del ms=forever";
    let end = Instant::now() + BOOT;
    while fc.running() && Instant::now() < end {
        signal(fc.pid(), Signal::SIGWINCH);
        if fc
            .next_line(Duration::from_millis(2))
            .is_some_and(|l| l.trim_end() == idle)
        {
            break;
        }
    }
    assert!(
        fc.seen().iter().any(|l| l.trim_end() == idle),
        "no idle guest within {BOOT:?} of resizes (running: {}):\n{}",
        fc.running(),
        fc.seen().join("\n")
    );
    let (launcher, kids) = vm_processes(&fc);
    let names: Vec<&str> = kids.iter().map(|k| k.1.as_str()).collect();
    for want in ["bulkhead-vmm", "bulkhead-blk", "bulkhead-net"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        !vm.tap_holders().is_empty(),
        "nothing holds the TAP while the VM runs"
    );
    assert!(Path::new(&sock).exists() && private.is_dir());
    let (code, console, stderr) = fc.terminate(STOP);
    assert_eq!(code, Some(143), "{console}\n{stderr}");
    assert!(
        stderr.contains("bulkhead-firecracker: signal 15: stopping (exit status 143)")
            && !stderr.contains("did not stop within"),
        "{stderr}"
    );
    assert_gone(std::slice::from_ref(&launcher), "bulkhead-firecracker");
    assert_nothing_left(launcher.0, &kids);
    assert_eq!(
        vm.tap_holders(),
        Vec::<String>::new(),
        "the TAP is still held"
    );
    assert!(!Path::new(&sock).exists(), "the API socket is left");
    assert!(!private.exists(), "{} is left", private.display());
}

#[test]
fn sigterm_while_the_vm_starts_stops_it_and_leaves_nothing() {
    require_kvm!();
    require_netns!();
    let _serial = common::running::serial();
    let vm = Vm::new("sta");
    let sock = vm.path("api.sock");
    let file = vm.config_file();
    let fc = Spawned::start(&mut firecracker(
        &vm.dir.0,
        &["--api-sock", &sock, "--id", "stop3", "--config-file", &file],
    ));
    let private = private_dir(&vm.dir.0, "stop3", fc.pid());
    // The launcher started (the VM is being made): stopped in the middle of InstanceStart.
    let launcher = launcher_started(&fc);
    let (code, console, stderr) = fc.terminate(STOP);
    assert_eq!(code, Some(143), "{console}\n{stderr}");
    assert_gone(std::slice::from_ref(&launcher), "bulkhead-firecracker");
    assert_nothing_left(launcher.0, &[]);
    assert_eq!(
        vm.tap_holders(),
        Vec::<String>::new(),
        "the TAP is still held"
    );
    assert!(!Path::new(&sock).exists(), "the API socket is left");
    assert!(!private.exists(), "{} is left", private.display());
}
