//! Images refused at start by the launcher, each with a message naming the file and the
//! problem (issue 13, "Bad images"): a backing loop, a missing backing file, an image that
//! may grow bigger than the host allows, an external data file, a qcow2 given without
//! `format=`, a virtual size that is not whole sectors, a backing file the overlay's owner
//! could not read. All end in the launcher before any process starts, so they need no KVM;
//! they need `qemu-img` to make the images. The chain refusals (loop, missing backing file,
//! owner) are also made by a standalone `bulkhead-blk --blk-file`, which opens the chain
//! itself. Then overlays served end to end (KVM): the guest's writes, a restarted backend.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::refusal::{refused_by_launcher, refused_standalone};
use common::running::has_option;
use common::skip::SkipKind;

const DEADLINE: Duration = Duration::from_secs(60);

/// A scratch directory, removed with what it holds.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("bulkhead-chain-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("making the scratch directory");
        Dir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `qemu-img ARGS` in this directory; panics with its output if it fails.
    fn qemu_img(&self, args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .current_dir(&self.0)
            .output()
            .expect("running qemu-img");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Skips the calling test (a failure under CI) when qemu-img is not installed.
macro_rules! require_qemu_img {
    () => {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            skip!(
                SkipKind::MissingTool,
                "qemu-img (Debian package qemu-utils) is not installed"
            );
        }
    };
}

fn disk(path: &Path, keys: &str) -> String {
    format!("path={}{keys}", path.display())
}

#[test]
fn a_backing_loop_is_refused_naming_the_files() {
    require_qemu_img!();
    let d = Dir::new("loop");
    // -u: qemu-img does not open the backing file, which does not exist yet.
    d.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "1M",
    ]);
    d.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ]);
    let (a, b) = (d.path("a.qcow2"), d.path("b.qcow2"));
    let said = format!(
        "backing file {} of disk image {} is already in the chain (a backing loop)",
        a.display(),
        b.display()
    );
    refused_by_launcher(
        &[],
        &disk(&a, ",format=qcow2"),
        &[&format!("bulkhead: error: disk0: {said}")],
    );
    refused_standalone(&a, &["--format", "qcow2"], &[&said]);
}

#[test]
fn a_missing_backing_file_is_refused_naming_it_and_the_overlay() {
    require_qemu_img!();
    let d = Dir::new("missing");
    d.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
    ]);
    std::fs::remove_file(d.path("base.raw")).expect("removing the base");
    let said = format!(
        "backing file {} of disk image {}",
        d.path("base.raw").display(),
        d.path("top.qcow2").display()
    );
    refused_by_launcher(
        &[],
        &disk(&d.path("top.qcow2"), ",format=qcow2"),
        &[
            &format!("bulkhead: error: disk0: {said}"),
            "No such file or directory",
        ],
    );
    let top = d.path("top.qcow2");
    refused_standalone(
        &top,
        &["--format", "qcow2"],
        &[
            &format!("bulkhead-blk: {said}"),
            "No such file or directory",
        ],
    );
}

#[test]
fn an_image_that_may_grow_bigger_than_the_launcher_may_write_is_refused() {
    require_qemu_img!();
    if Command::new("prlimit").arg("--version").output().is_err() {
        skip!(
            SkipKind::MissingTool,
            "prlimit (Debian package util-linux) is not installed"
        );
    }
    let d = Dir::new("fsize");
    d.qemu_img(&["create", "-q", "-f", "qcow2", "big.qcow2", "1G"]);
    let big = d.path("big.qcow2");
    // 512 MiB may be written: a 1 GiB disk, once fully allocated, is more.
    let limit = 512u64 << 20;
    let fsize = format!("--fsize={limit}");
    refused_by_launcher(
        &["prlimit", &fsize, "--"],
        &disk(&big, ",format=qcow2"),
        &[
            &format!(
                "bulkhead: error: disk0: disk image {} (qcow2, virtual size 1073741824 bytes) may grow to",
                big.display()
            ),
            &format!("more than this process may write (RLIMIT_FSIZE {limit} bytes"),
        ],
    );
}

#[test]
fn an_image_bigger_than_the_file_system_holds_is_refused() {
    require_qemu_img!();
    let d = Dir::new("fsmax");
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct this function owns.
    let ext4 = unsafe {
        let path = std::ffi::CString::new(d.0.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type == 0xef53
    };
    if !ext4 {
        // Not a missing tool: other file systems (xfs, btrfs, tmpfs) hold files larger than
        // any qcow2 qemu-img makes, so there is nothing to refuse there.
        eprintln!(
            "{}: the scratch directory is not on ext4 (largest file 16 TiB); nothing to check",
            common::skip::test_name()
        );
        return;
    }
    d.qemu_img(&["create", "-q", "-f", "qcow2", "huge.qcow2", "32T"]);
    let huge = d.path("huge.qcow2");
    refused_by_launcher(
        &[],
        &disk(&huge, ",format=qcow2"),
        &[
            &format!(
                "disk image {} (qcow2, virtual size 35184372088832 bytes) may grow to",
                huge.display()
            ),
            "more than the largest file its file system holds",
        ],
    );
}

#[test]
fn an_external_data_file_is_refused() {
    require_qemu_img!();
    let d = Dir::new("datafile");
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=data.raw",
        "top.qcow2",
        "1M",
    ]);
    let top = d.path("top.qcow2");
    refused_by_launcher(
        &[],
        &disk(&top, ",format=qcow2"),
        &[&format!(
            "disk image {} keeps its data in an external data file",
            top.display()
        )],
    );
}

#[test]
fn a_qcow2_without_format_is_refused_and_the_user_asked_to_say() {
    require_qemu_img!();
    let d = Dir::new("probe");
    d.qemu_img(&["create", "-q", "-f", "qcow2", "top.qcow2", "1M"]);
    let top = d.path("top.qcow2");
    refused_by_launcher(
        &[],
        &disk(&top, ""),
        &[&format!(
            "disk image {} starts with a qcow2 header: pass format=qcow2",
            top.display()
        )],
    );
}

#[test]
fn a_virtual_size_that_is_not_whole_sectors_is_refused() {
    require_qemu_img!();
    let d = Dir::new("vsize");
    d.qemu_img(&["create", "-q", "-f", "qcow2", "odd.qcow2", "1M"]);
    let odd = d.path("odd.qcow2");
    let mut bytes = std::fs::read(&odd).expect("reading the image");
    // The header's virtual size (bytes 24..32, big-endian).
    bytes[24..32].copy_from_slice(&1000u64.to_be_bytes());
    std::fs::write(&odd, bytes).expect("writing the image");
    refused_by_launcher(
        &[],
        &disk(&odd, ",format=qcow2"),
        &[&format!(
            "disk image {} (qcow2) has a virtual size of 1000 bytes, not a multiple of 512",
            odd.display()
        )],
    );
}

/// A raw base of 16 MiB noise in `d` and a qcow2 overlay on it (its backing file named
/// relative to the overlay, its format recorded): (base, overlay).
fn overlay_on_raw(d: &Dir) -> (common::disk::Image, PathBuf) {
    // Named after the directory's tag, so that tests running side by side never share it.
    let tag =
        d.0.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    let made = common::disk::Image::new(&tag, 16 << 20);
    let base = common::disk::Image {
        path: d.path("base.raw"),
        original: made.original.clone(),
    };
    std::fs::rename(&made.path, &base.path).expect("moving the base");
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "overlay.qcow2",
    ]);
    (base, d.path("overlay.qcow2"))
}

#[test]
fn an_overlay_served_by_the_launcher_reads_its_base_and_writes_only_itself() {
    require_kvm!();
    require_qemu_img!();
    let d = Dir::new("served");
    let (base, overlay) = overlay_on_raw(&d);
    let out = common::run_vm(
        &[
            "--disk",
            &disk(&overlay, ",format=qcow2"),
            "--cmdline",
            "bulkhead.test=blk-identify,blk-rw,blk-flush bulkhead.blk.rw=2048:64 \
             bulkhead.blk.capacity=32768",
        ],
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    assert!(base.read() == base.original, "the base changed");
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&overlay)
        .output()
        .expect("running qemu-img check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && said.contains("No errors were found"),
        "{check:?}"
    );
    // What the guest sees now: the base's bytes, with its pattern where it wrote.
    let flat = d.path("flat.raw");
    d.qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "overlay.qcow2",
        "flat.raw",
    ]);
    let now = std::fs::read(&flat).expect("reading the flattened overlay");
    common::disk::assert_pattern_only(&flat, &base.original, &now, 2048, 64);
}

/// The pids of the `bulkhead-blk` processes that have `path` open.
fn backends_holding(path: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "bulkhead-blk")
        })
        .filter(|pid| fd_paths(*pid).iter().any(|(_, p)| p == path))
        .collect()
}

/// Process `pid`'s open fds and what they name.
fn fd_paths(pid: u32) -> Vec<(i32, PathBuf)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?))
        })
        .collect()
}

#[test]
fn a_restarted_backend_gets_the_whole_chain() {
    require_kvm!();
    require_qemu_img!();
    let d = Dir::new("restart");
    let (base, overlay) = overlay_on_raw(&d);
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--disk", &disk(&overlay, ",format=qcow2")])
        .args(["--cmdline", "bulkhead.test=blk-probe,idle"]);
    let mut vm = common::spawned::Spawned::start(&mut cmd);
    vm.wait_for_line("bulkhead-guest: PASS blk-probe", DEADLINE);
    let first = backends_holding(&overlay);
    assert_eq!(
        first.len(),
        1,
        "bulkhead-blk processes on the overlay: {first:?}"
    );
    // SAFETY: kill(2) of the bulkhead-blk found above (its comm checked), serving our VM.
    assert_eq!(unsafe { libc::kill(first[0] as i32, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + DEADLINE;
    let second = loop {
        let now: Vec<u32> = backends_holding(&overlay)
            .into_iter()
            .filter(|p| *p != first[0])
            .collect();
        if let [pid] = now[..] {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restarted bulkhead-blk"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let fds = fd_paths(second);
    assert!(fds.contains(&(4, overlay.clone())), "{fds:?}");
    assert!(fds.contains(&(5, base.path.clone())), "{fds:?}");
    let args = common::running::args_of(second);
    assert!(
        has_option(&args, "--format", "qcow2") && has_option(&args, "--backing-fd", "5:raw"),
        "{args:?}"
    );
    let (code, console, stderr) = vm.terminate(DEADLINE);
    assert!(code.is_some(), "{console}\n{stderr}");
    assert!(
        stderr.contains(&format!("restarted as pid {second}")),
        "{stderr}"
    );
    assert!(base.read() == base.original, "the base changed");
}

#[test]
fn a_backing_file_its_overlays_owner_could_not_read_is_refused() {
    require_qemu_img!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip!(
            SkipKind::NotPermitted,
            "needs root (to give the overlay to another user)"
        );
    }
    let d = Dir::new("owner");
    d.qemu_img(&["create", "-q", "-f", "raw", "secret.raw", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "secret.raw",
        "-F",
        "raw",
        "top.qcow2",
    ]);
    let (secret, top) = (d.path("secret.raw"), d.path("top.qcow2"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The overlay is another user's: its header may name only what that user could read.
    std::os::unix::fs::chown(&top, Some(4242), Some(4242)).expect("chown");
    let said = format!(
        "backing file {} (owner uid 0, mode 600) of disk image {} (owner uid 4242): refused",
        secret.display(),
        top.display()
    );
    refused_by_launcher(
        &[],
        &disk(&top, ",format=qcow2"),
        &[&format!("bulkhead: error: disk0: {said}"), "--open-as"],
    );
    // A standalone bulkhead-blk run as root applies the same rule.
    refused_standalone(&top, &["--format", "qcow2"], &[&said]);
    // Readable by everyone, it is let through (to whatever comes next).
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--disk", &disk(&top, ",format=qcow2")])
        .args(["--cmdline", "bulkhead.test=blk-probe"]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert!(
        !out.stderr.contains("refused: a backing file"),
        "{}",
        out.stderr
    );
}
