//! A backend run standalone (`--socket-path`, or a listening `--fd`, without `--once`):
//! frontends are served one after the other until SIGTERM/SIGINT, as QEMU's and
//! qemu-storage-daemon's backends do, so a frontend that reconnects (QEMU after an error, a
//! restarted VM) finds the backend still there.
//!
//! `vhost-user-backend` 0.24 cannot serve twice with one daemon (SET_OWNER refuses "already
//! claimed", nothing resets the features or the vrings), so each frontend gets a fresh
//! `VhostUserDaemon` over the same backend state (its disk, TAP or stream).
//!
//! Seccomp: a daemon's queue threads are born when it is made and narrow later to their
//! own role (blk-worker needs pwritev, fdatasync, fallocate), so they must be born under
//! the process role. The main thread therefore stays on the process role and only makes
//! daemons, joins and runs the backend's `between` (flush, forget the connection); each
//! frontend is accepted and served by a short-lived `vu-conn` thread narrowed to the
//! vhost-user role (the thread that parses the frontend's messages, and the library's
//! message thread it starts, run that role, as the main thread does with `--once`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use log::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapReplace;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::mmap::NewBitmap;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::{confine_main, ended, stop_queues, DaemonError, Ended, Endpoint, Termination};

/// What is served, and how.
pub(super) struct Served<'a, T> {
    /// The daemon's name (its message thread's).
    pub name: &'a str,
    /// The role of the thread that serves each frontend (vhost-user).
    pub role: bulkhead_seccomp::Role,
    /// The backend state every frontend shares.
    pub backend: T,
    /// The socket, for messages.
    pub endpoint: &'a Endpoint,
    /// SIGTERM/SIGINT (and the launcher's Shutdown).
    pub termination: &'a Termination,
}

/// Serves frontends on `listener` one after the other until `served.termination` fires;
/// `between` runs after each. The listener (and with it a socket file it created) goes
/// when this returns.
pub(super) fn serve_many<T>(
    served: Served<'_, T>,
    mut listener: Listener,
    wake: Option<OwnedFd>,
    mut between: Option<Box<dyn FnMut()>>,
) -> Result<Ended, DaemonError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    let Served {
        name,
        role,
        backend,
        endpoint,
        termination,
    } = served;
    let wake = wake.map(Arc::new);
    let mut frontends = 0u64;
    loop {
        // Made here, on the main thread under the process role: its queue threads are born
        // under it and can narrow to theirs.
        let mut daemon = VhostUserDaemon::new(
            name.to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|error| DaemonError::Start { error })?;
        let first = frontends == 0;
        let served = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("vu-conn".into())
                .spawn_scoped(scope, || {
                    serve_next(
                        &mut daemon,
                        &mut listener,
                        wake.clone(),
                        role,
                        first,
                        endpoint,
                        termination,
                    )
                })
                .map_err(DaemonError::Started)?
                .join()
                .unwrap_or_else(|_| {
                    Err(DaemonError::Started(std::io::Error::other(
                        "the vu-conn thread panicked",
                    )))
                })
        });
        stop_queues(&daemon);
        // Joins the queue threads: no request of this frontend is still being served.
        drop(daemon);
        // Forget the frontend's memory (the next one sends its own table).
        if let Err(e) = backend.update_memory(GuestMemoryAtomic::new(GuestMemoryMmap::new())) {
            warn!("{endpoint}: forgetting the last frontend's memory: {e}");
        }
        if let Some(between) = between.as_mut() {
            between();
        }
        if termination.signalled() {
            return Ok(Ended::Terminated);
        }
        match served {
            Ok(Some(Ok(_))) => {
                frontends += 1;
                info!("{endpoint}: waiting for the next frontend ({frontends} served)");
            }
            // A frontend that misbehaved is dropped; the next one is served.
            Ok(Some(Err(e))) => {
                frontends += 1;
                warn!("{e}; waiting for the next frontend");
            }
            Ok(None) => return Ok(Ended::Terminated),
            Err(e) => return Err(e),
        }
    }
}

/// On the `vu-conn` thread: narrows to `role`, accepts the next frontend and serves it
/// until it goes. `Ok(None)`: termination came while waiting; `Ok(Some(..))`: how serving
/// the frontend ended; `Err`: the socket or the thread failed (the process ends).
fn serve_next<T>(
    daemon: &mut VhostUserDaemon<T>,
    listener: &mut Listener,
    wake: Option<Arc<OwnedFd>>,
    role: bulkhead_seccomp::Role,
    first: bool,
    endpoint: &Endpoint,
    termination: &Termination,
) -> Result<Option<Result<Ended, DaemonError>>, DaemonError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    if first {
        confine_main(role)?;
        info!("waiting for a frontend on {endpoint}");
    } else {
        bulkhead_seccomp::install(role, bulkhead_seccomp::mode::process_mode())
            .map_err(DaemonError::Seccomp)?;
    }
    let shut_listener = wake.clone();
    termination.on_signal(move || shut(shut_listener.as_deref()));
    let accepted = daemon.start(listener);
    if termination.signalled() {
        return Ok(None);
    }
    accepted.map_err(|error| DaemonError::Accept {
        endpoint: endpoint.clone(),
        error,
    })?;
    info!("serving a frontend on {endpoint}");
    if let Some(handle) = daemon.shutdown_handle() {
        termination.on_signal(move || {
            handle.shutdown();
            shut(wake.as_deref());
        });
    }
    let result = daemon.wait();
    Ok(Some(ended(result, endpoint)))
}

/// Shuts the listener's copy down (a blocked accept returns an error).
fn shut(wake: Option<&OwnedFd>) {
    if let Some(wake) = wake {
        let _ = nix::sys::socket::shutdown(wake.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}
