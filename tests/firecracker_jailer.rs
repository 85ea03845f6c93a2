//! `bulkhead-jailer` given Firecracker's jailer's command line, as firecracker-containerd
//! gives it: the orchestrator makes the chroot `<base>/bulkhead-firecracker/<id>/root`,
//! hard-links the kernel (the test guest's ELF) and the root drive into it, starts the
//! jailer and drives the API on `<chroot>/run/firecracker.socket` with curl, naming paths
//! as the jailed process sees them. Bad command lines get Firecracker's jailer's exit
//! status; `--netns` puts the VM's TAP in the orchestrator's namespace.

mod common;

use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fc_curl::{curl, no_content};
use common::running::{assert_gone, children};
use common::spawned::Spawned;

const BOOT: Duration = Duration::from_secs(60);
/// The identity the orchestrator gives the chroot's files.
const JAIL_ID: u32 = 52_311;

/// An orchestrator's chroot base with one VM's chroot prepared in it; removed on drop.
struct Chroot {
    base: PathBuf,
    id: String,
}

impl Chroot {
    fn new(tag: &str) -> Chroot {
        let base = std::env::temp_dir().join(format!("bulkhead-fcj-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let id = format!("vm-{tag}-{}", std::process::id());
        let c = Chroot { base, id };
        let root = c.root();
        std::fs::create_dir_all(&root).unwrap();
        // Staged outside the chroot, then hard-linked in (the SDK's LinkFilesHandler).
        let stage = c.base.join("stage");
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("vmlinux"), bulkhead_vmm::TEST_GUEST).unwrap();
        std::fs::File::create(stage.join("rootfs.img"))
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        for f in ["vmlinux", "rootfs.img"] {
            std::fs::hard_link(stage.join(f), root.join(f)).unwrap();
            chown(root.join(f), Some(JAIL_ID), Some(JAIL_ID)).unwrap();
        }
        c
    }

    fn root(&self) -> PathBuf {
        self.base
            .join("bulkhead-firecracker")
            .join(&self.id)
            .join("root")
    }

    fn sock(&self) -> String {
        self.root()
            .join("run/firecracker.socket")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Nothing of this VM is left: the chroot as the orchestrator left it, no scratch
    /// directory of the jailer's or bulkhead-firecracker's in the temp dir.
    fn assert_as_left(&self) {
        assert_eq!(self.entries(), ["rootfs.img", "vmlinux"]);
        let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&format!("-{}-", self.id)))
            .collect();
        assert!(left.is_empty(), "left in the temp dir: {left:?}");
    }

    /// The chroot's entries, sorted.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// `bulkhead-jailer` with firecracker-containerd's flags, then `extra`, then Firecracker's.
fn jailer(c: &Chroot, extra: &[&str]) -> Command {
    let exec = Path::new(env!("CARGO_BIN_EXE_bulkhead-firecracker"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-jailer"));
    cmd.args(["--id", &c.id, "--exec-file"])
        .arg(exec)
        .args(["--uid", &JAIL_ID.to_string(), "--gid", &JAIL_ID.to_string()])
        .arg("--chroot-base-dir")
        .arg(&c.base)
        .args(["--cgroup-version", cgroup_version()])
        .args(extra)
        .args(["--", "--api-sock", "/run/firecracker.socket", "--id", &c.id])
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn");
    cmd
}

/// The host's cgroup interface, as an orchestrator configures it.
fn cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

fn wait_for_socket(path: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !Path::new(path).exists() {
        assert!(Instant::now() < end, "no API socket at {path}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Configures the VM with paths as seen inside the chroot and starts it.
fn start_vm(sock: &str, tests: &str, nic: Option<&str>) {
    let boot = format!(
        "console=ttyS0 reboot=k panic=1 pci=off bulkhead.test={tests},idle bulkhead.blk.serial=rootfs"
    );
    no_content(
        sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    no_content(
        sock,
        "PUT",
        "/boot-source",
        &serde_json::json!({"kernel_image_path": "/vmlinux", "boot_args": boot}).to_string(),
    );
    no_content(
        sock,
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"/rootfs.img","is_root_device":true,"is_read_only":false}"#,
    );
    if let Some(tap) = nic {
        no_content(
            sock,
            "PUT",
            "/network-interfaces/eth0",
            &serde_json::json!({"iface_id": "eth0", "host_dev_name": tap}).to_string(),
        );
    }
    no_content(
        sock,
        "PUT",
        "/vsock",
        r#"{"guest_cid":3,"uds_path":"/run/v.sock"}"#,
    );
    no_content(
        sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
}

/// SendCtrlAltDel once the guest idles; the jailer exits 0 and every process is gone.
fn stop_with_ctrl_alt_del(j: &mut Spawned, sock: &str) -> Vec<(u32, String)> {
    j.wait_for(BOOT, |l| {
        l.starts_with("bulkhead-guest: idle: waiting for ctrl-alt-del")
    });
    let fc = children(j.pid());
    assert_eq!(fc.len(), 1, "the jailer's children: {fc:?}");
    assert_eq!(fc[0].1, "bulkhead-firecracker");
    let launcher = children(fc[0].0);
    let vm: Vec<(u32, String)> = launcher.iter().flat_map(|l| children(l.0)).collect();
    assert!(vm.iter().any(|p| p.1 == "bulkhead-vmm"), "{vm:?}");
    // The VM's processes are confined by bulkhead's own per-VM identities and jails, not
    // run as the chroot's identity (bulkhead-net stays in the TAP's namespace, as with
    // `bulkhead run --net tap=NAME`).
    let wrong: Vec<String> = vm
        .iter()
        .flat_map(|(pid, name)| common::confined::wrong(*pid, name))
        .filter(|w| {
            !(w.starts_with("bulkhead-net ") && w.ends_with("shares the host's net namespace"))
        })
        .collect();
    assert!(wrong.is_empty(), "not confined:\n{}", wrong.join("\n"));
    for (pid, name) in &vm {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        assert!(
            !uid.contains(&JAIL_ID.to_string()),
            "{name} runs as the chroot's identity: {uid}"
        );
    }
    no_content(
        sock,
        "PUT",
        "/actions",
        r#"{"action_type":"SendCtrlAltDel"}"#,
    );
    j.wait_for_line(
        "bulkhead-guest: idle: ctrl-alt-del, resetting through the i8042",
        BOOT,
    );
    [fc, launcher, vm].concat()
}

#[test]
fn the_containerd_invocation_boots_in_the_chroot() {
    require_kvm!();
    require_netns!();
    let _serial = common::running::serial();
    let c = Chroot::new("boot");
    let mut j = Spawned::start(&mut jailer(
        &c,
        &[
            "--cgroup",
            "pids.max=400",
            "--resource-limit",
            "no-file=2048",
            "--new-pid-ns",
        ],
    ));
    let sock = c.sock();
    wait_for_socket(&sock);
    // The chroot belongs to the jail identity; the pid file names bulkhead-firecracker.
    assert_eq!(std::fs::metadata(c.root()).unwrap().uid(), JAIL_ID);
    let fc = children(j.pid());
    let pid_file = c.root().join("bulkhead-firecracker.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        fc[0].0.to_string()
    );
    // In the cgroup named by --parent-cgroup's default and the id, with the limit.
    let hierarchy = if cgroup_version() == "2" { "" } else { "pids/" };
    let cgroup = format!("/sys/fs/cgroup/{hierarchy}bulkhead-firecracker/{}", c.id);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", fc[0].0)).unwrap();
    let placed = format!(":/bulkhead-firecracker/{}", c.id);
    assert!(own.lines().any(|l| l.ends_with(&placed)), "{own}");
    assert_eq!(
        std::fs::read_to_string(format!("{cgroup}/pids.max"))
            .unwrap()
            .trim(),
        "400"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", fc[0].0)).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 2048 ")),
        "{limits}"
    );
    let (code, info) = curl(&sock, "GET", "/", None);
    assert!(code == 200 && info.contains(&c.id), "{code} {info}");
    start_vm(&sock, "blk-identify", None);
    j.wait_for_line("bulkhead-guest: PASS blk-identify", BOOT);
    // The vsock's `uds_path` is inside the chroot too.
    let uds = c.root().join("run/v.sock");
    assert!(
        std::fs::metadata(&uds).is_ok(),
        "no vsock socket at {}",
        uds.display()
    );
    let processes = stop_with_ctrl_alt_del(&mut j, &sock);
    let (code, stderr) = j.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    assert_gone(&processes, "bulkhead-jailer");
    assert!(!Path::new(&cgroup).exists(), "{cgroup} is left");
    // The chroot holds what the orchestrator put there, nothing more.
    c.assert_as_left();
}

#[test]
fn netns_puts_the_tap_in_the_orchestrators_namespace() {
    require_kvm!();
    require_netns!();
    let _serial = common::running::serial();
    let ns = Netns::new(&format!("bhfcj{}", std::process::id() % 100_000));
    let out = common::netns::exec(&ns.0, &["ip", "tuntap", "add", "fctap0", "mode", "tap"]);
    assert!(out.status.success(), "{out:?}");
    let c = Chroot::new("netns");
    let netns = format!("/run/netns/{}", ns.0);
    let mut j = Spawned::start(&mut jailer(&c, &["--netns", &netns]));
    let sock = c.sock();
    wait_for_socket(&sock);
    // The TAP exists only in the namespace: the VM finds it only if it was joined.
    start_vm(&sock, "net-identify", Some("fctap0"));
    j.wait_for_line("bulkhead-guest: PASS net-identify", BOOT);
    let processes = stop_with_ctrl_alt_del(&mut j, &sock);
    let (code, stderr) = j.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    assert_gone(&processes, "bulkhead-jailer");
    c.assert_as_left();
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn bad_command_lines_are_refused_as_firecrackers_jailer_does() {
    let c = Chroot::new("bad");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-jailer"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let fc = env!("CARGO_BIN_EXE_bulkhead-firecracker");
    let base = c.base.to_str().unwrap();
    let common_flags = [
        "--exec-file",
        fc,
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        base,
    ];
    let long_id = "x".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--id", "bad_id"], "Invalid instance ID"),
        (vec!["--id", &long_id], "Invalid instance ID"),
        (
            vec!["--id", "ok", "--seccomp-level", "2"],
            "wasn't expected",
        ),
        (
            vec!["--id", "ok", "--cgroup", "nonsense"],
            "Invalid cgroup argument",
        ),
        (
            vec!["--id", "ok", "--resource-limit", "nproc=1"],
            "Invalid resource limit",
        ),
        (
            vec!["--id", "ok", "--cgroup-version", "3"],
            "Invalid cgroup version",
        ),
        (vec!["--id", "ok", "--uid"], "requires a value"),
    ];
    for (extra, want) in cases {
        let args = [common_flags.as_slice(), &extra].concat();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("Jailer error: ") && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
    // Another program than bulkhead-firecracker.
    let (code, stderr) = run(&[
        "--id",
        "ok",
        "--exec-file",
        "/bin/true",
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        base,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("starts only bulkhead-firecracker"),
        "{stderr}"
    );
    // A --netns that is not a network namespace.
    for netns in ["/nonexistent/netns", "/proc/self/ns/uts"] {
        let args = [common_flags.as_slice(), &["--id", "ok", "--netns", netns]].concat();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("netns {netns}")), "{stderr}");
    }
    // Missing --id.
    let (code, stderr) = run(&common_flags);
    assert!(
        code == Some(1) && stderr.contains("Missing argument: id"),
        "{stderr}"
    );
    // Nothing was made for a refused command line.
    assert!(!c.base.join("bulkhead-firecracker/ok").exists());
}

#[test]
fn daemonize_detaches_and_sigterm_is_forwarded() {
    require_netns!();
    let _serial = common::running::serial();
    let c = Chroot::new("daemon");
    let mut child = jailer(&c, &["--daemonize"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_socket(&c.sock());
    let (code, info) = curl(&c.sock(), "GET", "/", None);
    assert!(code == 200 && info.contains("Not started"), "{code} {info}");
    // Its own session, its stdio on /dev/null (as Firecracker's jailer with --daemonize).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let session: u32 = after_comm
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, pid, "{stat}");
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    let fc = children(pid);
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(20));
    assert!(status.is_some(), "the jailer did not end on SIGTERM");
    assert_gone(&fc, "bulkhead-jailer");
    c.assert_as_left();
}
