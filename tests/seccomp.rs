//! Seccomp from outside: a backend thread that makes a call outside its allowlist is
//! reported on stderr (one line naming the program, thread, role and call) and the process
//! dies by SIGSYS, standalone and under `bulkhead run` (whose message names the signal).
//! `--seccomp log` lets the same call through and the kernel logs it (an audit record,
//! type 1326, in the kernel log). The trigger is the backends' hidden
//! `--seccomp-selftest` (or `BULKHEAD_SECCOMP_SELFTEST` for backends the launcher starts),
//! which calls `ptrace` once the thread is confined.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_seccomp::report;
use common::disk::Image;

/// A scratch path for this test process.
fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bulkhead-seccomp-{tag}-{}", std::process::id()))
}

/// Starts `program` with `args`; waits at most `deadline` (then kills it, by pid).
fn run_backend(program: &str, args: &[&str], deadline: Duration) -> common::Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    common::run(cmd, deadline)
}

/// The report line in `stderr`, parsed: as a backend run alone prints it, or as the
/// launcher relays it (after the process's name, `disk0| `).
fn violation(stderr: &str) -> report::Violation {
    stderr
        .lines()
        .find_map(|l| {
            report::parse(l).or_else(|| l.split_once("| ").and_then(|(_, r)| report::parse(r)))
        })
        .unwrap_or_else(|| panic!("no seccomp report in stderr:\n{stderr}"))
}

#[test]
fn bulkhead_blk_main_thread_outside_its_list_dies_by_sigsys() {
    let img = Image::new("seccomp-main", 1 << 20);
    let sock = scratch("blk.sock");
    let _ = std::fs::remove_file(&sock);
    let out = run_backend(
        env!("CARGO_BIN_EXE_bulkhead-blk"),
        &[
            "--socket-path",
            sock.to_str().unwrap(),
            "--disk",
            img.path.to_str().unwrap(),
            "--seccomp-selftest",
            "main",
        ],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&sock);
    let status = out.status.expect("bulkhead-blk did not end by itself");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{out:#?}");
    let v = violation(&out.stderr);
    assert_eq!(v.program, "bulkhead-blk");
    assert_eq!(v.role, "vhost-user");
    assert_eq!((v.nr, v.name.as_str()), (libc::SYS_ptrace, "ptrace"));
}

#[test]
fn bulkhead_console_main_thread_outside_its_list_dies_by_sigsys() {
    let sock = scratch("console.sock");
    let log = scratch("console.log");
    let _ = std::fs::remove_file(&sock);
    let out = run_backend(
        env!("CARGO_BIN_EXE_bulkhead-console"),
        &[
            "--socket-path",
            sock.to_str().unwrap(),
            "--file",
            log.to_str().unwrap(),
            "--seccomp-selftest",
            "main",
        ],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&log);
    let status = out.status.expect("bulkhead-console did not end by itself");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{out:#?}");
    let v = violation(&out.stderr);
    assert_eq!(
        (v.program.as_str(), v.role.as_str()),
        ("bulkhead-console", "console-main")
    );
}

/// The kernel's audit record of seccomp action `code` (`0x7ffc0000`: SECCOMP_RET_LOG)
/// for system call `nr` by process `pid`, read from the kernel log (`dmesg`: where audit
/// records go when no audit daemon takes them), if there is one yet.
fn audit_record(pid: u32, nr: i64, code: &str) -> Option<String> {
    let out = Command::new("dmesg").output().expect("running dmesg");
    let log = String::from_utf8_lossy(&out.stdout);
    let (pid, nr, code) = (
        format!(" pid={pid} "),
        format!(" syscall={nr} "),
        format!(" code={code}"),
    );
    log.lines()
        .find(|l| {
            l.contains("type=1326") && l.contains(&pid) && l.contains(&nr) && l.ends_with(&code)
        })
        .map(str::to_owned)
}

/// Runs `bulkhead-blk --seccomp log` with its main thread calling `ptrace` once confined;
/// checks it went on serving (alive after the call, then ending on SIGTERM with status 0);
/// returns the pid and the kernel's record of the call, if the kernel log has one.
fn log_mode_once(attempt: u32) -> (u32, Option<String>) {
    use std::io::{BufRead, BufReader};
    let img = Image::new(&format!("seccomp-log{attempt}"), 1 << 20);
    let sock = scratch(&format!("log{attempt}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
        .args([
            "--socket-path",
            sock.to_str().unwrap(),
            "--disk",
            img.path.to_str().unwrap(),
            "--seccomp",
            "log",
            "--seccomp-selftest",
            "main",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead-blk");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("--seccomp-selftest: calling ptrace") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let called = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    // The record of the call the filter let through (SECCOMP_RET_LOG), with its pid.
    let end = Instant::now() + Duration::from_secs(5);
    let mut record = None;
    while called && record.is_none() && Instant::now() < end {
        record = audit_record(pid, libc::SYS_ptrace, "0x7ffc0000");
        if record.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Still there after the call: it went on to wait for a frontend.
    let early = child.try_wait().expect("waiting for bulkhead-blk");
    // SAFETY: SIGTERM to the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(20));
    let stderr = reader.join().unwrap_or_default();
    let _ = std::fs::remove_file(&sock);
    assert!(called, "bulkhead-blk never made its call:\n{stderr}");
    assert_eq!(
        early, None,
        "bulkhead-blk ended under --seccomp log:\n{stderr}"
    );
    let status = status.expect("bulkhead-blk did not end on SIGTERM");
    // Ended by its SIGTERM handler, so it was serving after the call.
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    (pid, record)
}

#[test]
fn log_mode_logs_the_call_and_lets_it_through() {
    // Without an audit daemon the kernel prints audit records under printk's rate limit
    // (/proc/sys/kernel/printk_ratelimit: 5 s, 10 records), which the SIGSYS deaths of
    // tests running meanwhile may use up: a missing record is retried after that interval.
    let mut pids = Vec::new();
    for attempt in 1..=3 {
        let (pid, record) = log_mode_once(attempt);
        if record.is_some() {
            return;
        }
        pids.push(pid);
        std::thread::sleep(Duration::from_secs(5));
    }
    panic!(
        "no audit record (type=1326, code=0x7ffc0000) of ptrace by pids {pids:?} in the kernel log"
    );
}

/// `bulkhead run` with `device_args`, the threads of `trigger` (`worker`: every backend's
/// queue threads at their first event; or a role's name) told to misbehave once confined;
/// the launcher must name the process and SIGSYS.
fn dies_under_the_launcher(
    device_args: &[&str],
    cmdline: &str,
    trigger: &str,
    program: &str,
    role: &str,
) {
    dies_calling(
        device_args,
        cmdline,
        trigger,
        program,
        role,
        (libc::SYS_ptrace, "ptrace"),
    );
}

/// As [`dies_under_the_launcher`], the call being `call` (number, name).
fn dies_calling(
    device_args: &[&str],
    cmdline: &str,
    trigger: &str,
    program: &str,
    role: &str,
    call: (i64, &str),
) {
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .args(device_args)
        .args(["--cmdline", cmdline])
        .env("BULKHEAD_SECCOMP_SELFTEST", trigger);
    let out = common::run(cmd, Duration::from_secs(60));
    out.assert_no_panic();
    // A process of the VM failed: bulkhead's own failure status, as the README promises.
    assert_eq!(out.status.and_then(|s| s.code()), Some(125), "{out:#?}");
    let v = violation(&out.stderr);
    assert_eq!(
        (v.program.as_str(), v.role.as_str()),
        (program, role),
        "{out:#?}"
    );
    assert_eq!(v.nr, call.0);
    let killed = format!("{program} (pid ");
    let named = format!(
        "was killed by signal 31 (SIGSYS): seccomp refused system call {} ({}) in thread {} (role {role})",
        call.1, call.0, v.thread
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("bulkhead: ") && l.contains(&killed) && l.contains(&named)),
        "the launcher does not name SIGSYS and the call ({named:?}):\n{}",
        out.stderr
    );
}

#[test]
fn a_block_queue_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    let img = Image::new("seccomp-worker", 16 << 20);
    dies_under_the_launcher(
        &["--disk", &img.disk_arg("")],
        "bulkhead.test=blk-identify",
        "worker",
        "bulkhead-blk",
        "blk-worker",
    );
}

/// A queue thread the guest used has narrowed from the process's role to its own: a call
/// only the process role allows (`accept4`, for the vhost-user thread) kills it. (Counting
/// filters, `confinement.rs`, shows a second role is there; this shows it is the worker's.)
#[test]
fn a_block_queue_thread_refuses_what_only_its_process_role_allows() {
    require_kvm!();
    let img = Image::new("seccomp-narrowed", 16 << 20);
    dies_calling(
        &["--disk", &img.disk_arg("")],
        "bulkhead.test=blk-identify",
        "worker-narrowed",
        "bulkhead-blk",
        "blk-worker",
        (libc::SYS_accept4, "accept4"),
    );
}

#[test]
fn a_net_queue_thread_refuses_what_only_its_process_role_allows() {
    require_kvm!();
    require_netns!();
    dies_calling(
        &["--net", "auto,host-ip=10.0.2.1/24,guest-ip=10.0.2.2/24"],
        "bulkhead.test=net-serve bulkhead.net.ip=10.0.2.2/24 bulkhead.net.serve-ms=3000",
        "worker-narrowed",
        "bulkhead-net",
        "net-worker",
        (libc::SYS_accept4, "accept4"),
    );
}

#[test]
fn a_console_queue_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    let log = scratch("worker-console.log");
    dies_under_the_launcher(
        &["--console", &format!("file={}", log.display())],
        "bulkhead.test=console-write bulkhead.console.lines=5",
        "worker",
        "bulkhead-console",
        "console-worker",
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_net_queue_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    require_netns!();
    dies_under_the_launcher(
        &["--net", "auto,host-ip=10.0.2.1/24,guest-ip=10.0.2.2/24"],
        "bulkhead.test=net-serve bulkhead.net.ip=10.0.2.2/24 bulkhead.net.serve-ms=3000",
        "net-worker",
        "bulkhead-net",
        "net-worker",
    );
}

#[test]
fn a_vcpu_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    dies_under_the_launcher(&[], "console=ttyS0", "vcpu", "bulkhead-vmm", "vcpu");
}

#[test]
fn a_vmm_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    dies_under_the_launcher(&[], "console=ttyS0", "vmm-main", "bulkhead-vmm", "vmm-main");
}

#[test]
fn a_backend_thread_under_its_process_filter_is_reported_by_the_launcher() {
    require_kvm!();
    let img = Image::new("seccomp-process", 16 << 20);
    dies_under_the_launcher(
        &["--disk", &img.disk_arg("")],
        "bulkhead.test=blk-identify",
        "blk-process",
        "bulkhead-blk",
        "blk-process",
    );
}

#[test]
fn a_backend_main_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    let img = Image::new("seccomp-vhost-user", 16 << 20);
    dies_under_the_launcher(
        &["--disk", &img.disk_arg("")],
        "bulkhead.test=blk-identify",
        "vhost-user",
        "bulkhead-blk",
        "vhost-user",
    );
}

#[test]
fn the_console_main_thread_outside_its_list_is_reported_by_the_launcher() {
    require_kvm!();
    let log = scratch("main-console.log");
    dies_under_the_launcher(
        &["--console", &format!("file={}", log.display())],
        "bulkhead.test=console-write bulkhead.console.lines=5",
        "console-main",
        "bulkhead-console",
        "console-main",
    );
    let _ = std::fs::remove_file(&log);
}
