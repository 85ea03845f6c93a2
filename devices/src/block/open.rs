//! The image the command line names, opened before the process confines itself.
//!
//! `--blk-file PATH`: the file is opened here (read-write unless `--read-only`), its format
//! settled (`--format`, else a probe that refuses a qcow2 header), a qcow2's backing chain
//! opened with [`open_chain`] (each backing file read-only; run as root, a backing file the
//! overlay's owner could not read is refused, as the launcher does), and every file locked
//! QEMU's way unless `--lock off`. `--disk-fd N [--backing-fd M:FORMAT]...`: the launcher
//! opened and locked the files; they are taken over as they are.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::config::{Config, Image};
use super::disk::{Disk, DiskError, DiskOptions};
use super::image::DiskImage;
use super::Error;
use crate::daemon;
use crate::image::chain::{check_backing_owners, open_chain, ChainLink};
use crate::image::format::{self, ImageFormat};
use crate::image::lock::{lock, LockRole};
use crate::image::qcow2::{Layer, Qcow2Image, Qcow2Options};

/// Opens (and, by path, locks) the image `config` names.
pub fn open_image(config: &Config, options: DiskOptions) -> Result<DiskImage, Error> {
    let qcow2_options = Qcow2Options {
        read_only: options.read_only,
        logical_block_size: options.logical_block_size,
    };
    match &config.image {
        Image::Path(path) => {
            let name = path.display().to_string();
            let file = open_top(path, options.read_only).map_err(|source| DiskError::Open {
                name: name.clone(),
                source,
            })?;
            let format = format::resolve(config.format, &file, &name)?;
            let chain = match format {
                // A raw file names no backing file: the chain is the file.
                ImageFormat::Raw => vec![ChainLink {
                    path: path.clone(),
                    file,
                    format,
                }],
                ImageFormat::Qcow2 => {
                    let chain = open_chain(path, file, format, &mut open_backing)?;
                    if nix::unistd::geteuid().is_root() {
                        // Root could open what the overlay's owner could not read.
                        check_backing_owners(&chain)?;
                    }
                    chain.links
                }
            };
            if config.lock {
                for (i, link) in chain.iter().enumerate() {
                    let role = match (i, options.read_only) {
                        (0, false) => LockRole::Writer {
                            resize: format == ImageFormat::Qcow2,
                        },
                        (0, true) => LockRole::Reader,
                        _ => LockRole::Backing,
                    };
                    lock(&link.file, &link.path.display().to_string(), role)?;
                }
            }
            match format {
                ImageFormat::Raw => {
                    let link = chain
                        .into_iter()
                        .next()
                        .ok_or(Error::Config(super::ConfigError::NoImage))?;
                    Ok(Disk::from_fd(link.file.into(), name, options)?.into())
                }
                ImageFormat::Qcow2 => Ok(Qcow2Image::open(
                    chain.into_iter().map(Layer::from).collect(),
                    qcow2_options,
                )?
                .into()),
            }
        }
        Image::Fd(fd) => {
            let owned = daemon::connection::take_fd(*fd)
                .map_err(|source| Error::DiskFd { fd: *fd, source })?;
            let name = fd_name(*fd);
            match config.format.unwrap_or(ImageFormat::Raw) {
                ImageFormat::Raw => Ok(Disk::from_fd(owned, name, options)?.into()),
                ImageFormat::Qcow2 => {
                    let file = File::from(owned);
                    if !options.read_only && opened_read_only(&file, &name)? {
                        return Err(DiskError::FdReadOnly { name }.into());
                    }
                    let mut layers = vec![Layer {
                        name,
                        file,
                        format: ImageFormat::Qcow2,
                    }];
                    for &(fd, format) in &config.backing {
                        let owned = daemon::connection::take_fd(fd)
                            .map_err(|source| Error::DiskFd { fd, source })?;
                        layers.push(Layer {
                            name: fd_name(fd),
                            file: File::from(owned),
                            format,
                        });
                    }
                    Ok(Qcow2Image::open(layers, qcow2_options)?.into())
                }
            }
        }
    }
}

/// What messages call the image file at inherited descriptor `fd`: `fd N (PATH)`, the
/// path being where the launcher opened it (`/proc/self/fd/N`, read before the process
/// confines itself), so that a refusal or an I/O error names the file; `fd N` alone when
/// /proc can't say.
fn fd_name(fd: i32) -> String {
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(path) if path.is_absolute() => format!("fd {fd} ({})", path.display()),
        _ => format!("fd {fd}"),
    }
}

/// The top image, read-write unless `read_only`; `O_NOATIME` where we own the file.
fn open_top(path: &Path, read_only: bool) -> io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_CLOEXEC | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_CLOEXEC),
        other => other,
    }
}

/// A backing file: read-only, always.
fn open_backing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

fn opened_read_only(file: &File, name: &str) -> Result<bool, DiskError> {
    let fl =
        nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| DiskError::Inspect {
            name: name.to_owned(),
            source: e.into(),
        })?;
    Ok(fl & libc::O_ACCMODE == libc::O_RDONLY)
}
