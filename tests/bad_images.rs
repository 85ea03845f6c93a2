//! Issue 13, "bad images": each is made by `qemu-img create` and, where needed, damaged
//! with byte writes at offsets the qcow2 header gives; it is refused at start with a
//! message naming the file and the problem, and left as it was, both by a standalone
//! `bulkhead-blk --blk-file X --format qcow2` (exit status 1) and by `bulkhead run --disk
//! path=X,format=qcow2` (status 125: the launcher refuses what the header tells before any
//! process starts; what only imago finds, the backend refuses, naming the file the
//! launcher passed it). A corruption found only during I/O fails the test guest's request
//! there, and the backend goes on serving the next VM (also at the device, request by
//! request, in devices/tests/qcow2_bad.rs).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::refusal::{refused_at_start, refused_by_launcher, refused_standalone};
use common::skip::{skip_or_fail, SkipKind};

/// A scratch directory removed with this value.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("bulkhead-bad-images-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Dir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `qemu-img create -f qcow2 [options] path size`; false (skipped) without qemu-img.
fn create(path: &Path, options: &[&str], size: &str) -> bool {
    let out = match Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(options)
        .arg(path)
        .arg(size)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            skip_or_fail(
                SkipKind::MissingTool,
                &format!("qemu-img: {e} (qemu-utils)"),
            );
            return false;
        }
    };
    assert!(
        out.status.success(),
        "qemu-img create {options:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn peek64(path: &Path, offset: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).unwrap();
    u64::from_be_bytes(b)
}

/// Who refuses an image `bulkhead run --disk` is given.
#[derive(Clone, Copy)]
enum By {
    /// The launcher, from the header, before any process starts.
    Launcher,
    /// bulkhead-blk, when imago opens the file (the launcher does not read the tables).
    Backend,
}

/// `path` is refused as a qcow2 both ways, each naming it and saying `problem`, and left
/// as it was: by a standalone `bulkhead-blk --blk-file`, and by `bulkhead run --disk
/// path=...,format=qcow2` (the launcher, where the header tells).
fn refused(path: &Path, problem: &str) {
    refused_by(By::Launcher, path, problem);
}

fn refused_by(by: By, path: &Path, problem: &str) {
    let name = path.display().to_string();
    refused_standalone(path, &["--format", "qcow2"], &[&name, problem]);
    let before = std::fs::read(path).unwrap();
    let disk = format!("path={name},format=qcow2");
    match by {
        By::Launcher => refused_by_launcher(&[], &disk, &[&name, problem]),
        By::Backend => {
            // The backend is started, before the VM's own process.
            if let Some(why) = common::kvm_unavailable() {
                eprintln!(
                    "{}: launcher part skipped: {why}",
                    common::skip::test_name()
                );
                return;
            }
            let how = "bulkhead-blk (pid";
            refused_at_start(&[], &disk, &[how, "could not start", &name, problem]);
        }
    }
    assert!(std::fs::read(path).unwrap() == before, "{name} was changed");
}

/// Header fields (qcow2 spec).
const L1_TABLE_OFFSET: u64 = 40;
const REFCOUNT_TABLE_OFFSET: u64 = 48;
const INCOMPATIBLE_FEATURES: u64 = 72;
const SIZE: u64 = 24;
const CRYPT_METHOD: u64 = 32;

#[test]
fn a_truncated_qcow2_is_refused() {
    let dir = Dir::new();
    let img = dir.join("truncated.qcow2");
    if !create(&img, &[], "64M") {
        return;
    }
    let l1 = peek64(&img, L1_TABLE_OFFSET);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(l1 + 4)
        .unwrap();
    refused(&img, "is truncated or corrupt: its L1 table ends at byte");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(50)
        .unwrap();
    refused(&img, "its header ends at byte 72");
}

#[test]
fn corrupt_l1_and_refcount_tables_are_refused() {
    let dir = Dir::new();
    let img = dir.join("tables.qcow2");
    if !create(&img, &[], "64M") {
        return;
    }
    let l1 = peek64(&img, L1_TABLE_OFFSET);
    poke(&img, L1_TABLE_OFFSET, &(l1 + 512).to_be_bytes());
    refused(&img, "L1 table offset");
    poke(&img, L1_TABLE_OFFSET, &l1.to_be_bytes());
    poke(&img, REFCOUNT_TABLE_OFFSET, &(1u64 << 40).to_be_bytes());
    refused(&img, "its refcount table ends at byte");
    // A refcount table entry pointing at an unaligned refcount block: imago's refusal,
    // named by us.
    let img2 = dir.join("refblock.qcow2");
    assert!(create(&img2, &[], "64M"));
    let rt = peek64(&img2, REFCOUNT_TABLE_OFFSET);
    let rb = peek64(&img2, rt);
    poke(&img2, rt, &(rb + 8).to_be_bytes());
    refused_by(By::Backend, &img2, "opening qcow2 image");
    // An L1 entry pointing into the middle of a cluster (imago checks L1 entries at open).
    let img3 = dir.join("l1-entry.qcow2");
    assert!(create(&img3, &[], "64M"));
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xaa 0 64k"])
        .arg(&img3)
        .output()
        .expect("qemu-io comes with qemu-img");
    assert!(out.status.success());
    let l1 = peek64(&img3, L1_TABLE_OFFSET);
    let entry = peek64(&img3, l1);
    assert_ne!(entry, 0);
    poke(&img3, l1, &(entry + 512).to_be_bytes());
    refused_by(By::Backend, &img3, "is not aligned to cluster size");
}

#[test]
fn unsupported_qcow2_features_are_refused() {
    let dir = Dir::new();
    for (name, options, problem) in [
        (
            "extended-l2.qcow2",
            &["-o", "extended_l2=on"][..],
            "extended L2 entries",
        ),
        (
            "zstd.qcow2",
            &["-o", "compression_type=zstd"][..],
            "compression type other than zlib",
        ),
    ] {
        let img = dir.join(name);
        if !create(&img, options, "64M") {
            return;
        }
        refused(&img, problem);
    }
    let data = dir.join("data.raw");
    let img = dir.join("external.qcow2");
    let opt = format!("data_file={}", data.display());
    assert!(create(&img, &["-o", &opt], "64M"));
    refused(&img, "an external data file");

    // Bits set by hand in an ordinary image.
    for (bits, problem) in [
        (1u64, "the dirty bit"),
        (2, "the corrupt bit"),
        (1 << 10, "unknown incompatible feature bit 10"),
    ] {
        let img = dir.join("bits.qcow2");
        assert!(create(&img, &[], "64M"));
        poke(&img, INCOMPATIBLE_FEATURES, &bits.to_be_bytes());
        refused(&img, problem);
    }
    let img = dir.join("encrypted.qcow2");
    assert!(create(&img, &[], "64M"));
    poke(&img, CRYPT_METHOD, &1u32.to_be_bytes());
    refused(&img, "encryption");
}

#[test]
fn a_virtual_size_not_a_multiple_of_512_or_zero_is_refused() {
    let dir = Dir::new();
    let img = dir.join("size.qcow2");
    if !create(&img, &[], "64M") {
        return;
    }
    poke(&img, SIZE, &((64u64 << 20) - 100).to_be_bytes());
    refused(&img, "virtual size of 67108764 bytes");
    // Each says why in its own words.
    refused_standalone(
        &img,
        &["--format", "qcow2"],
        &["virtual size of 67108764 bytes, which is not a non-zero multiple of 512"],
    );
    let disk = format!("path={},format=qcow2", img.display());
    refused_by_launcher(&[], &disk, &["67108764 bytes, not a multiple of 512"]);
    let img = dir.join("zero.qcow2");
    assert!(create(&img, &[], "0"));
    refused(&img, "virtual size of 0 bytes");
}

#[test]
fn a_backing_file_named_but_not_opened_is_refused() {
    let dir = Dir::new();
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let img = dir.join("overlay.qcow2");
    if !create(&img, &["-b", "base.raw", "-F", "raw"], "1M") {
        return;
    }
    // Through descriptors (the launcher's way), with no --backing-fd: the chain the header
    // names is not the chain given.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: clears FD_CLOEXEC on our open file, so the backend inherits it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
        .arg("--socket-path")
        .arg(dir.join("blk.sock"))
        .args(["--disk-fd", &fd.to_string(), "--format", "qcow2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("fd {fd}"))
            && stderr.contains("names the backing file \"base.raw\", but no backing file"),
        "{stderr}"
    );
}

/// A corruption found during I/O, with the test guest: an L2 entry of an overlay points
/// into the middle of a cluster. The guest's writes there fail (its `blk-rw` reports the
/// I/O error), the backend logs the image's name and goes on serving: a second VM on the
/// same backend process writes and reads elsewhere (PASS), and the raw base never changes.
#[test]
fn a_corruption_found_during_io_fails_that_request_and_the_device_goes_on() {
    require_kvm!();
    let dir = Dir::new();
    let base = dir.join("base.raw");
    let top = dir.join("top.qcow2");
    std::fs::write(&base, vec![0x33u8; 8 << 20]).unwrap();
    if !create(
        &top,
        &["-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw"],
        "8M",
    ) {
        return;
    }
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xbb 2M 64k"])
        .arg(&top)
        .output()
        .expect("qemu-io comes with qemu-img");
    assert!(out.status.success());
    // L1[1] (2 MiB up, with 4 KiB clusters) -> its L2 table -> entry 0, made unaligned.
    let l1 = peek64(&top, L1_TABLE_OFFSET);
    let l2 = peek64(&top, l1 + 8) & (((1 << 56) - 1) & !511);
    assert_ne!(l2, 0);
    let entry = peek64(&top, l2);
    poke(&top, l2, &(entry + 512).to_be_bytes());
    let base_before = std::fs::read(&base).unwrap();

    let top_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&top)
        .unwrap();
    let base_file = std::fs::File::open(&base).unwrap();
    let (t, b) = (
        std::os::fd::AsRawFd::as_raw_fd(&top_file),
        std::os::fd::AsRawFd::as_raw_fd(&base_file),
    );
    for fd in [t, b] {
        // SAFETY: clears FD_CLOEXEC on our open files, so the backend inherits them.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    }
    let socket = dir.join("blk.sock");
    let log = dir.join("blk.log");
    let mut backend = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
        .arg("--socket-path")
        .arg(&socket)
        .args(["--disk-fd", &t.to_string(), "--format", "qcow2"])
        .args(["--backing-fd", &format!("{b}:raw")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting bulkhead-blk");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket from bulkhead-blk");
        std::thread::sleep(Duration::from_millis(20));
    }
    let guest = |rw: &str| {
        let mut cmd = common::bulkhead();
        cmd.args(["run", "--disk"])
            .arg(format!("socket={}", socket.display()))
            .arg("--cmdline")
            .arg(format!(
                "bulkhead.test=blk-rw,blk-flush bulkhead.blk.rw={rw}"
            ));
        common::run(cmd, Duration::from_secs(120))
    };
    // Sectors 4096.. are under the damaged entry.
    let bad = guest("4096:64");
    bad.assert_no_panic();
    assert_ne!(bad.code(), 0, "{bad:#?}");
    assert!(
        bad.stdout.contains("bulkhead-guest: FAIL blk-rw"),
        "{bad:#?}"
    );
    bad.assert_line("bulkhead-guest: PASS blk-flush");
    let good = guest("64:64");
    assert_eq!(good.code(), 0, "{good:#?}");
    good.assert_line("bulkhead-guest: PASS blk-rw");
    // SAFETY: kill with the pid of the backend this test started (not yet waited for).
    assert_eq!(unsafe { libc::kill(backend.id() as i32, libc::SIGTERM) }, 0);
    let status = common::wait_until(&mut backend, Instant::now() + Duration::from_secs(10));
    if status.is_none() {
        let _ = backend.kill();
        let _ = backend.wait();
    }
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{said}");
    assert!(
        said.contains(&format!("of fd {t}")) && said.contains("write at byte"),
        "no log line naming the image:\n{said}"
    );
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );
}
