//! `bulkhead-net`, the vhost-user-net backend: a virtio-net device bridged to one TAP
//! interface (one descriptor per queue pair), served to one frontend.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | command line → [`Config`] |
//! | `tap.rs` | the TAP: opening, header size, offloads, "has it gone" |
//! | `virtio.rs` | virtio-net constants and configuration space bytes |
//! | `queue_link.rs` | a pair's TAP queue attached only while the driver has it enabled |
//! | `busy_poll.rs` | watching a dry available ring a few µs before waiting for a kick |
//! | `device.rs` | TX chains → TAP and TAP → RX buffers, zero-copy; hostile input counted |
//! | `backend.rs` | the `vhost-user-backend` glue: features, config space, threads |
//!
//! `device.rs` knows nothing of vhost-user and is tested with `virtio_queue::mock` queues
//! and a socketpair standing in for the TAP.

mod backend;
mod busy_poll;
mod config;
mod device;
mod queue_link;
mod tap;
mod virtio;

use std::ffi::OsString;
use std::sync::Arc;

pub use backend::{features, protocol_features, NetBackend, SharedMemory};
pub use config::{format_mac, parse_mac, Args, Config, ConfigError, TapSource, CAPABILITIES};
pub use device::{
    ChainError, CounterSnapshot, Counters, RxEnd, RxRound, RxWorker, TapGone, TxRound, TxWorker,
};
pub use queue_link::{wanted as queue_wanted, Change, LinkError, QueueLink, QueueSwitch};
pub use tap::{set_queue_attached, Tap, TapError};
pub use virtio::{ConfigSpace, CONFIG_SPACE_SIZE, MAX_FRAME, MAX_QUEUE_SIZE, NET_HDR_SIZE};

use crate::daemon::{self, DaemonError, Ended, Termination};

/// Guest memory as this backend maps it (no dirty log: no live migration).
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// Everything that can stop `bulkhead-net` from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TAP could not be set up.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// `--tap-fd` not usable.
    #[error("--tap-fd {fd}: {source}")]
    TapFd {
        /// The descriptor.
        fd: i32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TAP went away while serving.
    #[error("{0}")]
    TapGone(String),
    /// Detaching the TAP queues of pairs the driver hasn't enabled.
    #[error("TAP {tap}: {source}")]
    Link {
        /// The interface.
        tap: String,
        /// What failed.
        #[source]
        source: LinkError,
    },
    /// Creating the backend's event descriptors.
    #[error("creating the backend's eventfds: {0}")]
    Backend(#[source] std::io::Error),
    /// No randomness for a MAC address.
    #[error("getting random bytes for a MAC address: {0}")]
    Random(#[source] std::io::Error),
    /// Setting up signal handling.
    #[error("setting up SIGTERM handling: {0}")]
    Signals(#[source] std::io::Error),
    /// The socket or the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs `bulkhead-net` with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    main_with_args(std::env::args_os())
}

/// Runs `bulkhead-net` with the given arguments (the first is the program name); returns
/// the exit status: 0 when the frontend disconnected or a termination signal came, 1 on
/// any error (one line on stderr, naming the TAP when it went away).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    daemon::main::backend_main(
        daemon::main::Backend {
            program: "bulkhead-net",
            capabilities: CAPABILITIES,
        },
        args,
        |args: Args| Config::try_from(args).map_err(Error::from).and_then(run),
    )
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    crate::sys::getrandom(&mut mac, false)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Opens the TAP and serves it until the frontend disconnects, SIGTERM/SIGINT, or the TAP
/// goes away (an error).
pub fn run(config: Config) -> Result<Ended, Error> {
    // First, before any thread exists, so every thread inherits the blocked signals.
    let termination = Termination::block().map_err(Error::Signals)?;
    run_with(config, &termination)
}

/// As [`run`], with termination under the caller's control.
pub fn run_with(config: Config, termination: &Termination) -> Result<Ended, Error> {
    let tap = match &config.tap {
        TapSource::Name(name) => Tap::open(name, config.queue_pairs)?,
        TapSource::Fds(fds) => {
            let owned = fds
                .iter()
                .map(|&fd| {
                    daemon::connection::take_fd(fd).map_err(|source| Error::TapFd { fd, source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Tap::from_fds(owned, format!("fd {}", fds[0]))?
        }
    };
    let mac = match config.mac {
        Some(mac) => mac,
        None => {
            let mac = random_mac().map_err(Error::Random)?;
            log::warn!(
                "no --mac given: the guest's MAC address is {}",
                format_mac(&mac)
            );
            mac
        }
    };
    log::info!(
        "serving TAP {} ({} queue pair{}, MAC {}, MTU {}, TAP offloads {:#x})",
        tap.name(),
        config.queue_pairs,
        if config.queue_pairs == 1 { "" } else { "s" },
        format_mac(&mac),
        config.mtu,
        tap.offloads(),
    );
    let tap_name = tap.name().to_string();
    let backend = Arc::new(
        NetBackend::new(tap, mac, config.mtu, termination.clone()).map_err(Error::Backend)?,
    );
    backend.set_poll(config.poll);
    backend.detach_idle_queues().map_err(|source| Error::Link {
        tap: tap_name.clone(),
        source,
    })?;
    let served = daemon::serve(
        "bulkhead-net",
        daemon::Roles {
            process: bulkhead_seccomp::Role::NetProcess,
            main: bulkhead_seccomp::Role::VhostUser,
        },
        Arc::clone(&backend),
        &config.endpoint,
        termination,
        || Ok(()),
        daemon::Extras {
            inflight: None,
            between: Some(Box::new({
                let backend = Arc::clone(&backend);
                move || {
                    if let Err(e) = backend.forget_frontend() {
                        log::warn!("TAP {tap_name}: between frontends: {e}");
                    }
                }
            })),
        },
    );
    backend.stop();
    log::debug!("counters at exit: {:?}", backend.counters().snapshot());
    if let Some(message) = backend.fatal() {
        return Err(Error::TapGone(message));
    }
    Ok(served?)
}
