//! `bulkhead-console`, the vhost-user virtio-console backend: port 0 of a console (device
//! id 3; receiveq and transmitq, no MULTIPORT) bridged to one stream: the process's
//! stdin/stdout, a Unix socket's client, a pty, a file (output only) or an inherited
//! descriptor.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | command line → [`Config`] |
//! | `virtio.rs` | virtio-console constants, configuration space bytes |
//! | `device.rs` | transmitq → stream, stream → receiveq, trusting nothing in a chain |
//! | `stream.rs` | opening the stream; the shared output half ([`Port`]); raw terminals |
//! | `io.rs` | the thread that waits for input (and socket clients) |
//! | `backend.rs` | the `vhost-user-backend` glue: features, config space, events |
//!
//! `device.rs` knows nothing of vhost-user and is tested with `virtio_queue::mock` queues.

mod backend;
mod config;
mod device;
mod io;
mod stream;
mod virtio;

use std::ffi::OsString;
use std::sync::Arc;

pub use backend::{features, protocol_features, ConsoleBackend, SharedMemory};
pub use config::{Args, Config, ConfigError, StreamSpec, CAPABILITIES};
pub use device::{Counters, Output, Receiver, RxEnd, Transmitter};
pub use stream::{Port, StreamError};
pub use virtio::{ConfigSpace, CONFIG_SPACE_SIZE, MAX_QUEUE_SIZE, VIRTIO_ID_CONSOLE};

use crate::daemon::{self, DaemonError, Ended, Termination};

/// Guest memory as this backend maps it (no dirty-page bitmap: no live migration).
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// Everything that can stop `bulkhead-console` from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stream.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Setting up signal handling.
    #[error("setting up SIGTERM handling: {0}")]
    Signals(#[source] std::io::Error),
    /// Creating the backend's eventfd or the I/O thread.
    #[error("starting the console I/O thread: {0}")]
    Io(#[source] std::io::Error),
    /// The socket or the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs `bulkhead-console` with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    main_with_args(std::env::args_os())
}

/// Runs `bulkhead-console` with the given arguments (the first is the program name);
/// returns the exit status: 0 when the frontend disconnected or a termination signal came
/// (or for `--help`, `--version`, `--print-capabilities`), 1 on any error (one line on
/// stderr).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    daemon::main::backend_main(
        daemon::main::Backend {
            program: "bulkhead-console",
            capabilities: CAPABILITIES,
        },
        args,
        |args: Args| Config::try_from(args).map_err(Error::from).and_then(run),
    )
}

/// Opens the stream and serves the console until the frontend disconnects or
/// SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<Ended, Error> {
    // First, before any thread exists, so every thread inherits the blocked signals.
    let termination = Termination::block().map_err(Error::Signals)?;
    bulkhead_protocol::capped::ignore_sigxfsz();
    run_with(config, &termination)
}

/// As [`run`], with termination under the caller's control.
pub fn run_with(config: Config, termination: &Termination) -> Result<Ended, Error> {
    let opened = stream::open(&config.stream)?;
    if let stream::Source::Pty { name, .. } = &opened.source {
        // The launcher (or the user) reads this line to find the terminal to open.
        eprintln!("bulkhead-console: pty {name}");
    }
    // Restores a raw terminal however this function ends.
    let _raw = opened.raw;
    if let Some((cols, rows)) = opened.size {
        log::info!("console size {cols}x{rows}");
    }
    let port = Arc::new(match opened.output {
        // A file (not a terminal or a socket) is capped: the guest must not fill the disk.
        Some(f) if f.metadata().is_ok_and(|m| m.file_type().is_file()) => {
            Port::capped(f, config.max_size).map_err(Error::Io)?
        }
        out => Port::new(out),
    });
    let mut backend = ConsoleBackend::new(port, opened.size).map_err(Error::Io)?;
    if let Some(terminal) = opened.terminal {
        backend = backend.follow_terminal(terminal);
    }
    let backend = Arc::new(backend);
    // The I/O thread starts once the process is confined (serve calls back).
    let mut io = None;
    let mut source = Some(opened.source);
    let result = daemon::serve(
        "bulkhead-console",
        daemon::Roles {
            process: bulkhead_seccomp::Role::ConsoleProcess,
            main: bulkhead_seccomp::Role::ConsoleMain,
        },
        Arc::clone(&backend),
        &config.endpoint,
        termination,
        || {
            if let Some(source) = source.take() {
                io = Some(io::IoThread::spawn(Arc::clone(&backend), source)?);
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
        io.stop();
    }
    let c = &backend.counters;
    let p = backend.port();
    log::info!(
        "bad transmit chains {}, bad receive chains {}, output bytes dropped {}, write errors {}",
        c.bad_tx_chains.load(std::sync::atomic::Ordering::Relaxed),
        c.bad_rx_chains.load(std::sync::atomic::Ordering::Relaxed),
        p.dropped.load(std::sync::atomic::Ordering::Relaxed),
        p.write_errors.load(std::sync::atomic::Ordering::Relaxed),
    );
    Ok(result?)
}
