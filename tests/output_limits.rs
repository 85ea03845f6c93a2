//! End to end: a guest that prints without end fills its serial or console file up to
//! `max-size=` and no further; the VM runs to its normal end and the host is told once.

mod common;

use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(180);
/// What the vmm or console says when a file reaches its limit.
const TOLD: &str = "reached its max-size of";

/// A fresh file path, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "bulkhead-output-limit-{tag}-{}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        Scratch(p)
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.0).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> common::Output {
    common::run_vm(args, DEADLINE)
}

fn assert_told_once(out: &common::Output) {
    assert_eq!(
        out.stderr.matches(TOLD).count(),
        1,
        "the host should be told once:\n{}",
        out.stderr
    );
}

#[test]
fn a_guest_flooding_the_serial_port_stops_at_max_size() {
    require_kvm!();
    let file = Scratch::new("serial");
    let out = run(&[
        "--serial",
        &format!("file={},max-size=64K", file.0.display()),
        "--cmdline",
        // Four times the limit.
        "bulkhead.test=serial-flood bulkhead.serial.bytes=262144",
    ]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(file.len(), 64 << 10);
    let text = std::fs::read_to_string(&file.0).expect("reading the serial file");
    assert!(text.contains("bulkhead-guest: flood 0000000000 "), "{text}");
    assert_told_once(&out);
}

#[test]
fn what_the_serial_file_held_counts() {
    require_kvm!();
    let file = Scratch::new("serial-append");
    let before = vec![b'.'; 4000];
    std::fs::write(&file.0, &before).expect("pre-filling the file");
    let out = run(&[
        "--serial",
        &format!("file={},max-size=4096", file.0.display()),
    ]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let now = std::fs::read(&file.0).expect("reading the serial file");
    assert_eq!(now.len(), 4096);
    assert!(now.starts_with(&before) && now[4000..].starts_with(b"bulkhead-guest: "));
    assert_told_once(&out);
}

#[test]
fn a_guest_flooding_the_virtio_console_stops_at_max_size() {
    require_kvm!();
    let file = Scratch::new("console");
    let out = run(&[
        "--console",
        &format!("file={},max-size=16K", file.0.display()),
        "--cmdline",
        // About 70 KB of lines.
        "bulkhead.test=console-write bulkhead.console.lines=2000",
    ]);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: console0 wrote 2000 lines");
    assert_eq!(file.len(), 16 << 10);
    assert_told_once(&out);
}

#[test]
fn max_size_zero_is_refused() {
    for flag in ["--serial", "--console"] {
        let out = run(&[flag, "file=/tmp/never-created,max-size=0"]);
        assert_eq!(out.code(), 2, "{out:#?}");
        assert!(
            out.stderr.contains("max-size=0: must be above 0"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn serial_output_on_a_redirected_stdout_is_not_cut() {
    require_kvm!();
    // `bulkhead run > file`: the vmm's standard output is a regular file, which only the
    // launcher's limit (guest memory) bounds, not a serial file's cap.
    let file = Scratch::new("stdout");
    let out = std::fs::File::create(&file.0).expect("creating the output file");
    let status = common::bulkhead()
        .arg("run")
        .args([
            "--cmdline",
            "bulkhead.test=serial-flood bulkhead.serial.bytes=4096",
        ])
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running bulkhead");
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&file.0).expect("reading the output");
    assert!(text.contains("bulkhead-guest: done status=0"), "{text}");
}
