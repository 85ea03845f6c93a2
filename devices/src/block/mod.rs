//! `bulkhead-blk`, the vhost-user-blk backend: one raw disk image (a regular file or a
//! block device) served to one frontend.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | command line → [`Config`] |
//! | `disk.rs` | a raw image: size checks, positional vectored I/O, flush, discard, zeroing |
//! | `image.rs` | the image served: a raw [`Disk`] or a qcow2 chain (`image::qcow2`) |
//! | `open.rs` | the command line's image opened: by path (chain, locks) or by descriptors |
//! | `virtio.rs` | virtio-blk constants, header, configuration space bytes |
//! | `request.rs` | a descriptor chain → a request, trusting nothing in it |
//! | `iovec.rs` | guest buffers as iovecs (zero-copy I/O), the `O_DIRECT` bounce buffer |
//! | `execute.rs` | a request → disk I/O and a status |
//! | `device.rs` | a virtqueue drained, statuses and used entries written, interrupts decided |
//! | `tracking.rs` | a queue's inflight region kept up to date; what a restart makes of it |
//! | `resubmit.rs` | a descriptor chain walked from a head index (requests resubmitted) |
//! | `backend.rs` | the `vhost-user-backend` glue: features, config space, queue threads |
//!
//! Everything up to `device.rs` knows nothing of vhost-user and is tested with
//! `virtio_queue::mock` queues.

mod backend;
mod config;
mod device;
mod disk;
mod execute;
mod image;
mod iovec;
mod open;
mod request;
pub mod resubmit;
pub mod tracking;
mod virtio;

use std::ffi::OsString;
use std::sync::Arc;

pub use backend::{features, protocol_features, BlockBackend, SharedMemory};
pub use config::{Args, Config, ConfigError, Image, CAPABILITIES};
pub use device::{QueueWorker, Round};
pub use disk::{Disk, DiskError, DiskOptions};
pub use image::DiskImage;
pub use virtio::{ConfigSpace, CONFIG_SPACE_SIZE, MAX_QUEUE_SIZE, SEG_MAX};

use crate::daemon::inflight::InflightSlot;
use crate::daemon::{self, DaemonError, Ended, Termination};

/// Guest memory as this backend maps it (no dirty-page bitmap: we don't offer
/// `LOG_SHMFD`, i.e. live migration, so there is no dirty log to keep).
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// Everything that can stop `bulkhead-blk` from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The image.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// `--disk-fd` not usable.
    #[error("--disk-fd {fd}: {source}")]
    DiskFd {
        /// The descriptor.
        fd: i32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The format can't be settled.
    #[error(transparent)]
    Format(#[from] crate::image::FormatError),
    /// The backing chain can't be opened.
    #[error(transparent)]
    Chain(#[from] crate::image::chain::ChainError),
    /// An image is locked by another process.
    #[error(transparent)]
    Lock(#[from] crate::image::lock::LockError),
    /// The qcow2 chain can't be served.
    #[error(transparent)]
    Qcow2(#[from] crate::image::qcow2::Qcow2Error),
    /// Setting up signal handling.
    #[error("setting up SIGTERM handling: {0}")]
    Signals(#[source] std::io::Error),
    /// The socket or the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs `bulkhead-blk` with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    main_with_args(std::env::args_os())
}

/// Runs `bulkhead-blk` with the given arguments (the first is the program name); returns
/// the exit status: 0 when the frontend disconnected or a termination signal came, 1 on
/// any error (reported on stderr in one line), 0 for `--help`/`--version`.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    daemon::main::backend_main(
        daemon::main::Backend {
            program: "bulkhead-blk",
            capabilities: CAPABILITIES,
        },
        args,
        |args: Args| Config::try_from(args).map_err(Error::from).and_then(run),
    )
}

/// Opens the image and serves it until the frontend disconnects or SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<Ended, Error> {
    // First, before any thread exists, so every thread inherits the blocked signals.
    let termination = Termination::block().map_err(Error::Signals)?;
    run_with(config, &termination)
}

/// As [`run`], with termination under the caller's control.
pub fn run_with(config: Config, termination: &Termination) -> Result<Ended, Error> {
    let options = DiskOptions {
        read_only: config.read_only,
        direct: config.direct,
        logical_block_size: config.logical_block_size,
    };
    let disk = open::open_image(&config, options)?;
    log::info!(
        "serving {} ({}, {} bytes{}{})",
        disk.name(),
        disk.format(),
        disk.size(),
        if disk.read_only() { ", read-only" } else { "" },
        if disk.direct_alignment().is_some() {
            ", O_DIRECT"
        } else {
            ""
        },
    );
    // The memfd for GET_INFLIGHT_FD, made now: no seccomp role may create one. Without it
    // the disk still works, without inflight tracking (the feature is not offered).
    let inflight = match InflightSlot::new(config.queues, MAX_QUEUE_SIZE) {
        Ok(slot) => Some(slot),
        Err(e) => {
            log::warn!("inflight I/O tracking off: creating its memfd: {e}");
            None
        }
    };
    let mut backend = BlockBackend::new(
        Arc::new(disk),
        config.serial,
        config.queues,
        config.logical_block_size,
        config.poll,
    );
    if let Some(slot) = &inflight {
        backend.track_inflight(Arc::clone(slot));
    }
    if config.stall_after.is_some() {
        backend.stall_after(config.stall_after);
    }
    let backend = Arc::new(backend);
    daemon::control::set_handler(swap_handler(
        Arc::clone(&backend),
        config.logical_block_size,
        config.direct,
    ));
    daemon::control::on_shutdown(Box::new({
        let backend = Arc::clone(&backend);
        move || flush_logged(&backend)
    }));
    let between: Box<dyn FnMut()> = Box::new({
        let backend = Arc::clone(&backend);
        move || flush_logged(&backend)
    });
    Ok(daemon::serve(
        "bulkhead-blk",
        daemon::Roles {
            process: bulkhead_seccomp::Role::BlkProcess,
            main: bulkhead_seccomp::Role::VhostUser,
        },
        backend,
        &config.endpoint,
        termination,
        || Ok(()),
        daemon::Extras {
            inflight,
            between: Some(between),
        },
    )?)
}

/// Flushes the image, logging a failure (there is no frontend left to tell).
fn flush_logged(backend: &BlockBackend) {
    match backend.flush() {
        Ok(()) => log::info!("image flushed"),
        Err(e) => log::warn!("flushing the image: {e}"),
    }
}

/// Answers the launcher's `SwapDisk`: the image whose fd came with it is served from now
/// on (see [`BlockBackend::swap_disk`]); anything else is refused, and the disk goes on.
fn swap_handler(
    backend: Arc<BlockBackend>,
    logical_block_size: u32,
    direct: bool,
) -> daemon::control::Handler {
    use bulkhead_protocol::{ToLauncher, ToProcess};
    Box::new(move |request, fds| {
        let ToProcess::SwapDisk {
            name,
            size,
            read_only,
            block_device,
        } = request
        else {
            return ToLauncher::Error {
                message: format!(
                    "bulkhead-blk does not take {}",
                    bulkhead_protocol::Message::name(&request)
                ),
            };
        };
        let Some(fd) = fds.into_iter().next() else {
            return ToLauncher::Error {
                message: format!("SwapDisk {name}: no fd came with it"),
            };
        };
        let options = DiskOptions {
            read_only,
            direct,
            logical_block_size,
        };
        match Disk::adopt(fd, name, size, block_device, options)
            .map_err(|e| e.to_string())
            .and_then(|disk| backend.swap_disk(disk))
        {
            Ok(capacity_sectors) => ToLauncher::DiskSwapped { capacity_sectors },
            Err(message) => ToLauncher::Error { message },
        }
    })
}
