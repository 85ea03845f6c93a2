//! A `bulkhead run` that a test watches while it runs: console lines as they come, a
//! bounded wait for a readiness line, then an orderly stop (SIGTERM) with a bounded wait.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running `bulkhead` whose stdout is read line by line.
pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // A test that panicked before terminate(): the VM must not outlive it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn start(cmd: &mut Command) -> Spawned {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bulkhead");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        // Reads to the end, so the guest never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Spawned {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console lines seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits (at most `timeout`) for a console line that `want` accepts and returns it;
    /// panics with what was seen if none came.
    pub fn wait_for(&mut self, timeout: Duration, mut want: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(line.trim_end()) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "no awaited console line within {timeout:?} ({e}):\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        stderr.unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Waits (at most `timeout`) for console line `line`.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        self.wait_for(timeout, |l| l == line);
    }

    /// Waits at most `timeout` for the process to exit by itself (then kills it); the exit
    /// code (`None` if it had to be killed) and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = super::wait_until(&mut self.child, Instant::now() + timeout);
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status.and_then(|s| s.code()), stderr)
    }

    /// Sends SIGTERM (the orderly stop), waits at most `timeout` (then kills) and returns
    /// the exit code (`None` if it was killed), the whole console and stderr.
    pub fn terminate(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        // SAFETY: kill(2) of the child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = super::wait_until(&mut self.child, Instant::now() + timeout);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status.and_then(|s| s.code()), self.seen.join("\n"), stderr)
    }
}
