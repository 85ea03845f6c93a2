//! A started process's standard error goes through the launcher: each line is copied to
//! the launcher's own stderr as it comes, and a seccomp report line (the process's last
//! words before SIGSYS) is kept so the launcher can say which call was refused.

use std::io::{BufRead, BufReader, Write};
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
            let reader = BufReader::new(std::fs::File::from(read));
            for line in reader.split(b'\n') {
                let Ok(mut line) = line else { break };
                if let Some(v) = report::parse(&String::from_utf8_lossy(&line)) {
                    *keep.violation.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                }
                line.push(b'\n');
                let _ = std::io::stderr().lock().write_all(&line);
            }
            keep.ended.store(true, Ordering::Release);
        })?;
    Ok((write, heard))
}
