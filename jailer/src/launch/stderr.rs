//! A started process's standard error goes through the launcher: each line is copied to
//! the launcher's own stderr as it comes, and a seccomp report line (the process's last
//! words before SIGSYS) is kept so the launcher can say which call was refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_seccomp::report::{self, Violation};

/// What a process said on stderr that the launcher wants to know.
#[derive(Clone, Default)]
pub struct Heard {
    violation: Arc<Mutex<Option<Violation>>>,
    ended: Arc<AtomicBool>,
}

impl Heard {
    /// The seccomp violation the process reported, if it did; waits up to `wait` for the
    /// relay to reach the end of what a dead process wrote.
    pub fn violation(&self, wait: Duration) -> Option<Violation> {
        let deadline = Instant::now() + wait;
        while !self.ended.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.violation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Longest line kept whole; a process (perhaps compromised) writing more without a newline
/// has it passed on in pieces, so the launcher's memory stays bounded.
const MAX_LINE: usize = 4096;

/// Copies `input` to `output` line by line (pieces of at most [`MAX_LINE`] bytes), keeping
/// the last seccomp report seen.
fn relay_lines(input: impl Read, mut output: impl Write, heard: &Heard) {
    let mut reader = BufReader::new(input);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let got = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match got {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(v) = report::parse(&String::from_utf8_lossy(&line)) {
            *heard.violation.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        }
        let _ = output.write_all(&line);
    }
}

/// A pipe for a process's stderr: give it the write end; the read end is relayed by a
/// thread named after the process until the process (and every copy of the write end) is
/// gone.
pub fn relay(name: &str) -> std::io::Result<(OwnedFd, Heard)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let heard = Heard::default();
    let keep = heard.clone();
    std::thread::Builder::new()
        .name(format!("stderr-{name}"))
        .spawn(move || {
            relay_lines(std::fs::File::from(read), std::io::stderr(), &keep);
            keep.ended.store(true, Ordering::Release);
        })?;
    Ok((write, heard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_line_is_kept_and_an_endless_line_is_cut() {
        let report = "seccomp: bulkhead-blk thread blk-q0 (role blk-worker) made syscall 101 (ptrace) outside its allowlist; killing the process\n";
        let heard = Heard::default();
        let mut out = Vec::new();
        relay_lines(report.as_bytes(), &mut out, &heard);
        assert_eq!(out, report.as_bytes(), "passed on unchanged");
        let v = heard.violation(Duration::ZERO).expect("report kept");
        assert_eq!((v.nr, v.thread.as_str()), (101, "blk-q0"));

        // 1 MiB without a newline goes through whole, in pieces, and is no report.
        let flood = vec![b'x'; 1 << 20];
        let heard = Heard::default();
        let mut out = Vec::new();
        relay_lines(&flood[..], &mut out, &heard);
        assert_eq!(out.len(), flood.len());
        assert!(heard.violation(Duration::ZERO).is_none());
    }
}
