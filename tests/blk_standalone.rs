//! Issue 17: a standalone `bulkhead-blk --socket-path` keeps listening and serves
//! frontends one after the other, as qemu-storage-daemon does: QEMU realizes a
//! vhost-user-blk-pci on it and quits, then `bulkhead run --disk socket=` boots the test
//! guest on the same backend process, on each transport, writing to the image; SIGTERM
//! then ends the backend with status 0 and its socket is removed.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::disk::{assert_pattern_only, Image};
use common::skip::{skip_or_fail, SkipKind};
use common::transport::Transport;

const QEMU: &str = "qemu-system-x86_64";
const DEADLINE: Duration = Duration::from_secs(120);

/// The backend, with its log in a file (read by the test).
struct Backend {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Backend {
    fn start(image: &Path, tag: &str) -> Backend {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let socket = dir.join(format!("bulkhead-standalone-{tag}-{pid}.sock"));
        let log = dir.join(format!("bulkhead-standalone-{tag}-{pid}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--blk-file")
            .arg(image)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the backend's log"))
            .spawn()
            .expect("starting bulkhead-blk");
        let backend = Backend { child, log, socket };
        backend.wait_for_log("waiting for a frontend");
        assert!(backend.socket.exists(), "{}", backend.log());
        backend
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 10 s) until the backend's log holds `what`; fails the test if it
    /// exits meanwhile.
    fn wait_for_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in bulkhead-blk's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("waiting for bulkhead-blk");
        assert!(
            status.is_none(),
            "bulkhead-blk exited: {status:?}\n{}",
            self.log()
        );
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// QEMU (TCG, paused with -S: realizing the device is what is tested) with a
/// vhost-user-blk-pci on `socket`; asks QMP for the PCI devices, then quits. Returns
/// QMP's output, `None` (the test skips, or fails under CI) if QEMU is not installed.
fn qemu_realizes(socket: &Path) -> Option<String> {
    if let Err(e) = Command::new(QEMU).arg("--version").output() {
        skip_or_fail(
            SkipKind::MissingTool,
            &format!("{QEMU} is not installed (package qemu-system-x86): {e}"),
        );
        return None;
    }
    let mut child = Command::new(QEMU)
        .args(["-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults"])
        .args(["-display", "none", "-S", "-qmp", "stdio"])
        .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
        .args(["-machine", "memory-backend=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=disk0,path={}", socket.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=disk0,num-queues=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting QEMU");
    let mut stdin = child.stdin.take().expect("piped");
    // QMP answers in order; quit ends QEMU, which closes its output.
    stdin
        .write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-pci\"}\n{\"execute\":\"quit\"}\n",
        )
        .expect("writing to QMP");
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(60));
    drop(stdin);
    let out = child.wait_with_output().expect("QEMU's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.is_some_and(|s| s.success()),
        "QEMU: {status:?}\n{stdout}\n{stderr}"
    );
    Some(stdout)
}

#[test]
fn one_backend_serves_qemu_then_bulkhead_on_each_transport() {
    require_kvm!();
    let img = Image::new("standalone", 16 << 20);
    let mut backend = Backend::start(&img.path, "blk");

    let Some(qmp) = qemu_realizes(&backend.socket) else {
        return;
    };
    // virtio-blk (vendor 0x1af4, device 0x1001 transitional or 0x1042 modern) on the bus.
    assert!(
        qmp.contains("\"vendor\": 6900")
            && (qmp.contains("\"device\": 4097") || qmp.contains("\"device\": 4162")),
        "no virtio-blk function in QEMU's query-pci:\n{qmp}"
    );
    backend.wait_for_log("waiting for the next frontend (1 served)");
    backend.assert_running();

    for (n, (t, first)) in [(Transport::Mmio, 2048u64), (Transport::Pci, 4096)]
        .into_iter()
        .enumerate()
    {
        let mut cmd = common::transport::bulkhead_run(t);
        cmd.arg("--disk")
            .arg(format!("socket={}", backend.socket.display()))
            .arg("--cmdline")
            .arg(format!(
                "bulkhead.test=blk-identify,blk-rw,blk-flush bulkhead.blk.rw={first}:64 bulkhead.blk.capacity=32768"
            ));
        let out = common::run(cmd, DEADLINE);
        out.assert_no_panic();
        assert_eq!(out.code(), 0, "{out:#?}\nbulkhead-blk:\n{}", backend.log());
        out.assert_line("bulkhead-guest: PASS blk-rw");
        out.assert_line("bulkhead-guest: PASS blk-flush");
        common::transport::assert_guest_used(t, &out.stdout);
        backend.wait_for_log(&format!("waiting for the next frontend ({} served)", n + 2));
        backend.assert_running();
    }

    // Both guests' writes, and nothing else, are in the image.
    // Each check sees the other guest's sectors as they were before.
    let now = img.read();
    let range = |first: u64| (first * 512) as usize..((first + 64) * 512) as usize;
    let mut first_only = now.clone();
    first_only[range(4096)].copy_from_slice(&img.original[range(4096)]);
    assert_pattern_only(&img.path, &img.original, &first_only, 2048, 64);
    let mut second_only = now;
    second_only[range(2048)].copy_from_slice(&img.original[range(2048)]);
    assert_pattern_only(&img.path, &img.original, &second_only, 4096, 64);

    let pid = backend.child.id() as i32;
    // SAFETY: kill with the pid of the child we started (not yet waited for) and a valid
    // signal.
    let killed = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(killed, 0);
    let status = common::wait_until(&mut backend.child, Instant::now() + Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "bulkhead-blk after SIGTERM: {status:?}\n{}",
        backend.log()
    );
    // Its socket keeper removes the socket once the backend is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.socket.exists() {
        assert!(
            Instant::now() < deadline,
            "{:?} still there after bulkhead-blk exited",
            backend.socket
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
