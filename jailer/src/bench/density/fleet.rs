//! A fleet of `bulkhead run` processes started at once, as an orchestrator starts VMs: one
//! thread per VM, all released together by a barrier, each starting its `bulkhead run`
//! and reading the guest's console (the launcher's stdout) line by line, reporting when
//! the first line came and when the guest said it is ready. The children themselves are
//! handed to the fleet, which alone signals and reaps them, so a pid it signals is never a
//! reused one. Dropping a fleet kills (SIGKILL) and reaps what still runs; if the bench
//! itself is killed, each launcher gets SIGTERM (its parent-death signal) and stops its VM.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bulkhead_vmm::kvm::run_loop::monotonic_ns;

/// What a VM's thread reports, with CLOCK_MONOTONIC times in nanoseconds.
enum Event {
    Spawned { vm: usize, child: Child, t0: u64 },
    SpawnFailed { vm: usize, error: String },
    FirstLine { vm: usize, t: u64 },
    Ready { vm: usize, t: u64 },
    Eof { vm: usize },
}

/// One VM of the fleet.
pub struct Vm {
    /// The `bulkhead run` process, until reaped.
    child: Option<Child>,
    /// Its pid (the launcher's).
    pub launcher: u32,
    /// When its thread started it.
    pub t0: u64,
    pub first_line: Option<u64>,
    pub ready: Option<u64>,
    /// Its console ended (the launcher's stdout closed).
    pub eof: bool,
    /// How it ended, once reaped.
    pub exit: Option<ExitStatus>,
    /// Where its stderr goes.
    pub stderr: PathBuf,
}

impl Vm {
    /// Milliseconds from its start to its first console line, and to ready.
    pub fn first_line_ms(&self) -> Option<f64> {
        Some(self.first_line?.saturating_sub(self.t0) as f64 / 1e6)
    }
    pub fn ready_ms(&self) -> Option<f64> {
        Some(self.ready?.saturating_sub(self.t0) as f64 / 1e6)
    }

    /// The last lines of its stderr, to say why it failed.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

/// VMs started together.
pub struct Fleet {
    pub vms: Vec<Vm>,
    rx: Receiver<Event>,
    /// When the barrier released the threads.
    pub started: u64,
}

/// What to start: the `bulkhead` binary, each VM's arguments, and its stderr file.
pub struct Spec {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub stderr: PathBuf,
}

impl Fleet {
    /// Starts every VM of `specs` at once and returns when each was spawned (or failed to
    /// be, which is an error after the others are stopped).
    pub fn start(specs: Vec<Spec>, ready_line: &'static str) -> Result<Fleet, String> {
        let n = specs.len();
        let (tx, rx) = mpsc::channel();
        let barrier = Arc::new(Barrier::new(n + 1));
        let mut vms: Vec<Vm> = Vec::with_capacity(n);
        for (vm, spec) in specs.into_iter().enumerate() {
            vms.push(Vm {
                child: None,
                launcher: 0,
                t0: 0,
                first_line: None,
                ready: None,
                eof: false,
                exit: None,
                stderr: spec.stderr.clone(),
            });
            let (tx, barrier) = (tx.clone(), barrier.clone());
            std::thread::Builder::new()
                .name(format!("density-vm{vm}"))
                .spawn(move || run_vm(vm, spec, ready_line, &barrier, &tx))
                .map_err(|e| format!("starting the thread of VM {vm}: {e}"))?;
        }
        let started = monotonic_ns();
        barrier.wait();
        let mut fleet = Fleet { vms, rx, started };
        let mut spawned = 0;
        let mut failed = None;
        while spawned < n {
            match fleet.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Event::SpawnFailed { vm, error }) => {
                    spawned += 1;
                    failed.get_or_insert(format!("VM {vm}: {error}"));
                }
                Ok(e) => {
                    if matches!(e, Event::Spawned { .. }) {
                        spawned += 1;
                    }
                    fleet.apply(e);
                }
                Err(_) => {
                    failed.get_or_insert("a VM's thread neither started it nor said why".into());
                    break;
                }
            }
        }
        match failed {
            Some(e) => Err(e), // dropping the fleet kills what started
            None => Ok(fleet),
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Spawned { vm, child, t0 } => {
                self.vms[vm].launcher = child.id();
                self.vms[vm].t0 = t0;
                self.vms[vm].child = Some(child);
            }
            Event::FirstLine { vm, t } => self.vms[vm].first_line = Some(t),
            Event::Ready { vm, t } => self.vms[vm].ready = Some(t),
            Event::Eof { vm } => self.vms[vm].eof = true,
            Event::SpawnFailed { .. } => {}
        }
    }

    /// Waits until every VM said it is ready; an error names the VMs that did not (ended,
    /// or still not ready at `timeout`) with the end of their stderr.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.vms.iter().all(|v| v.ready.is_some()) {
                return Ok(());
            }
            let died = self.vms.iter().any(|v| v.eof && v.ready.is_none());
            let left = deadline.saturating_duration_since(Instant::now());
            if died || left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left) {
                Ok(e) => self.apply(e),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let why: Vec<String> = self
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.ready.is_none())
            .map(|(i, v)| {
                let state = if v.eof {
                    "ended before it was ready"
                } else {
                    "not ready yet"
                };
                format!(
                    "VM {i} (launcher pid {}) {state}:\n{}",
                    v.launcher,
                    v.stderr_tail()
                )
            })
            .collect();
        Err(format!(
            "{} of {} VMs not ready within {} s:\n{}",
            why.len(),
            self.vms.len(),
            timeout.as_secs(),
            why.join("\n")
        ))
    }

    /// Stops every VM: SIGTERM to each launcher still running, then waits for all of
    /// them; those not ended at `timeout` are killed (SIGKILL) and reported. Returns the
    /// time from the first SIGTERM to the last exit, in nanoseconds.
    pub fn stop(&mut self, timeout: Duration) -> Result<u64, String> {
        let t0 = monotonic_ns();
        for vm in &mut self.vms {
            if let Some(child) = &mut vm.child {
                if matches!(child.try_wait(), Ok(None)) {
                    // Our own child that is not reaped yet (we reap it), so the pid is
                    // still that process's.
                    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut running = 0;
            for vm in &mut self.vms {
                reap(vm, false);
                running += usize::from(vm.child.is_some());
            }
            if running == 0 {
                return Ok(monotonic_ns() - t0);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stuck = Vec::new();
        for (i, vm) in self.vms.iter_mut().enumerate() {
            if vm.child.is_some() {
                stuck.push(format!("VM {i} (launcher pid {})", vm.launcher));
                reap(vm, true);
            }
        }
        Err(format!(
            "{} launcher(s) still ran {} s after SIGTERM and were killed: {}",
            stuck.len(),
            timeout.as_secs(),
            stuck.join(", ")
        ))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            reap(vm, true);
        }
    }
}

/// Reaps `vm`'s launcher if it ended; with `kill`, kills it first and waits.
fn reap(vm: &mut Vm, kill: bool) {
    let Some(child) = &mut vm.child else { return };
    if kill {
        let _ = child.kill();
        vm.exit = child.wait().ok();
        vm.child = None;
        return;
    }
    if let Ok(Some(status)) = child.try_wait() {
        vm.exit = Some(status);
        vm.child = None;
    }
}

/// In the child before exec: SIGTERM (a clean stop) when the thread that started it ends,
/// which it does only once the VM's console closed or the bench died; an error if the
/// bench is already gone.
fn stop_with_this_thread(bench: u32) -> std::io::Result<()> {
    // nix's wrappers allocate nothing; neither does the error (ESRCH: the bench ended
    // before the VM started), where `io::Error::other` would.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    if nix::unistd::getppid().as_raw() as u32 != bench {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// One VM's thread: starts it when the barrier opens, then reads its console.
fn run_vm(vm: usize, spec: Spec, ready_line: &str, barrier: &Barrier, tx: &Sender<Event>) {
    let stderr = std::fs::File::create(&spec.stderr);
    barrier.wait();
    let t0 = monotonic_ns();
    let bench = std::process::id();
    let spawned = stderr
        .map_err(|e| format!("creating {}: {e}", spec.stderr.display()))
        .and_then(|stderr| {
            let mut cmd = Command::new(&spec.exe);
            // SAFETY: between fork and exec the closure calls only prctl and getppid
            // (through nix), which are async-signal-safe, and allocates nothing.
            unsafe {
                cmd.pre_exec(move || stop_with_this_thread(bench));
            }
            cmd.args(&spec.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", spec.exe.display()))
        });
    let mut child = match spawned {
        Ok(c) => c,
        Err(error) => {
            let _ = tx.send(Event::SpawnFailed { vm, error });
            return;
        }
    };
    let stdout = child.stdout.take();
    if tx.send(Event::Spawned { vm, child, t0 }).is_err() {
        return;
    }
    let Some(stdout) = stdout else {
        let _ = tx.send(Event::Eof { vm });
        return;
    };
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut first = true;
    let mut ready = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let t = monotonic_ns();
        if first {
            first = false;
            let _ = tx.send(Event::FirstLine { vm, t });
        }
        if !ready && String::from_utf8_lossy(&line).contains(ready_line) {
            ready = true;
            let _ = tx.send(Event::Ready { vm, t });
        }
    }
    let _ = tx.send(Event::Eof { vm });
}
