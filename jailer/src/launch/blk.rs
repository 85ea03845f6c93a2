//! Starting `bulkhead-blk`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use super::{
    backend_program, open_named, DeviceProcess, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD,
};
use crate::safe_open::Access;

/// Starts `bulkhead-blk` on the image at `path`: the launcher opens the image (so the
/// backend needs no access to the filesystem) and hands it over as fd 4, with its end of a
/// socket pair as fd 3. Returns the process and the vmm's end of the socket.
pub fn start_blk(
    name: &str,
    path: &Path,
    readonly: bool,
    serial: Option<&str>,
    queues: u16,
    direct: bool,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let access = if readonly {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let disk = open_named(name, "disk image", path, access)?;
    let size = image_size(name, path, &disk)?;
    let program = backend_program(name, "bulkhead-blk")?;
    let mut cmd = Command::new(&program);
    cmd.args([
        "--fd",
        &SOCKET_FD.to_string(),
        "--disk-fd",
        &FIRST_EXTRA_FD.to_string(),
    ]);
    cmd.arg("--queues").arg(queues.to_string());
    if readonly {
        cmd.arg("--read-only");
    }
    if direct {
        cmd.arg("--direct");
    }
    if let Some(s) = serial {
        cmd.args(["--serial", s]);
    }
    // The image may not grow through the backend (RLIMIT_FSIZE; no effect on a block device).
    let needs = Needs {
        workers: u64::from(queues),
        max_file_size: Some(size),
        reports: true,
        ..Needs::default()
    };
    let recipe = super::Recipe::new(name, &cmd, vec![OwnedFd::from(disk)], false, needs);
    super::recipe::launch(recipe)
}

/// An image opened for a running disk (`PATCH /drives/{id}`, `bulkhead ctl disk`).
pub struct SwapImage {
    /// The open image.
    pub file: File,
    /// Its size in bytes (checked as at start-up).
    pub size: u64,
    /// Whether it is a block device.
    pub block_device: bool,
}

/// Opens the image at `path` for disk `name` by the same rules (and `--open-as` identity)
/// as at start-up, and checks it as [`start_blk`] does.
pub fn open_swap_image(name: &str, path: &Path, readonly: bool) -> Result<SwapImage, LaunchError> {
    use std::os::unix::fs::FileTypeExt;
    let access = if readonly {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let file = open_named(name, "disk image", path, access)?;
    let file_type = file.metadata().map_err(open_error(name, path))?.file_type();
    if !file_type.is_file() && !file_type.is_block_device() {
        return Err(open_error(name, path)(std::io::Error::other(
            "neither a regular file nor a block device",
        )));
    }
    let size = image_size(name, path, &file)?;
    Ok(SwapImage {
        file,
        size,
        block_device: file_type.is_block_device(),
    })
}

/// The error for disk image `path` of device `name`.
fn open_error<'a>(name: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> LaunchError + 'a {
    move |source| LaunchError::OpenDisk {
        what: "disk image",
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    }
}

/// The image's size; refuses, naming the file, an image the block backend would refuse by
/// its fd alone.
fn image_size(name: &str, path: &Path, mut disk: &File) -> Result<u64, LaunchError> {
    use std::io::Seek;
    // Seeking to the end gives the size of block devices too.
    let size = disk
        .seek(std::io::SeekFrom::End(0))
        .and_then(|size| disk.rewind().map(|()| size))
        .map_err(open_error(name, path))?;
    let why = if size == 0 {
        "empty"
    } else if size % 512 != 0 {
        "not a multiple of 512 (the image must be a whole number of 512-byte sectors)"
    } else {
        return Ok(size);
    };
    Err(LaunchError::BadImage {
        name: name.to_owned(),
        path: path.to_owned(),
        size,
        why,
    })
}
