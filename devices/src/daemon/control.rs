//! A backend's reports to the launcher that started it (`--control-fd`, bulkhead-protocol):
//! the handshake at start-up, `Ready` once it is confined and serving (the launcher starts
//! the vmm only then), `Error` when it cannot start, `Exited` at the end. The other way, a
//! backend that registered a [`set_handler`] gets requests (bulkhead-blk: `SwapDisk`, with
//! the new image's fd), answered on one thread started once the process filter is on (so
//! it needs only `recvmsg`/`sendmsg`/`close` beyond what the handler does). Every backend
//! honours `Shutdown` there: termination as on SIGTERM (the queue threads finish the
//! requests in hand), then the backend's [`on_shutdown`] (bulkhead-blk: flush the image)
//! on this thread, which has the process role, then `Exited{code: 0}` and exit 0. Without
//! `--control-fd` (run by hand) these do nothing.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::Termination;

use std::os::fd::OwnedFd;

use bulkhead_protocol::{ProcessChannel, ToLauncher, ToProcess};

/// What answers the launcher's requests: the request and the fds it carried → the reply.
pub type Handler = Box<dyn FnMut(ToProcess, Vec<OwnedFd>) -> ToLauncher + Send>;

static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);
/// The receiving side: a second channel on a copy of the socket (the first one sends).
static RECEIVER: Mutex<Option<ProcessChannel>> = Mutex::new(None);

/// What `Shutdown` stops, set by `serve`.
static TERMINATION: OnceLock<Termination> = OnceLock::new();
/// What runs on the control thread once the queues stopped after a `Shutdown`.
static ON_SHUTDOWN: Mutex<Option<Box<dyn FnOnce() + Send>>> = Mutex::new(None);
/// A `Shutdown` in progress: where it stands.
static SHUTDOWN: Mutex<Stage> = Mutex::new(Stage::None);
static SHUTDOWN_MOVED: Condvar = Condvar::new();
/// How long either side of a `Shutdown` waits for the other.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Where a `Shutdown` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// None was asked for.
    None,
    /// Asked for: termination triggered, serving is ending.
    Asked,
    /// Serving ended, the queue threads are joined.
    Stopped,
    /// [`on_shutdown`]'s work is done.
    Done,
}

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

/// Registers what runs, on the control thread, after a `Shutdown` stopped the queues and
/// before the process exits (bulkhead-blk: flush the image).
pub fn on_shutdown(work: Box<dyn FnOnce() + Send>) {
    *ON_SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(work);
}

/// Tells this module what a `Shutdown` stops (called by `serve`).
pub(super) fn set_termination(termination: Termination) {
    let _ = TERMINATION.set(termination);
}

/// Starts the thread that answers requests, if there is a launcher. Called by `serve` once
/// the process filter is installed, so the thread inherits it.
pub fn listen() -> std::io::Result<()> {
    let mut handler = HANDLER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let receiver = RECEIVER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut receiver) = receiver else {
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
            if matches!(request, ToProcess::Shutdown) {
                shut_down();
                return;
            }
            let reply = match handler.as_mut() {
                Some(handler) => handler(request, fds),
                None => ToLauncher::Error {
                    message: format!("this backend does not take {name}"),
                },
            };
            log::debug!("control request {name} answered");
            send(reply);
        })
        .map(drop)
}

/// `Shutdown`, on the control thread: ends serving as SIGTERM does, waits until the queue
/// threads are joined ([`finish`]), runs [`on_shutdown`]'s work, and lets the main thread
/// exit (it sends `Exited`).
fn shut_down() {
    log::info!("the launcher asked this process to shut down");
    *SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner()) = Stage::Asked;
    match TERMINATION.get() {
        Some(termination) => termination.trigger(),
        None => log::warn!("Shutdown before serving began: ending when it begins"),
    }
    if !wait_for(Stage::Stopped) {
        log::warn!("Shutdown: serving did not end within {SHUTDOWN_WAIT:?}");
    }
    if let Some(work) = ON_SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner()).take() {
        work();
    }
    *SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner()) = Stage::Done;
    SHUTDOWN_MOVED.notify_all();
}

/// Waits (bounded) until a `Shutdown` reached `stage` or beyond; whether it did.
fn wait_for(stage: Stage) -> bool {
    let reached = |s: &mut Stage| *s as u8 >= stage as u8;
    let guard = SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = SHUTDOWN_MOVED
        .wait_timeout_while(guard, SHUTDOWN_WAIT, |s| !reached(s))
        .unwrap_or_else(|e| e.into_inner());
    *guard as u8 >= stage as u8
}

/// Called by the main thread once serving ended (the queue threads joined), before the
/// process exits: if a `Shutdown` is in progress, lets the control thread do its work
/// and waits (bounded) for it.
pub fn finish() {
    {
        let mut stage = SHUTDOWN.lock().unwrap_or_else(|e| e.into_inner());
        if *stage != Stage::Asked {
            return;
        }
        *stage = Stage::Stopped;
    }
    SHUTDOWN_MOVED.notify_all();
    if !wait_for(Stage::Done) {
        log::warn!("Shutdown: the backend's last work did not end within {SHUTDOWN_WAIT:?}");
    }
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
