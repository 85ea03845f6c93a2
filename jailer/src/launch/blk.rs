//! Starting `bulkhead-blk`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use bulkhead_devices::image::ImageFormat;

use super::chain::{open_error, open_image, ImageError, ImageOptions};
use super::recipe::Planned;
use super::{backend_program, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD};

/// Starts `bulkhead-blk` on the image at `path`: the launcher opens the image and every
/// backing file it names, checks and locks them (see [`super::chain`]), and hands them
/// over as fds 4, 5, ... (so the backend needs no access to the filesystem), with its end
/// of a socket pair as fd 3. Returns the planned process (started by
/// [`super::recipe::Planned::launch`]) and the vmm's end of the socket.
pub fn start_blk(
    name: &str,
    path: &Path,
    image: ImageOptions,
    serial: Option<&str>,
    queues: u16,
    direct: bool,
) -> Result<(Planned, UnixStream), LaunchError> {
    let opened = open_image(name, path, image)?;
    let program = backend_program(name, "bulkhead-blk")?;
    let mut cmd = Command::new(&program);
    cmd.args([
        "--fd",
        &SOCKET_FD.to_string(),
        "--disk-fd",
        &FIRST_EXTRA_FD.to_string(),
    ]);
    // The chain's formats: `--format` always (the backend's default, raw, is never relied
    // on), then `--backing-fd FD:FORMAT` for the backing files below the top, in order
    // (none for a raw top).
    cmd.args(["--format", opened.format().as_str()]);
    for (link, fd) in opened.chain.links.iter().zip(FIRST_EXTRA_FD..).skip(1) {
        cmd.arg("--backing-fd")
            .arg(format!("{fd}:{}", link.format.as_str()));
    }
    cmd.arg("--queues").arg(queues.to_string());
    if image.readonly {
        cmd.arg("--read-only");
    }
    if direct {
        cmd.arg("--direct");
    }
    if let Some(s) = serial {
        cmd.args(["--serial", s]);
    }
    // The image may grow through the backend only as far as its format allows
    // (RLIMIT_FSIZE; no effect on a block device).
    let needs = Needs {
        workers: u64::from(queues),
        max_file_size: Some(opened.max_file_size),
        reports: true,
        ..Needs::default()
    };
    let fds = opened
        .chain
        .links
        .into_iter()
        .map(|link| OwnedFd::from(link.file))
        .collect();
    let recipe = super::Recipe::new(name, &cmd, fds, false, needs);
    super::recipe::plan(recipe)
}

/// An image opened for a running disk (`PATCH /drives/{id}`, `bulkhead ctl disk`).
pub struct SwapImage {
    /// The open image (locked as at start unless the disk has `lock=off`).
    pub file: File,
    /// Its size in bytes (checked as at start-up).
    pub size: u64,
    /// Whether it is a block device.
    pub block_device: bool,
}

/// Opens the image at `path` for disk `name` by the same rules (and `--open-as` identity)
/// as at start-up, checks and locks it as [`start_blk`] does. The swap protocol carries
/// one raw image: a qcow2 (the disk's `format=`, else a probe) is refused.
pub fn open_swap_image(
    name: &str,
    path: &Path,
    image: ImageOptions,
) -> Result<SwapImage, LaunchError> {
    if image.format == Some(ImageFormat::Qcow2) {
        return Err(swap_refused(name, path));
    }
    let opened = open_image(name, path, image).map_err(|e| match e {
        LaunchError::Image { error, .. }
            if matches!(
                *error,
                ImageError::Format(bulkhead_devices::image::FormatError::LooksLikeQcow2 { .. })
            ) =>
        {
            swap_refused(name, path)
        }
        e => e,
    })?;
    let file_type = opened
        .top()
        .metadata()
        .map_err(open_error(name, path))?
        .file_type();
    if !file_type.is_file() && !opened.block_device {
        return Err(open_error(name, path)(std::io::Error::other(
            "neither a regular file nor a block device",
        )));
    }
    let (size, block_device) = (opened.size, opened.block_device);
    let Some(top) = opened.chain.links.into_iter().next() else {
        return Err(swap_refused(name, path));
    };
    Ok(SwapImage {
        file: top.file,
        size,
        block_device,
    })
}

/// A swap that would need a qcow2 served.
fn swap_refused(name: &str, path: &Path) -> LaunchError {
    LaunchError::OpenDisk {
        what: "disk image",
        name: name.to_owned(),
        path: path.to_owned(),
        source: std::io::Error::other(
            "a drive swap serves raw images only (a qcow2 image cannot be swapped in, nor a \
             qcow2 disk's image swapped, yet; a raw file starting with a qcow2 header needs \
             the disk started with format=raw)",
        ),
    }
}

/// The image's size; refuses, naming the file, an image the block backend would refuse by
/// its fd alone.
pub(super) fn image_size(name: &str, path: &Path, mut disk: &File) -> Result<u64, LaunchError> {
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
