//! Start-up shared by every backend process: reach the frontend (`--socket-path`, or an
//! inherited `--fd` that is listening or already connected), serve it with
//! `vhost-user-backend`'s daemon until it disconnects or SIGTERM/SIGINT arrives, and stop
//! the queue threads.
//!
//! A connected socket (what bulkhead's launcher passes), or `--once`: one frontend per
//! process; when it goes, the process exits (status 0), and reconnecting is the launcher's
//! job (start a fresh process). A socket the backend listens on, without `--once` (a
//! backend run standalone): frontends are served one after the other, each by a fresh
//! `VhostUserDaemon` over the same backend state, until SIGTERM/SIGINT ([`standalone`]),
//! as QEMU's and qemu-storage-daemon's backends do.

pub mod args;
mod confine;
pub mod connection;
pub mod control;
pub mod exit_event;
pub mod inflight;
pub mod main;
pub mod relay;
pub mod signals;
mod socket_keeper;
mod standalone;
pub mod thread_name;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use log::info;
use nix::sys::socket::{shutdown, Shutdown};
use vhost::vhost_user::Error as ProtocolError;
use vhost_user_backend::bitmap::BitmapReplace;
use vhost_user_backend::{Error as LibError, VhostUserBackend, VhostUserDaemon};
use vm_memory::mmap::NewBitmap;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use args::{BackendArgs, CommonArgs};
pub use confine::{set_jail, LauncherArgs};
pub use connection::{Connection, ConnectionError, Endpoint};
pub use relay::RelayError;
pub use signals::Termination;

/// How serving ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The frontend closed the connection.
    Disconnected,
    /// SIGTERM or SIGINT.
    Terminated,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket could not be opened.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The relay for a connected socket could not be set up.
    #[error("{endpoint}: {source}")]
    Relay {
        /// The endpoint.
        endpoint: Endpoint,
        /// What failed.
        #[source]
        source: RelayError,
    },
    /// `vhost-user-backend` could not create its handler or queue threads.
    #[error("starting the vhost-user daemon: {error}")]
    Start {
        /// The library's error.
        error: LibError,
    },
    /// The jail's last steps failed.
    #[error("confining the process: {0}")]
    Jail(#[source] bulkhead_seccomp::jail::JailError),
    /// The signal watcher could not start.
    #[error("watching for SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
    /// The backend's own threads could not start.
    #[error("starting the backend's threads: {0}")]
    Started(#[source] std::io::Error),
    /// The vhost-user thread's seccomp filter could not be installed.
    #[error("confining the vhost-user thread: {0}")]
    Seccomp(#[source] bulkhead_seccomp::install::Error),
    /// Accepting the frontend failed.
    #[error("accepting a frontend on {endpoint}: {error}")]
    Accept {
        /// The endpoint.
        endpoint: Endpoint,
        /// The library's error.
        error: LibError,
    },
    /// The frontend sent something the library refused (it drops the connection).
    #[error("serving the frontend on {endpoint}: {error}")]
    Serve {
        /// The endpoint.
        endpoint: Endpoint,
        /// The library's error.
        error: LibError,
    },
}

thread_local! {
    /// `--once`, for [`serve`] on this thread: per thread, as a test process runs several
    /// daemons side by side, each on a thread of its own.
    static ONCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `--once`: serve one frontend even on a socket the backend listens on. Set from the
/// command line by [`main::backend_main`], for [`serve`] called later on the same thread.
pub fn set_once(once: bool) {
    ONCE.set(once);
}

/// What a backend adds to [`serve`] besides its roles and state.
#[derive(Default)]
pub struct Extras {
    /// Inflight I/O tracking, offered and served by the relay of a connected socket.
    pub inflight: Option<Arc<inflight::InflightSlot>>,
    /// Run on the main thread (still under the process role) after each frontend when
    /// frontends are served one after the other: flush, forget the connection's state.
    pub between: Option<Box<dyn FnMut()>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("inflight", &self.inflight.is_some())
            .field("between", &self.between.is_some())
            .finish()
    }
}

/// Serves one frontend on `endpoint` with `backend` until it disconnects or `termination`
/// fires. Create `termination` before anything starts threads (so they inherit its signal
/// mask). Once the socket is open, this function finishes the process's jail (single-
/// threaded), starts the signal watcher, runs `started` (which may start threads of the
/// caller's), installs `process`'s filter (every role of this backend together) so that
/// the queue threads are confined from birth (they narrow to their own role at their first
/// event), then starts them. With `extras.inflight` (made before, as it makes a memfd), the
/// relay for a connected socket offers and serves inflight I/O tracking (see
/// [`inflight`]); a socket the daemon listens on is served by the library alone, without
/// it. On a listening socket without `--once`, frontends are served one after the other
/// ([`standalone`]), `extras.between` running after each.
pub fn serve<T>(
    name: &str,
    roles: Roles,
    backend: T,
    endpoint: &Endpoint,
    termination: &Termination,
    started: impl FnOnce() -> std::io::Result<()>,
    extras: Extras,
) -> Result<Ended, DaemonError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    let relay_error = |source| DaemonError::Relay {
        endpoint: endpoint.clone(),
        source,
    };
    // A connected socket goes through a relay, whose private listener is made now: no
    // filter allows creating sockets.
    let connection = match Connection::open(endpoint)? {
        Connection::Connected(stream) => {
            Opened::Relayed(relay::prepare().map_err(relay_error)?, stream)
        }
        Connection::Listening(listener) => {
            let wake = wake_copy(&listener);
            Opened::Listening(listener, wake)
        }
    };
    if let Endpoint::Path(path) = endpoint {
        // Still single-threaded: the keeper is forked now, before landlock.
        if let Err(e) = socket_keeper::keep(path) {
            log::warn!("{endpoint}: it will not be removed at exit (starting its keeper: {e})");
        }
    }
    confine::confine(termination)?;
    started().map_err(DaemonError::Started)?;
    bulkhead_seccomp::install(roles.process, bulkhead_seccomp::mode::process_mode())
        .map_err(DaemonError::Seccomp)?;
    control::set_termination(termination.clone());
    control::listen().map_err(DaemonError::Started)?;
    let connection = match connection {
        Opened::Listening(listener, wake) if !ONCE.get() => {
            return standalone::serve_many(
                standalone::Served {
                    name,
                    role: roles.main,
                    backend,
                    endpoint,
                    termination,
                },
                listener,
                wake,
                extras.between,
            )
        }
        once => once,
    };
    // Only the relay of a connected socket offers inflight tracking.
    let inflight = match connection {
        Opened::Relayed(..) => extras.inflight,
        Opened::Listening(..) => None,
    };
    serve_one(
        name,
        roles,
        backend,
        endpoint,
        termination,
        connection,
        inflight,
    )
}

/// Serves the one frontend of `connection` (the main thread narrows to `roles.main`).
fn serve_one<T>(
    name: &str,
    roles: Roles,
    backend: T,
    endpoint: &Endpoint,
    termination: &Termination,
    connection: Opened,
    inflight: Option<Arc<inflight::InflightSlot>>,
) -> Result<Ended, DaemonError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    let relay_error = |source| DaemonError::Relay {
        endpoint: endpoint.clone(),
        source,
    };
    let mut daemon = VhostUserDaemon::new(
        name.to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|error| DaemonError::Start { error })?;

    let relay = match connection {
        Opened::Listening(mut listener, wake) => {
            info!("waiting for a frontend on {endpoint}");
            if let Some(wake) = wake {
                termination.on_signal(move || {
                    let _ = shutdown(wake.as_raw_fd(), Shutdown::Both);
                });
            }
            confine_main(roles.main)?;
            let accepted = daemon.start(&mut listener);
            if termination.signalled() {
                stop_queues(&daemon);
                return Ok(Ended::Terminated);
            }
            accepted.map_err(|error| DaemonError::Accept {
                endpoint: endpoint.clone(),
                error,
            })?;
            None
        }
        Opened::Relayed(mut pending, stream) => {
            confine_main(roles.main)?;
            // Our end is already queued on the private listener: this accept can't block.
            daemon
                .start(&mut pending.listener)
                .map_err(|error| DaemonError::Accept {
                    endpoint: endpoint.clone(),
                    error,
                })?;
            Some(pending.start(stream, inflight).map_err(relay_error)?)
        }
    };
    info!("serving a frontend on {endpoint}");
    if let Some(handle) = daemon.shutdown_handle() {
        termination.on_signal(move || handle.shutdown());
    }
    let result = daemon.wait();
    stop_queues(&daemon);
    if let Some(relay) = relay {
        relay.stop();
    }
    // Joins the queue threads: the requests in hand are finished when serve returns.
    drop(daemon);
    if termination.signalled() {
        return Ok(Ended::Terminated);
    }
    ended(result, endpoint)
}

/// How serving a frontend ended, from the daemon's `wait`.
fn ended(result: Result<(), LibError>, endpoint: &Endpoint) -> Result<Ended, DaemonError> {
    match result {
        Ok(())
        | Err(LibError::HandleRequest(
            ProtocolError::Disconnected
            | ProtocolError::PartialMessage
            | ProtocolError::SocketBroken(_),
        )) => {
            info!("the frontend on {endpoint} disconnected");
            Ok(Ended::Disconnected)
        }
        Err(error) => Err(DaemonError::Serve {
            endpoint: endpoint.clone(),
            error,
        }),
    }
}

/// A backend's seccomp roles: `process` for every thread from the start (each narrows
/// later), `main` for the main thread once it serves the frontend.
#[derive(Clone, Copy, Debug)]
pub struct Roles {
    /// Every thread, from before the queue threads start.
    pub process: bulkhead_seccomp::Role,
    /// The main thread (vhost-user messages), once it serves.
    pub main: bulkhead_seccomp::Role,
}

/// The frontend's socket, ready to serve.
enum Opened {
    /// Listening for the frontend, with a copy of the listener to shut down on SIGTERM.
    Listening(vhost::vhost_user::Listener, Option<OwnedFd>),
    /// Connected to it, through a relay being set up.
    Relayed(relay::Pending, std::os::unix::net::UnixStream),
}

/// Narrows the calling (main) thread to `role` (vhost-user, or the console's), in the
/// process's mode: after the queue threads exist (they narrow to their own role at their
/// first event) and before the frontend is served; the message-handling and relay threads
/// started from here inherit it.
fn confine_main(role: bulkhead_seccomp::Role) -> Result<(), DaemonError> {
    bulkhead_seccomp::install(role, bulkhead_seccomp::mode::process_mode())
        .map_err(DaemonError::Seccomp)?;
    control::ready(role.name());
    thread_name::self_test(thread_name::SelfTest::Main);
    Ok(())
}

/// A copy of `listener`'s descriptor, to shut down on SIGTERM (which wakes a blocked
/// accept with an error).
fn wake_copy(listener: &vhost::vhost_user::Listener) -> Option<OwnedFd> {
    // SAFETY: the listener owns its descriptor until it is dropped, which the borrow of
    // `listener` rules out for the call (vhost's Listener implements no AsFd).
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    nix::unistd::dup(fd).ok()
}

/// Tells every queue thread to exit.
fn stop_queues<T>(daemon: &VhostUserDaemon<T>)
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
}
