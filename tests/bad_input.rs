//! Bad input to `bulkhead run` gets a clear message naming the problem and exit status 125
//! (2 for flags clap rejects), never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::elf::elf_with_segment;

const DEADLINE: Duration = Duration::from_secs(60);
const EXIT_FAILED: i32 = 125;

/// A scratch file of one test, removed when the test ends (pass or panic): the suite
/// leaves nothing in the temporary directory (the initrd test alone writes 20 MiB).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `bytes` to a file of its own (named after the process and `name`: tests run in
/// parallel, and other runs may share the temporary directory).
fn scratch(name: &str, bytes: &[u8]) -> Scratch {
    let path =
        std::env::temp_dir().join(format!("bulkhead-bad-input-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("writing scratch file");
    Scratch(path)
}

/// Runs `bulkhead run ARGS` and checks it failed with `status` and a message containing
/// every one of `expected`.
fn fails_with(args: &[&str], status: i32, expected: &[&str]) {
    let mut cmd = common::bulkhead();
    cmd.arg("run").args(args);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), status, "{out:#?}");
    for e in expected {
        assert!(
            out.stderr.contains(e),
            "stderr lacks {e:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn missing_kernel() {
    require_kvm!();
    fails_with(
        &["--kernel", "/nonexistent/vmlinux"],
        EXIT_FAILED,
        &[
            "opening kernel image: /nonexistent/vmlinux",
            "No such file or directory",
        ],
    );
}

#[test]
fn unreadable_kernel() {
    require_kvm!();
    // A directory opens but cannot be read, even by root.
    let dir = std::env::temp_dir();
    fails_with(
        &["--kernel", dir.to_str().expect("utf-8 temp dir")],
        EXIT_FAILED,
        &["opening kernel image", "Is a directory"],
    );
}

#[test]
fn file_that_is_not_a_kernel() {
    require_kvm!();
    let path = scratch("not-a-kernel", &[0x42; 4096]);
    fails_with(
        &["--kernel", path.to_str().expect("utf-8")],
        EXIT_FAILED,
        &["not a kernel image (neither an ELF vmlinux nor a bzImage)"],
    );
}

#[test]
fn empty_kernel() {
    require_kvm!();
    let path = scratch("empty", &[]);
    fails_with(
        &["--kernel", path.to_str().expect("utf-8")],
        EXIT_FAILED,
        &["not a kernel image"],
    );
}

#[test]
fn truncated_elf() {
    require_kvm!();
    // The segment claims 0x2000 bytes from offset 0x1000; the file ends at 0x1800.
    let path = scratch(
        "truncated.elf",
        &elf_with_segment(0x20_0000, 0x2000, 0x2000, 0x1800),
    );
    fails_with(
        &["--kernel", path.to_str().expect("utf-8")],
        EXIT_FAILED,
        &["truncated kernel image: program segment 0 needs bytes up to 12288, the file has 6144"],
    );
    // Cut inside the program header table.
    let path = scratch("truncated-ph.elf", &elf_with_segment(0x20_0000, 0, 0, 90));
    fails_with(
        &["--kernel", path.to_str().expect("utf-8")],
        EXIT_FAILED,
        &["truncated kernel image: the program header table"],
    );
}

#[test]
fn memory_too_small_for_the_kernel() {
    require_kvm!();
    let path = scratch(
        "big.elf",
        &elf_with_segment(0x100_0000, 0x1000, 0x80_0000, 0x2000),
    );
    fails_with(
        &["--kernel", path.to_str().expect("utf-8"), "--memory", "16"],
        EXIT_FAILED,
        &[
            "kernel needs guest memory up to 0x1800000 (24 MiB)",
            "use a larger --memory",
        ],
    );
}

#[test]
fn memory_too_small_for_the_initrd() {
    require_kvm!();
    let kernel = scratch(
        "small.elf",
        &elf_with_segment(0x20_0000, 0x1000, 0x1000, 0x2000),
    );
    let initrd = scratch("initrd.img", &vec![0u8; 20 << 20]);
    fails_with(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--initrd",
            initrd.to_str().expect("utf-8"),
            "--memory",
            "16",
        ],
        EXIT_FAILED,
        &[
            "initrd",
            "is 20971520 bytes but only",
            "use a larger --memory",
        ],
    );
}

#[test]
fn missing_initrd() {
    require_kvm!();
    fails_with(
        &["--initrd", "/nonexistent/initrd"],
        EXIT_FAILED,
        &[
            "opening initrd: /nonexistent/initrd",
            "No such file or directory",
        ],
    );
}

#[test]
fn command_line_too_long() {
    require_kvm!();
    let long = "x".repeat(3000);
    fails_with(
        &["--cmdline", &long],
        EXIT_FAILED,
        &["kernel command line is 3000 bytes; the boot protocol allows at most 2047"],
    );
}

#[test]
fn zero_and_too_many_cpus() {
    fails_with(
        &["--cpus", "0"],
        EXIT_FAILED,
        &["--cpus 0: must be between 1 and 254"],
    );
    fails_with(
        &["--cpus", "300"],
        EXIT_FAILED,
        &["--cpus 300: must be between 1 and 254"],
    );
}

#[test]
fn memory_out_of_range() {
    fails_with(
        &["--memory", "0"],
        EXIT_FAILED,
        &["--memory 0: must be between"],
    );
}

#[test]
fn malformed_flags() {
    fails_with(
        &["--memory", "lots"],
        2,
        &["invalid value 'lots' for '--memory <MiB>'"],
    );
    fails_with(
        &["--serial", "tty"],
        2,
        &["expected stdio, file=PATH[,max-size=SIZE] or off"],
    );
    fails_with(
        &["--frobnicate"],
        2,
        &["unexpected argument '--frobnicate'"],
    );
}

#[test]
fn serial_file_in_missing_directory() {
    require_kvm!();
    fails_with(
        &["--serial", "file=/nonexistent/dir/console.log"],
        EXIT_FAILED,
        &[
            "opening serial file: /nonexistent/dir/console.log",
            "No such file or directory",
        ],
    );
}

#[test]
fn no_dev_kvm() {
    // Hide /dev in a private mount namespace (needs root and unshare(1)).
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !is_root
        || std::process::Command::new("unshare")
            .arg("--help")
            .output()
            .is_err()
    {
        common::skip::skip_or_fail(
            common::skip::SkipKind::NotPermitted,
            "hiding /dev/kvm needs root and unshare(1)",
        );
        return;
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" run --serial stdio"#)
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .stdin(std::process::Stdio::null());
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), EXIT_FAILED, "{out:#?}");
    assert!(
        out.stderr.contains("opening /dev/kvm") && out.stderr.contains("No such file or directory"),
        "{}",
        out.stderr
    );
}
