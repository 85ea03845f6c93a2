//! End to end: every process of a VM under disk, console and network I/O is stopped
//! (SIGSTOP) and continued (SIGCONT) again and again, as any process of the VM's uid could
//! do to it, and the VM carries on to a normal end. A thread stopped in a timed wait
//! resumes through `restart_syscall`, which every seccomp role must allow (issue 9, item 2).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::disk::Image;
use common::running::children;

/// How long every process stays stopped in each round.
const STOPPED: Duration = Duration::from_millis(200);
/// Rounds at least (the guest's I/O lasts longer than this many rounds take).
const MIN_ROUNDS: u32 = 5;
/// How long the guest gets to say it is ready (a loaded CI machine is slow, not stuck).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether every thread of `pid` is stopped (state T in /proc/<pid>/task/*/stat).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name, which may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s == "T" || s == "t")
    })
}

/// Whether `f` holds within `limit` (checked every 5 ms).
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of the launcher this test started, read from /proc just
    // before; the launcher reaps them only when the VM ends, which this test waits for.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

#[test]
fn stopping_and_continuing_every_process_under_io_leaves_the_vm_running() {
    require_kvm!();
    require_netns!();
    let img = Image::new("stop-continue", 16 << 20);
    let console =
        std::env::temp_dir().join(format!("bulkhead-stop-continue-{}.log", std::process::id()));
    let mut child = common::bulkhead()
        .arg("run")
        // Two vCPUs: one runs the guest's I/O, the other waits halted in KVM_RUN.
        .args(["--cpus", "2"])
        .arg("--disk")
        .arg(img.disk_arg(""))
        .args(["--net", "auto"])
        .arg("--console")
        .arg(format!("file={}", console.display()))
        .args([
            "--cmdline",
            "bulkhead.test=blk-bench,console-write,net-serve bulkhead.blk.bench-ms=500 \
             bulkhead.console.lines=3000 bulkhead.net.serve-ms=2000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Bounded: a bulkhead that hangs before the guest is ready fails the test, not the suite.
    let ready_by = Instant::now() + READY_TIMEOUT;
    let mut ready = false;
    while let Some(left) = ready_by.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("bulkhead-guest: ready") => {
                ready = true;
                break;
            }
            Ok(l) if l.contains("FAIL") => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let kids = children(pid);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rounds = 0;
    let mut status = None;
    if ready {
        assert_eq!(kids.len(), 4, "{kids:?}");
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().expect("waiting for bulkhead") {
                status = Some(s);
                break;
            }
            for (kid, _) in &kids {
                signal(*kid, libc::SIGSTOP);
            }
            // Only a round in which every thread of every process really stopped counts.
            let stopped = wait_for(Duration::from_secs(1), || {
                kids.iter().all(|(k, _)| all_stopped(*k))
            });
            std::thread::sleep(STOPPED);
            for (kid, _) in &kids {
                signal(*kid, libc::SIGCONT);
            }
            if stopped {
                rounds += 1;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let status = status.or_else(|| common::wait_until(&mut child, deadline));
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let logged = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    let what = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(ready, "the guest never got ready: {what}");
    assert!(
        rounds >= MIN_ROUNDS,
        "only {rounds} rounds stopped every process: {what}"
    );
    assert!(
        !stderr.contains("SIGSYS") && !stderr.contains("restart_syscall"),
        "a process died by seccomp: {what}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{what}");
    for scenario in ["blk-bench", "console-write", "net-serve"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_end() == format!("bulkhead-guest: PASS {scenario}")),
            "{scenario} did not pass: {what}"
        );
    }
    assert_eq!(logged.lines().count(), 3000, "console file lines");
    eprintln!("{rounds} rounds of SIGSTOP/SIGCONT to every process");
}
