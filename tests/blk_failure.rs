//! A block process that dies mid-run: what was flushed is in the image, the vmm neither
//! crashes nor hangs, the user is told which device failed and how, and the VM stops.

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
    let mut child = common::bulkhead()
        .arg("run")
        .arg("--disk")
        .arg(img.disk_arg(""))
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
