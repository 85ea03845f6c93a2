//! Issue 13: a qcow2 written by the test guest, served two ways: by `bulkhead run --disk
//! path=X,format=qcow2` (the launcher opens, checks and locks the chain and hands it to
//! bulkhead-blk), and by a standalone `bulkhead-blk --format qcow2` that `bulkhead run
//! --disk socket=` connects to. An image made by `qemu-img create -f qcow2`: the test
//! guest (each transport) writes its pattern, discards, zeroes and flushes; the same
//! scenario on a raw image; then `qemu-img check` finds the qcow2 clean and `qemu-img
//! compare` identical to the raw one. An overlay on a raw base (standalone: the chain
//! passed as `--disk-fd`/`--backing-fd`, as the launcher does): the guest's writes land in
//! the overlay, which reads as the base plus them, and the base's bytes never change.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::disk::{pattern_byte, Image, SECTOR};
use common::skip::{skip_or_fail, SkipKind};
use common::transport::Transport;

const DEADLINE: Duration = Duration::from_secs(120);
const SIZE: u64 = 16 << 20;

/// A standalone backend on a socket, its log in a file.
struct Backend {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Backend {
    /// `bulkhead-blk --socket-path S` with `args`, inheriting the `inherit` files.
    fn start(tag: &str, args: &[String], inherit: &[&File]) -> Backend {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let socket = dir.join(format!("bulkhead-qcow2-{tag}-{pid}.sock"));
        let log = dir.join(format!("bulkhead-qcow2-{tag}-{pid}.log"));
        for f in inherit {
            // SAFETY: clears FD_CLOEXEC on a descriptor of a file the caller keeps open,
            // so the backend inherits it.
            assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) }, 0);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("creating the backend's log"))
            .spawn()
            .expect("starting bulkhead-blk");
        let backend = Backend { child, log, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backend.log().contains("waiting for a frontend") {
            assert!(
                Instant::now() < deadline,
                "bulkhead-blk did not start:\n{}",
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `--disk` value that connects to it.
    fn disk(&self) -> String {
        format!("socket={}", self.socket.display())
    }

    /// SIGTERM, then the exit (status 0, the image flushed).
    fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill with the pid of the child we started (not yet waited for).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = common::wait_until(&mut self.child, Instant::now() + Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "bulkhead-blk after SIGTERM: {status:?}\n{}",
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

/// The guest's scenario, on each transport: its pattern over 64 sectors (a different
/// place each time), DISCARD and WRITE_ZEROES over 16 more, FLUSH; `disk` is the
/// `--disk` value, `log` what the backend said (for a failure's message).
fn guest_writes(disk: &str, log: &dyn Fn() -> String) {
    for (t, first, discard) in SCENARIO {
        let mut cmd = common::transport::bulkhead_run(t);
        cmd.arg("--disk").arg(disk).arg("--cmdline").arg(format!(
            "bulkhead.test=blk-identify,blk-rw,blk-discard,blk-flush \
             bulkhead.blk.rw={first}:64 bulkhead.blk.discard={discard}:16 \
             bulkhead.blk.capacity={}",
            SIZE / SECTOR
        ));
        let out = common::run(cmd, DEADLINE);
        out.assert_no_panic();
        assert_eq!(out.code(), 0, "{out:#?}\nbulkhead-blk:\n{}", log());
        for s in ["blk-identify", "blk-rw", "blk-discard", "blk-flush"] {
            out.assert_line(&format!("bulkhead-guest: PASS {s}"));
        }
        common::transport::assert_guest_used(t, &out.stdout);
    }
}

/// Where the scenario writes, per transport: (transport, first sector of the pattern,
/// first sector discarded and zeroed).
const SCENARIO: [(Transport, u64, u64); 2] =
    [(Transport::Mmio, 2048, 4100), (Transport::Pci, 9000, 12001)];

/// Serves the image at `path` (format `format`) to the guest's scenario: through `bulkhead
/// run --disk path=` (the launcher opens, locks and hands it over), or a standalone
/// `bulkhead-blk --blk-file` that `bulkhead run --disk socket=` connects to.
fn serve(how: How, path: &Path, format: &str) {
    match how {
        How::Launcher => {
            let disk = format!("path={},format={format}", path.display());
            guest_writes(&disk, &String::new);
        }
        How::Standalone => {
            let args = [
                "--blk-file".to_string(),
                path.display().to_string(),
                "--format".into(),
                format.into(),
            ];
            let backend = Backend::start(format, &args, &[]);
            guest_writes(&backend.disk(), &|| backend.log());
            backend.stop();
        }
    }
}

/// Who serves the image.
#[derive(Clone, Copy, Debug)]
enum How {
    /// `bulkhead run --disk path=X,format=F`.
    Launcher,
    /// `bulkhead-blk --blk-file X --format F` beside `bulkhead run --disk socket=`.
    Standalone,
}

fn qemu_img(args: &[&str]) -> Option<String> {
    match Command::new("qemu-img").args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "qemu-img {args:?}: {text}");
            Some(text)
        }
        Err(e) => {
            skip_or_fail(
                SkipKind::MissingTool,
                &format!("qemu-img: {e} (package qemu-utils)"),
            );
            None
        }
    }
}

fn check_clean(path: &Path) {
    let text = qemu_img(&["check", &path.display().to_string()]).unwrap();
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

fn compare(qcow2: &Path, raw: &Path) {
    let text = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &qcow2.display().to_string(),
        &raw.display().to_string(),
    ])
    .unwrap();
    assert!(text.contains("Images are identical"), "{text}");
}

/// A path in the temporary directory that is removed with this value.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("bulkhead-qcow2-{name}-{}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_qcow2_the_guest_wrote_is_clean_and_identical_to_a_raw_image() {
    require_kvm!();
    guest_wrote_qcow2_and_raw(How::Standalone);
}

#[test]
fn a_qcow2_the_launcher_served_is_clean_and_identical_to_a_raw_image() {
    require_kvm!();
    guest_wrote_qcow2_and_raw(How::Launcher);
}

/// The scenario on a fresh qcow2 and a raw image alike, served `how`: `qemu-img check`
/// finds the qcow2 clean, `qemu-img compare` the two identical.
fn guest_wrote_qcow2_and_raw(how: How) {
    let qcow2 = Scratch::new(&format!("guest-{how:?}.qcow2"));
    let raw = Scratch::new(&format!("guest-{how:?}.raw"));
    let q = qcow2.0.display().to_string();
    if qemu_img(&["create", "-q", "-f", "qcow2", &q, &SIZE.to_string()]).is_none() {
        return;
    }
    File::create(&raw.0).unwrap().set_len(SIZE).unwrap();
    serve(how, &qcow2.0, "qcow2");
    serve(how, &raw.0, "raw");
    check_clean(&qcow2.0);
    compare(&qcow2.0, &raw.0);
    // The guest's pattern is there (so the comparison is not of two empty disks).
    let bytes = std::fs::read(&raw.0).unwrap();
    let at = (2048 * SECTOR) as usize;
    assert!((0..64 * SECTOR as usize).all(|i| bytes[at + i] == pattern_byte((at + i) as u64)));
}

#[test]
fn an_overlay_on_a_raw_base_takes_the_guests_writes_and_the_base_never_changes() {
    require_kvm!();
    overlay_on_a_raw_base(How::Standalone);
}

#[test]
fn an_overlay_the_launcher_served_takes_the_guests_writes_and_the_base_never_changes() {
    require_kvm!();
    overlay_on_a_raw_base(How::Launcher);
}

/// An overlay on a raw base served `how`: standalone, the chain passed as `--disk-fd` and
/// `--backing-fd` as the launcher passes it; by the launcher, which opens the chain itself.
/// The overlay reads as the base plus the guest's writes, `qemu-img check` finds it clean,
/// and the base never changes.
fn overlay_on_a_raw_base(how: How) {
    let base = Image::new("qcow2-base", SIZE as usize);
    let overlay = Scratch::new(&format!("overlay-{how:?}.qcow2"));
    let expect = Scratch::new(&format!("expect-{how:?}.raw"));
    let o = overlay.0.display().to_string();
    let b = base.path.display().to_string();
    if qemu_img(&["create", "-q", "-f", "qcow2", "-b", &b, "-F", "raw", &o]).is_none() {
        return;
    }
    match how {
        How::Launcher => guest_writes(&format!("path={o},format=qcow2"), &String::new),
        How::Standalone => {
            let top = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&overlay.0)
                .unwrap();
            let below = File::open(&base.path).unwrap();
            let args = [
                "--disk-fd".to_string(),
                top.as_raw_fd().to_string(),
                "--format".into(),
                "qcow2".into(),
                "--backing-fd".into(),
                format!("{}:raw", below.as_raw_fd()),
            ];
            let backend = Backend::start("overlay", &args, &[&top, &below]);
            guest_writes(&backend.disk(), &|| backend.log());
            backend.stop();
        }
    }
    assert!(base.read() == base.original, "the base image changed");
    check_clean(&overlay.0);
    // What the overlay must read as: the base, the pattern where the guest wrote it,
    // zeros where it discarded and zeroed.
    let mut expected = base.original.clone();
    for (_, first, discard) in SCENARIO {
        for o in first * SECTOR..(first + 64) * SECTOR {
            expected[o as usize] = pattern_byte(o);
        }
        expected[(discard * SECTOR) as usize..((discard + 16) * SECTOR) as usize].fill(0);
    }
    std::fs::write(&expect.0, &expected).unwrap();
    compare(&overlay.0, &expect.0);
}
