//! A block process that dies mid-run: what was flushed is in the image, the vmm neither
//! crashes nor hangs, the user is told which device failed and how, and the VM stops.
//! And FLUSH means durable: bulkhead-blk calls `fdatasync` on the image after the writes
//! and before the guest sees the FLUSH complete.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::disk::{assert_pattern_only, Image};

/// Children of `pid` (from every thread's `children` list) whose name is `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if name.trim_end() == comm {
                found.push(child);
            }
        }
    }
    found
}

#[test]
fn flushed_writes_survive_sigkill_of_the_block_process() {
    require_kvm!();
    let img = Image::new("blk-kill", 16 << 20);
    // restart=off: the process's death stops the VM (with a restart policy it would be
    // restarted; see tests/supervision.rs).
    let mut child = common::bulkhead()
        .arg("run")
        .arg("--disk")
        .arg(img.disk_arg(",restart=off"))
        .args([
            "--cmdline",
            // After the flush the guest keeps the disk busy (reads elsewhere) for a minute.
            "bulkhead.test=blk-rw,blk-flush,blk-bench bulkhead.blk.rw=2048:64 \
             bulkhead.blk.bench=8192:8192 bulkhead.blk.bench-ms=60000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Read the console on a thread (to the end, so the guest's output never hits a closed
    // pipe) and hear from it when the flush is done.
    let (tx, rx) = std::sync::mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim_end() == "bulkhead-guest: blk0 flushed" {
                let _ = tx.send(());
            }
            console.push(line);
        }
        console
    });
    let flushed = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    if !flushed {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the guest never flushed:\n{}",
            out_reader.join().unwrap_or_default().join("\n")
        );
    }
    let blk = children_named(pid, "bulkhead-blk");
    assert_eq!(
        blk.len(),
        1,
        "one bulkhead-blk child expected, found {blk:?}"
    );
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(blk[0] as i32, libc::SIGKILL) }, 0);
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(30));
    let stderr = err_reader.join().unwrap_or_default();
    let _ = out_reader.join();
    let status = status
        .unwrap_or_else(|| panic!("bulkhead did not stop after its block process died:\n{stderr}"));
    assert_eq!(status.code(), Some(125), "{stderr}");
    let expected = format!("bulkhead: disk0 failed: bulkhead-blk (pid {}) was killed by signal 9 (SIGKILL); VM stopped", blk[0]);
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_pattern_only(&img.path, &img.original, &img.read(), 2048, 64);
}

/// How the durability of FLUSH is shown. Reading the image back (as the SIGKILL test does)
/// goes through the host's page cache, which holds the writes whether or not they reached
/// the disk: it cannot see a missing `fdatasync`. A dm-flakey or loop device whose cache is
/// dropped could, but needs device-mapper and a block device per run. Instead the whole VM
/// runs under `strace -f`, jailed as usual (seccomp, landlock and the namespaces stay on:
/// root's ptrace of the jailed processes needs none of their calls), and the log is read
/// in order: bulkhead-blk's writes of the guest's sectors, then `fdatasync`/`fsync` of the
/// same fd returning 0, then the vmm printing the guest's `blk0 flushed` line, which the
/// guest prints only once its FLUSH came back OK. strace's order is causal across
/// processes (a traced call's exit is logged before the tracee goes on to publish the
/// completion). What this does not cover: that the host's disk honours the `fdatasync`
/// (the kernel's and the hardware's part).
#[test]
fn flush_completes_only_after_fdatasync_of_the_written_image() {
    require_kvm!();
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        common::skip::skip_or_fail(
            common::skip::SkipKind::MissingTool,
            "strace (Debian package strace) is not installed",
        );
        return;
    }
    let img = Image::new("blk-fdatasync", 16 << 20);
    let log_path = std::env::temp_dir().join(format!(
        "bulkhead-blk-fdatasync-{}.strace",
        std::process::id()
    ));
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "--pidns-translation", "-e", "signal=none", "-o"])
        .arg(&log_path)
        .args([
            "-e",
            "trace=execve,clone,clone3,fork,vfork,write,pwrite64,pwritev,pwritev2,fdatasync,fsync,sync_file_range",
        ])
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("run")
        .arg("--disk")
        .arg(img.disk_arg(""))
        .args([
            "--cmdline",
            "bulkhead.test=blk-rw,blk-flush bulkhead.blk.rw=2048:64",
        ])
        .stdin(Stdio::null());
    let out = common::run(cmd, Duration::from_secs(180));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-flush");
    assert_pattern_only(&img.path, &img.original, &img.read(), 2048, 64);

    let log = common::strace::Log::parse(&log);
    let vmm = log.pids_of("bulkhead-vmm");
    let blk = log.pids_of("bulkhead-blk");
    assert!(
        !vmm.is_empty() && !blk.is_empty(),
        "no vmm or blk process in the strace log"
    );
    let flushed = log
        .console_lines(&vmm)
        .into_iter()
        .find(|(_, l)| l == "bulkhead-guest: blk0 flushed")
        .map(|(at, _)| at)
        .expect("the vmm's console writes show the flushed line");
    // bulkhead-blk's writes of the guest's sectors 2048..2112 (bytes 1 MiB + 32 KiB).
    let range = 2048 * 512..2112 * 512;
    let writes: Vec<&common::strace::Call> = log
        .calls
        .iter()
        .filter(|c| c.at < flushed && blk.contains(&c.pid))
        .filter(|c| c.name.starts_with("pwrite") && c.ret.parse::<u64>().is_ok())
        .filter(|c| c.last_number().is_some_and(|o| range.contains(&o)))
        .collect();
    let last_write = writes.last().unwrap_or_else(|| {
        panic!("no pwrite of sectors 2048..2112 by bulkhead-blk before the flushed line")
    });
    let fd = last_write.fd();
    let sync = log.calls.iter().find(|c| {
        c.at > last_write.at
            && c.at < flushed
            && blk.contains(&c.pid)
            && matches!(c.name.as_str(), "fdatasync" | "fsync")
            && c.fd() == fd
            && c.ret == "0"
    });
    assert!(
        sync.is_some(),
        "no successful fdatasync/fsync of fd {fd:?} by bulkhead-blk between its last write \
         of the guest's data (log line {}) and the vmm printing the flushed line (log line \
         {flushed})",
        last_write.at
    );
}
