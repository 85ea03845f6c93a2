//! A `bulkhead run` that a test watches while it runs: console lines as they come, a
//! bounded wait for a readiness line, then an orderly stop (SIGTERM) with a bounded wait.
//! However the test ends (a panic included), the process is stopped the same way, SIGKILL
//! only after [`STOP_GRACE`], so `bulkhead run` and `bulkhead-firecracker` remove what they
//! made (namespaces, cgroups, their directories in /tmp) instead of leaving it behind.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a process gets after SIGTERM before SIGKILL: more than the launcher's own stop
/// bounds and `bulkhead-firecracker`'s 8 s for its launcher.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

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
        stop(&mut self.child, STOP_GRACE);
    }
}

/// Sends SIGTERM to `child` unless it has exited, waits at most `grace`, then SIGKILL; its
/// exit status (`None` if it had to be killed).
fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // try_wait first: a child already reaped keeps its status here, and its pid may name
    // another process by now, so it is never signalled.
    match child.try_wait() {
        Ok(Some(status)) => return Some(status),
        Ok(None) => {}
        Err(_) => return None,
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
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
                    stop(&mut self.child, STOP_GRACE);
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

    /// The next console line within `timeout`, if one came (kept in [`Spawned::seen`]).
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Whether the process still runs (once this says no, it is reaped: its pid is no
    /// longer to be signalled).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most `timeout`) for console line `line`.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        self.wait_for(timeout, |l| l == line);
    }

    /// Waits at most `timeout` for the process to exit by itself (then stops it, see
    /// [`STOP_GRACE`]); the exit code (`None` if it had to be stopped) and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        while status.is_none() && Instant::now() < deadline {
            status = self.child.try_wait().ok().flatten();
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if status.is_none() {
            stop(&mut self.child, STOP_GRACE);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status.and_then(|s| s.code()), stderr)
    }

    /// Sends SIGTERM (the orderly stop), waits at most `timeout` (then kills) and returns
    /// the exit code (`None` if it was killed or ended by a signal), the whole console and
    /// stderr.
    pub fn terminate(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let status = stop(&mut self.child, timeout);
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
