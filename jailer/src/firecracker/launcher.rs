//! The VM once started: `bulkhead run` as a child process (the launcher, which spawns and
//! jails the vmm and device processes), and its API socket, over which pause, resume and
//! Ctrl+Alt+Del are forwarded (the protocol `bulkhead ctl` speaks).

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bulkhead_protocol::{ApiClientChannel, ApiReply, ApiRequest, VmState};

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
    /// Starts `bulkhead run` with `args` and waits until the VM answers on `ctl`.
    pub fn start(args: &[std::ffi::OsString], ctl: &Path) -> Result<Launcher, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("Start microvm error: finding bulkhead: {e}"))?;
        let bulkhead = exe.with_file_name("bulkhead");
        let mut command = Command::new(&bulkhead);
        command.arg("run").args(args);
        // SAFETY: between fork and exec only prctl, which is async-signal-safe, runs.
        unsafe {
            command.pre_exec(|| {
                // The launcher is told to stop (its own orderly stop path) if this process
                // dies, so no VM outlives the API that owns it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
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
            if Instant::now() > deadline {
                launcher.kill();
                return Err(format!(
                    "Start microvm error: the VM was not up within {START_TIMEOUT:?}."
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
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

    fn kill(&mut self) {
        if self.exited().is_none() {
            // SIGTERM: the launcher's own stop path removes the VM's processes.
            // SAFETY: kill has no memory-safety preconditions; the pid is our child, not
            // yet reaped (try_wait saw it running), so it names no other process.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}
