//! Helpers shared by the end-to-end tests: running `bulkhead` with a deadline, reading
//! what it printed, and deciding whether this host can run a VM at all.

// Each test binary compiles this module; not every binary uses every helper.
#![allow(dead_code)]

pub mod confined;
pub mod ctl;
pub mod debian_kernel;
pub mod disk;
pub mod elf;
pub mod fc_curl;
pub mod fc_vm;
pub mod initramfs;
pub mod netns;
#[path = "../../jailer/src/bench/qsd.rs"]
pub mod qsd;
pub mod refusal;
#[path = "../../jailer/src/bench/report_line.rs"]
pub mod report_line;
pub mod running;
pub mod scratch;
pub mod skip;
pub mod soak;
pub mod spawned;
pub mod strace;
pub mod transport;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `bulkhead` binary under test.
pub fn bulkhead() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Why a test that needs KVM cannot run here, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened ({e})")),
    }
}

/// Skips the calling test (returns from it) with a printed reason when KVM is unavailable
/// (a skip even under CI: see [`skip`]).
#[macro_export]
macro_rules! require_kvm {
    () => {
        if let Some(why) = $crate::common::kvm_unavailable() {
            $crate::skip!($crate::common::skip::SkipKind::NoHardwareVirt, "{why}");
        }
    };
}

/// Skips the calling test (returns from it) when network namespaces and TAPs cannot be
/// made here (not root, no ip(8), no /dev/net/tun): a failure under CI (see [`skip`]).
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(why) = $crate::common::netns::unavailable() {
            $crate::skip!($crate::common::skip::SkipKind::NotPermitted, "{why}");
        }
    };
}

/// Whether this host has hardware virtualisation (so a stock kernel boots to user space).
pub fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}

/// What a finished `bulkhead` run printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status; `None` when the deadline killed it.
    pub status: Option<ExitStatus>,
    /// Standard output (the guest's serial console with `--serial stdio`).
    pub stdout: String,
    /// Standard error (bulkhead's own messages).
    pub stderr: String,
}

impl Output {
    /// The exit code, panicking (this is a test) with the output when there is none.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("bulkhead did not exit normally: {self:#?}"),
        }
    }

    /// Asserts that stdout has `line` as one of its lines.
    pub fn assert_line(&self, line: &str) {
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == line),
            "no line {line:?} in stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts that stdout has `line` as one of its lines, or as the start of one that a
    /// kernel message cut into (a Linux guest's printk and its user-space output share the
    /// serial console: `...mkfs.ext4 -d[    2.247391] tsc: Refined TSC ...`).
    #[allow(dead_code)] // not every test binary boots Linux
    pub fn assert_guest_line(&self, line: &str) {
        let cut_by_kernel = |rest: &str| {
            rest.strip_prefix('[')
                .and_then(|r| r.split_once("] "))
                .is_some_and(|(stamp, _)| {
                    let stamp = stamp.trim_start();
                    !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
        };
        assert!(
            self.stdout.lines().any(|l| {
                let l = l.trim_end();
                l == line || l.strip_prefix(line).is_some_and(cut_by_kernel)
            }),
            "no line {line:?} in stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts that nothing panicked.
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "bulkhead panicked:\n{}",
            self.stderr
        );
    }
}

/// Runs `cmd` to completion or until `deadline` passes (then kills it, by pid).
pub fn run(mut cmd: Command, deadline: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let out = reader(child.stdout.take().expect("piped"));
    let err = reader(child.stderr.take().expect("piped"));
    let status = wait_until(&mut child, Instant::now() + deadline);
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `bulkhead run ARGS` to completion or `deadline`; fails the test if anything panicked.
pub fn run_vm(args: &[&str], deadline: Duration) -> Output {
    let mut cmd = bulkhead();
    cmd.arg("run").args(args);
    let out = run(cmd, deadline);
    out.assert_no_panic();
    out
}

/// [`run_vm`] on transport `t` (`bulkhead run --transport T ARGS`).
pub fn run_vm_on(t: transport::Transport, args: &[&str], deadline: Duration) -> Output {
    let mut all = transport::flags(t).to_vec();
    all.extend_from_slice(args);
    run_vm(&all, deadline)
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child`; kills it at `deadline`. Returns its status, `None` if it was killed.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().expect("waiting for bulkhead") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd`, reading stdout line by line until `done` says the lines seen so far are
/// enough or `deadline` passes; then kills it. Returns the lines and whether `done` held.
pub fn run_until(
    mut cmd: Command,
    deadline: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> (Vec<String>, bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err = reader(child.stderr.take().expect("piped"));
    let end = Instant::now() + deadline;
    let mut lines = Vec::new();
    let mut ok = false;
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                lines.push(line);
                if done(&lines) {
                    ok = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (lines, ok, err.join().unwrap_or_default())
}
