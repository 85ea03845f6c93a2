//! A backend's reports to the launcher that started it (`--control-fd`, bulkhead-protocol):
//! the handshake at start-up, `Ready` once it is confined and serving (the launcher starts
//! the vmm only then), `Error` when it cannot start, `Exited` at the end. Nothing comes the
//! other way: the launcher stops a backend with SIGTERM. Without `--control-fd` (run by
//! hand) these do nothing.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bulkhead_protocol::{ProcessChannel, ToLauncher};

/// How long the launcher gets to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static CHANNEL: OnceLock<Mutex<ProcessChannel>> = OnceLock::new();

/// Adopts inherited socket `fd` and shakes hands with the launcher.
pub fn connect(fd: RawFd) -> Result<(), String> {
    let owned = super::connection::take_fd(fd).map_err(|e| format!("--control-fd {fd}: {e}"))?;
    let mut channel = ProcessChannel::new(UnixStream::from(owned), "launcher");
    channel
        .set_timeouts(Some(HANDSHAKE_TIMEOUT), Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| channel.handshake())
        .map_err(|e| format!("--control-fd {fd}: {e}"))?;
    let _ = CHANNEL.set(Mutex::new(channel));
    Ok(())
}

/// Sends `msg` if there is a launcher; a failure is only logged.
fn send(msg: ToLauncher) {
    if let Some(channel) = CHANNEL.get() {
        let mut channel = channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = channel.send(&msg, &[]) {
            log::warn!("telling the launcher {msg:?}: {e}");
        }
    }
}

/// Confined and serving, as `role` (the main thread's seccomp role).
pub fn ready(role: &str) {
    send(ToLauncher::Ready {
        role: role.to_owned(),
        pid: std::process::id(),
    });
}

/// The process cannot go on: `message`.
pub fn error(message: String) {
    send(ToLauncher::Error { message });
}

/// The process ends with `code`.
pub fn exited(code: i32) {
    send(ToLauncher::Exited { code });
}
