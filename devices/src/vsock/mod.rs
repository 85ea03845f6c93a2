//! `bulkhead-vsock`, the vhost-user virtio-vsock backend (device id 19; rx, tx and event
//! queues; `guest_cid` in the config space) with Firecracker's hybrid vsock on the host:
//! a host program connects to a Unix socket and sends `CONNECT <port>\n` to reach the
//! guest's port; a guest connecting to CID 2 port P reaches a host listener at `<uds>_P`.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | command line → [`Config`] |
//! | `virtio.rs` | constants, configuration space |
//! | `packet.rs` | the 44-byte packet header |
//! | `credit.rs` | credit-based flow control of one stream |
//! | `connection.rs` | one stream: state, credit, bytes held for the host |
//! | `hybrid.rs` | the `CONNECT <port>` / `OK <port>` handshake |
//! | `broker.rs` | guest-initiated streams: the launcher connects `<uds>_P` for us |
//! | `muxer.rs` | the connection table: packets ↔ host sockets |
//! | `queues.rs` | descriptor chains ↔ packets, trusting nothing in a chain |
//! | `io.rs` | the thread that runs the muxer |
//! | `backend.rs` | the `vhost-user-backend` glue |
//!
//! **How the confined process reaches host sockets.** It creates none and names no path:
//! the launcher binds `uds` (under its rule for paths a user names) and passes the
//! listening socket; for a guest-initiated stream the process sends the port to the
//! launcher's broker, which connects `<uds>_<port>` under the same rule and passes the
//! connected socket back (`broker.rs`). So seccomp can refuse `socket`/`connect` and
//! landlock can deny every path: a compromised process can reach `<uds>_<port>` listeners
//! only, which a guest could reach anyway, instead of any socket a bind-mounted directory
//! would hold.

mod backend;
pub mod broker;
mod config;
mod connection;
pub mod credit;
pub mod hybrid;
mod io;
pub mod muxer;
pub mod packet;
pub(crate) mod queues;
mod virtio;

use std::ffi::OsString;
use std::sync::Arc;

pub use backend::VsockBackend;
pub use config::{Args, Config, ConfigError, CAPABILITIES};
pub use virtio::{ConfigSpace, CONFIG_SPACE_SIZE, HOST_CID, VIRTIO_ID_VSOCK};

use crate::daemon::{self, DaemonError, Ended, Termination};

/// Guest memory as this backend maps it.
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// Everything that can stop `bulkhead-vsock` from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Setting up signal handling.
    #[error("setting up SIGTERM handling: {0}")]
    Signals(#[source] std::io::Error),
    /// Creating the muxer, its sockets' settings, or the I/O thread.
    #[error("starting the vsock I/O thread: {0}")]
    Io(#[source] std::io::Error),
    /// The socket or the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs `bulkhead-vsock` with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    main_with_args(std::env::args_os())
}

/// Runs `bulkhead-vsock` with the given arguments (the first is the program name).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    daemon::main::backend_main(
        daemon::main::Backend {
            program: "bulkhead-vsock",
            capabilities: CAPABILITIES,
        },
        args,
        |args: Args| Config::try_from(args).map_err(Error::from).and_then(run),
    )
}

/// Serves the device until the frontend disconnects or SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<Ended, Error> {
    let termination = Termination::block().map_err(Error::Signals)?;
    run_with(config, &termination)
}

/// As [`run`], with termination under the caller's control.
pub fn run_with(config: Config, termination: &Termination) -> Result<Ended, Error> {
    let (listener, broker) = config.open().map_err(Error::Io)?;
    let muxer = muxer::Muxer::new(config.cid, listener, broker).map_err(Error::Io)?;
    let backend = Arc::new(VsockBackend::new(config.cid).map_err(Error::Io)?);
    let mut io = None;
    let mut muxer = Some(muxer);
    let result = daemon::serve(
        "bulkhead-vsock",
        daemon::Roles {
            process: bulkhead_seccomp::Role::VsockProcess,
            main: bulkhead_seccomp::Role::VhostUser,
        },
        Arc::clone(&backend),
        &config.endpoint,
        termination,
        || {
            if let Some(m) = muxer.take() {
                io = Some(io::IoThread::spawn(Arc::clone(&backend), m)?);
            }
            Ok(())
        },
        daemon::Extras {
            inflight: None,
            between: Some(Box::new({
                let backend = Arc::clone(&backend);
                move || backend.forget_frontend()
            })),
        },
    );
    if let Some(io) = io {
        let c = io.stop();
        log::info!("vsock: {c:?}");
    }
    Ok(result?)
}
