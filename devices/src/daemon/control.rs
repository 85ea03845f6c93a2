//! A backend's reports to the launcher that started it (`--control-fd`, bulkhead-protocol):
//! the handshake at start-up, `Ready` once it is confined and serving (the launcher starts
//! the vmm only then), `Error` when it cannot start, `Exited` at the end. The other way, a
//! backend that registered a [`set_handler`] gets requests (bulkhead-blk: `SwapDisk`, with
//! the new image's fd), answered on one thread started once the process filter is on (so
//! it needs only `recvmsg`/`sendmsg`/`close` beyond what the handler does); the launcher
//! stops a backend with SIGTERM. Without `--control-fd` (run by hand) these do nothing.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use std::os::fd::OwnedFd;

use bulkhead_protocol::{ProcessChannel, ToLauncher, ToProcess};

/// What answers the launcher's requests: the request and the fds it carried → the reply.
pub type Handler = Box<dyn FnMut(ToProcess, Vec<OwnedFd>) -> ToLauncher + Send>;

static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);
/// The receiving side: a second channel on a copy of the socket (the first one sends).
static RECEIVER: Mutex<Option<ProcessChannel>> = Mutex::new(None);

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
    // Requests may come at any time: no read timeout on the receiving side (the socket
    // options are shared by both copies; only the receiver reads).
    let receiver = channel
        .set_timeouts(None, Some(HANDSHAKE_TIMEOUT))
        .map_err(std::io::Error::other)
        .and_then(|()| channel_stream_clone(&channel))
        .map_err(|e| format!("--control-fd {fd}: {e}"))?;
    *RECEIVER.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(ProcessChannel::new(receiver, "launcher"));
    let _ = CHANNEL.set(Mutex::new(channel));
    Ok(())
}

/// A copy of the channel's socket (made before confinement: `dup` is not allowed after).
fn channel_stream_clone(channel: &ProcessChannel) -> std::io::Result<UnixStream> {
    use std::os::fd::AsFd;
    let fd = channel.as_fd().try_clone_to_owned()?;
    Ok(UnixStream::from(fd))
}

/// Registers what answers the launcher's requests (before [`crate::daemon::serve`]).
pub fn set_handler(handler: Handler) {
    *HANDLER.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
}

/// Starts the thread that answers requests, if there is a launcher and a handler. Called
/// by `serve` once the process filter is installed, so the thread inherits it.
pub fn listen() -> std::io::Result<()> {
    let handler = HANDLER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let receiver = RECEIVER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (Some(mut handler), Some(mut receiver)) = (handler, receiver) else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || loop {
            let (request, fds) = match receiver.recv() {
                Ok(got) => got,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    log::debug!("control channel: {e}; no more requests");
                    return;
                }
            };
            let name = bulkhead_protocol::Message::name(&request);
            let reply = handler(request, fds);
            log::debug!("control request {name} answered");
            send(reply);
        })
        .map(drop)
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
