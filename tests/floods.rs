//! End to end: what a hostile guest or a local user could do to the host's logs and to
//! the demo's scratch disk, and what a hostile backend could print (issue 9, items 3, 5, 8).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::disk::Image;
use common::transport::{bulkhead_run, Transport};

const DEADLINE: Duration = Duration::from_secs(120);
/// Most stderr a guest flooding the vmm's warnings may cause (the issue saw 116 MB in 10 s).
const MAX_STDERR: usize = 64 << 10;

/// The test guest writes, for 3 s at CPL3 speed, status sequences the vmm warns about
/// (DRIVER_OK out of order, features not acceptable, features changed after FEATURES_OK),
/// then clears DRIVER_OK without a reset; the launcher's stderr stays small, says what it
/// suppressed, and the VM ends as the guest says. On both transports (`mmio::`, `pci::`).
fn a_guest_flooding_status_writes_does_not_flood_the_host(t: Transport) {
    require_kvm!();
    let img = Image::new(&format!("flood-{t}"), 1 << 20);
    let mut cmd = bulkhead_run(t);
    cmd.arg("--disk")
        .arg(img.disk_arg(""))
        .args(["--cmdline", "bulkhead.test=virtio-flood,virtio-status"]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    common::transport::assert_guest_used(t, &out.stdout);
    out.assert_line("bulkhead-guest: PASS virtio-flood");
    out.assert_line("bulkhead-guest: PASS virtio-status");
    let rounds: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("bulkhead-guest: virtio-flood "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the rounds line");
    // Each round is three warnings: enough that unlimited they would pass the bound.
    assert!(rounds >= 200, "only {rounds} rounds: no flood to limit");
    eprintln!(
        "{rounds} rounds of 3 warnings; stderr {} bytes",
        out.stderr.len()
    );
    assert!(
        out.stderr.len() < MAX_STDERR,
        "{} bytes of stderr:\n{}",
        out.stderr.len(),
        &out.stderr[..4096.min(out.stderr.len())]
    );
    for warning in [
        "DRIVER_OK without ACKNOWLEDGE/DRIVER/FEATURES_OK",
        "not acceptable",
        "driver changed features after FEATURES_OK",
    ] {
        assert!(
            out.stderr.lines().any(|l| l.starts_with("vmm| ")
                && l.contains(warning)
                && l.contains("similar messages suppressed")),
            "no suppressed count for {warning:?}:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("clearing 0x4 without a reset"),
        "the DRIVER_OK clear is named:\n{}",
        out.stderr
    );
}

on_both_transports!(a_guest_flooding_status_writes_does_not_flood_the_host);

/// Files another user put where the demo's scratch disk used to go, for the next pids.
struct Squatted(Vec<PathBuf>);

impl Squatted {
    fn next_pids(count: u32) -> Squatted {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
            .expect("ns_last_pid")
            .trim()
            .parse()
            .expect("a pid");
        let mut paths = Vec::new();
        for pid in last + 1..=last + count {
            let path = std::env::temp_dir().join(format!("bulkhead-{pid}-scratch.img"));
            // O_EXCL: never through whatever may already be at that name.
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            if created.and_then(|mut f| f.write_all(b"mallory's")).is_ok() {
                std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
                paths.push(path);
            }
        }
        Squatted(paths)
    }
}

impl Drop for Squatted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `bulkhead run` with no flags (the demo) runs although another user took the scratch
/// disk's old, guessable names for the next pids; its disk was in a private directory,
/// gone after the run.
#[test]
fn the_demo_runs_when_its_old_scratch_names_are_taken() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip::skip_or_fail(
            common::skip::SkipKind::NotPermitted,
            "the demo (namespaces, TAP, cgroups) needs root",
        );
        return;
    }
    let squatted = Squatted::next_pids(200);
    let mut cmd = common::bulkhead();
    cmd.arg("run");
    let out = common::run(cmd, DEADLINE);
    drop(squatted);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: done status=0");
    let scratch = out
        .stderr
        .split_whitespace()
        .find(|w| w.ends_with("/scratch.img"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no scratch disk named:\n{}", out.stderr));
    let dir = scratch.parent().expect("a directory");
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("bulkhead-") && !name.ends_with("scratch.img"),
        "{name}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The modes (0700 directory, 0600 image) are checked by demo.rs's unit test, which
    // can look at them while they exist.
    eprintln!("the scratch disk was {}", scratch.display());
}

/// A backend that a local attacker replaced (or a compromised one) writes terminal escape
/// sequences, a forged launcher line and 20 MB to its stderr before serving: the VM runs as
/// usual, and the launcher's stderr carries no control character, attributes every line
/// of the backend to it, and stays bounded, saying how much it suppressed.
#[test]
fn a_hostile_backends_stderr_reaches_the_user_defused_and_bounded() {
    require_kvm!();
    // The launcher runs its backends from beside itself: a private copy of the binaries
    // (hard links) with a wrapper in the place of bulkhead-blk.
    let real = PathBuf::from(env!("CARGO_BIN_EXE_bulkhead"));
    let bin = real.parent().expect("target dir");
    let dir = std::env::temp_dir().join(format!("bulkhead-hostile-blk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    for program in ["bulkhead", "bulkhead-vmm"] {
        let at = dir.join(program);
        if std::fs::hard_link(bin.join(program), &at).is_err() {
            std::fs::copy(bin.join(program), &at).unwrap();
        }
    }
    let wrapper = dir.join("bulkhead-blk");
    let script = format!(
        "#!/bin/sh\n\
         printf '\\033]0;owned\\007\\033[2J\\033[H\\rbulkhead: the VM finished cleanly\\n' >&2\n\
         /usr/bin/head -c 20000000 /dev/zero | /usr/bin/tr '\\0' 'A' >&2\n\
         exec {} \"$@\"\n",
        bin.join("bulkhead-blk").display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let img = Image::new("hostile-blk", 1 << 20);
    let mut cmd = std::process::Command::new(dir.join("bulkhead"));
    cmd.stdin(std::process::Stdio::null())
        .args(["run", "--serial", "off", "--disk"])
        .arg(img.disk_arg(""));
    let out = common::run(cmd, DEADLINE);
    let _ = std::fs::remove_dir_all(&dir);
    out.assert_no_panic();
    assert_eq!(
        out.code(),
        0,
        "{}",
        &out.stderr[..4096.min(out.stderr.len())]
    );
    let controls: Vec<char> = out
        .stderr
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(
        controls.is_empty(),
        "control characters reached the user: {controls:?}"
    );
    for line in out
        .stderr
        .lines()
        .filter(|l| l.contains("the VM finished cleanly"))
    {
        assert!(
            line.starts_with("disk0| "),
            "a forged line passed as the launcher's: {line}"
        );
    }
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("disk0| ") && l.contains("\\x1b]0;owned")),
        "the escape sequence is not shown defused"
    );
    assert!(
        out.stderr.len() < 2 << 20,
        "{} bytes of stderr from 20 MB written",
        out.stderr.len()
    );
    assert!(
        out.stderr.contains("of output of disk0 suppressed"),
        "{}",
        &out.stderr[out.stderr.len().saturating_sub(2048)..]
    );
}
