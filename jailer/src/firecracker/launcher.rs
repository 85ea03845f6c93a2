//! The VM once started: `bulkhead run` as a child process (the launcher, which spawns and
//! jails the vmm and device processes), and its API socket, over which pause, resume and
//! Ctrl+Alt+Del are forwarded (the protocol `bulkhead ctl` speaks).

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bulkhead_protocol::{ApiClientChannel, ApiReply, ApiRequest, VmState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::stop::{Stop, LAUNCHER_GRACE};

/// How long the launcher gets to build the VM (the vmm's `Ready`, seen as its API socket
/// answering a status request).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a forwarded request gets.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The running launcher.
pub struct Launcher {
    child: Child,
    ctl: PathBuf,
}

impl Launcher {
    /// Starts `bulkhead run` with `args` and waits until the VM answers on `ctl`; a stop
    /// signal caught meanwhile (left for the caller to handle) stops it and fails the start.
    pub fn start(args: &[std::ffi::OsString], ctl: &Path, stop: &Stop) -> Result<Launcher, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("Start microvm error: finding bulkhead: {e}"))?;
        let bulkhead = exe.with_file_name("bulkhead");
        let mut command = Command::new(&bulkhead);
        command.arg("run").args(args);
        // SAFETY: between fork and exec only prctl (nix's wrapper, allocation-free), which
        // is async-signal-safe, runs.
        unsafe {
            command.pre_exec(|| {
                // The launcher is told to stop (its own orderly stop path) if this process
                // dies, so no VM outlives the API that owns it.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
                Ok(())
            })
        };
        let child = command
            .spawn()
            .map_err(|e| format!("Start microvm error: starting {}: {e}", bulkhead.display()))?;
        let mut launcher = Launcher {
            child,
            ctl: ctl.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(code) = launcher.exited() {
                return Err(format!(
                    "Start microvm error: bulkhead run exited with status {code} (its error is on stderr)."
                ));
            }
            if launcher.ask(ApiRequest::Status).is_ok() {
                return Ok(launcher);
            }
            if stop.caught() {
                let _ = launcher.stop(LAUNCHER_GRACE);
                return Err("Start microvm error: bulkhead-firecracker is stopping.".into());
            }
            if Instant::now() > deadline {
                let _ = launcher.stop(LAUNCHER_GRACE);
                return Err(format!(
                    "Start microvm error: the VM was not up within {START_TIMEOUT:?}."
                ));
            }
            stop.wait(Duration::from_millis(20));
        }
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (a signal as 128 + its number).
    pub fn exited(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok()??;
        Some(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        )
    }

    /// Sends `request` to the launcher; the state of the vCPUs after it.
    pub fn ask(&self, request: ApiRequest) -> Result<VmState, String> {
        let stream = UnixStream::connect(&self.ctl).map_err(|e| e.to_string())?;
        let mut channel = ApiClientChannel::new(stream, "the VM's launcher");
        channel
            .set_timeouts(Some(REQUEST_TIMEOUT), Some(REQUEST_TIMEOUT))
            .and_then(|()| channel.handshake())
            .and_then(|()| channel.send(&request, &[]))
            .map_err(|e| e.to_string())?;
        match channel.recv().map_err(|e| e.to_string())?.0 {
            ApiReply::Status(s) => Ok(s.state),
            ApiReply::Ok => Ok(VmState::Running),
            ApiReply::Error(e) => Err(crate::untrusted::sanitize(&e)),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Stops the launcher: SIGTERM (its orderly stop removes the VM's processes), then
    /// SIGKILL if it has not exited within `grace`; its exit status, or what went wrong.
    pub fn stop(&mut self, grace: Duration) -> Result<i32, String> {
        if let Some(code) = self.exited() {
            return Ok(code);
        }
        let pid = self.child.id();
        // The child is not reaped yet (exited() saw it running), so the pid is still its.
        let target = i32::try_from(pid).map(Pid::from_raw);
        if let Ok(target) = target {
            // ESRCH cannot happen for an unreaped child; any other error shows as the
            // grace running out and SIGKILL.
            let _ = kill(target, Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(code) = self.exited() {
                return Ok(code);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child
            .kill()
            .and_then(|()| self.child.wait())
            .map_err(|e| format!("killing bulkhead run (pid {pid}): {e}"))?;
        Err(format!(
            "bulkhead run (pid {pid}) did not stop within {grace:?} of SIGTERM: killed"
        ))
    }
}
