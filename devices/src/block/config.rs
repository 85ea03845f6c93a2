//! `bulkhead-blk`'s command line, and the checked [`Config`] it turns into.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::virtio::{ID_BYTES, MAX_QUEUES};
use crate::daemon::Endpoint;
use crate::daemon::{BackendArgs, CommonArgs};
use crate::image::ImageFormat;

/// The JSON `--print-capabilities` prints: QEMU's `docs/interop/vhost-user.json` schema for
/// a block backend (`VHostUserBackendCapabilitiesBlock`: `--read-only` and `--blk-file`
/// supported).
pub const CAPABILITIES: &str = r#"{"type": "block", "features": ["read-only", "blk-file"]}"#;

/// A vhost-user-blk backend serving one disk image to a frontend (a VMM).
///
/// The image is a raw regular file or block device, or a qcow2 file (--format qcow2) with
/// its backing chain. Its (virtual) size must be a non-zero multiple of 512 bytes (of 4096
/// with --logical-block-size 4096); anything else is refused at start-up.
/// On --socket-path or a listening --fd it serves frontends one after the other until
/// SIGTERM/SIGINT (status 0; the socket it created is removed); with --once, or on a
/// connected --fd, one frontend, exiting with status 0 when it disconnects.
/// Any error is reported on one line and the exit status is 1. Logging is
/// controlled by RUST_LOG (default: warn).
#[derive(Debug, Parser)]
#[command(name = "bulkhead-blk", version, about, long_about)]
pub struct Args {
    /// The flags every backend takes (frontend socket, capabilities, confinement).
    #[command(flatten)]
    pub common: CommonArgs,

    /// The disk image: a raw file or a block device.
    #[arg(
        long,
        visible_alias = "disk",
        value_name = "PATH",
        conflicts_with = "disk_fd"
    )]
    pub blk_file: Option<PathBuf>,

    /// The disk image as inherited descriptor N (opened by whoever started us; read-write
    /// unless --read-only).
    #[arg(long, value_name = "N")]
    pub disk_fd: Option<RawFd>,

    /// The image's format. With --disk-fd, absent means raw. With --blk-file, absent means
    /// probed, and a file that starts with a qcow2 header is refused (a guest can write one
    /// into a raw disk): say --format qcow2 or --format raw.
    #[arg(long, value_name = "raw|qcow2")]
    pub format: Option<ImageFormat>,

    /// With --disk-fd and --format qcow2: the backing chain as inherited descriptors, in
    /// order (the first backs the top image), each opened read-only, FORMAT raw or qcow2.
    /// Repeat for each file of the chain.
    #[arg(long, value_name = "M:FORMAT")]
    pub backing_fd: Vec<String>,

    /// With --blk-file: take QEMU-compatible locks on every file of the chain before
    /// serving (on), or not (off). With --disk-fd the launcher has taken them.
    #[arg(long, value_name = "on|off")]
    pub lock: Option<OnOff>,

    /// Serve the image read-only: the guest sees a read-only disk, and writes, discards and
    /// write-zeroes fail with an I/O error, leaving the image untouched.
    #[arg(long)]
    pub read_only: bool,

    /// The disk's serial number, the answer to the guest's GET_ID (at most 20 bytes).
    #[arg(long, value_name = "ID")]
    pub serial: Option<String>,

    /// Number of request queues, each served by its own thread (1 to 64; more than one
    /// offers VIRTIO_BLK_F_MQ).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: u16,

    /// Open the image with O_DIRECT, bypassing the host page cache. The image's direct-I/O
    /// alignment must be known (statx STATX_DIOALIGN on Linux 6.1+, or a block device's
    /// sector size), else start-up fails; guest buffers that are not aligned for it go
    /// through a bounce buffer, and requests whose offset or length are not aligned fail.
    #[arg(long)]
    pub direct: bool,

    /// The logical block size the guest is told (VIRTIO_BLK_F_BLK_SIZE): 512 or 4096.
    #[arg(long, value_name = "BYTES", default_value_t = 512)]
    pub logical_block_size: u32,

    /// After serving a batch, busy-poll the queue this many microseconds for the next
    /// request before sleeping until the next kick (0: never poll). Trades CPU time for
    /// latency and fewer guest exits, like QEMU's iothread poll-max-ns.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u32,

    /// Test only: each queue freezes on popping its Nth request, leaving it in flight (as a
    /// process killed at that moment would). Also `BULKHEAD_TEST_BLK_STALL_AFTER=N`.
    #[arg(long, value_name = "N", hide = true)]
    pub test_stall_after: Option<u64>,
}

/// The environment variable for `--test-stall-after` (for processes the launcher starts).
pub const STALL_ENV: &str = "BULKHEAD_TEST_BLK_STALL_AFTER";

impl BackendArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Default `--poll-us`.
pub const DEFAULT_POLL_US: u32 = 32;

/// Most `--poll-us` accepts (10 ms: polling longer than that is just burning a CPU).
pub const MAX_POLL_US: u32 = 10_000;

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Yes.
    On,
    /// No.
    Off,
}

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// A path to open.
    Path(PathBuf),
    /// An inherited descriptor.
    Fd(RawFd),
}

/// A checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The frontend's socket.
    pub endpoint: Endpoint,
    /// The image.
    pub image: Image,
    /// Its format, when given (with --disk-fd, absent is raw).
    pub format: Option<ImageFormat>,
    /// With --disk-fd: the backing chain's descriptors and formats, top's backing first.
    pub backing: Vec<(RawFd, ImageFormat)>,
    /// With --blk-file: lock the chain's files.
    pub lock: bool,
    /// Serve it read-only.
    pub read_only: bool,
    /// The GET_ID answer, zero-padded.
    pub serial: [u8; ID_BYTES],
    /// Request queues.
    pub queues: u16,
    /// O_DIRECT.
    pub direct: bool,
    /// 512 or 4096.
    pub logical_block_size: u32,
    /// How long a queue thread polls for more work before sleeping.
    pub poll: Duration,
    /// Test only: freeze each queue on popping this many requests.
    pub stall_after: Option<u64>,
}

/// A command line that doesn't make sense.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither --socket-path nor --fd.
    #[error("no frontend socket: pass --socket-path PATH or --fd N")]
    NoSocket,
    /// Neither --blk-file nor --disk-fd.
    #[error("no disk image: pass --blk-file PATH or --disk-fd N")]
    NoImage,
    /// --fd and --disk-fd name the same descriptor.
    #[error("--fd and --disk-fd are both {0}")]
    SameFd(RawFd),
    /// Serial longer than 20 bytes.
    #[error("--serial {serial:?} is {len} bytes long; at most 20 are allowed")]
    SerialTooLong {
        /// The serial.
        serial: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Queue count out of range.
    #[error("--queues {0}: must be between 1 and {max}", max = MAX_QUEUES)]
    Queues(u16),
    /// Block size not 512 or 4096.
    #[error("--logical-block-size {0}: must be 512 or 4096")]
    BlockSize(u32),
    /// Poll time too long.
    #[error("--poll-us {0}: must be at most {max}", max = MAX_POLL_US)]
    Poll(u32),
    /// A `--backing-fd` that is not `M:raw` or `M:qcow2`.
    #[error("--backing-fd {0:?}: expected M:FORMAT, M a descriptor, FORMAT raw or qcow2")]
    BackingFd(String),
    /// A flag that does not go with the others.
    #[error("{0}")]
    Combination(&'static str),
    /// One descriptor given twice.
    #[error("descriptor {0} is given twice (--fd, --disk-fd, --backing-fd must differ)")]
    FdTwice(RawFd),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let endpoint = args.common.endpoint().ok_or(ConfigError::NoSocket)?;
        let image = match (args.blk_file, args.disk_fd) {
            (Some(path), _) => Image::Path(path),
            (None, Some(fd)) => Image::Fd(fd),
            (None, None) => return Err(ConfigError::NoImage),
        };
        if let (Endpoint::Fd(a), Image::Fd(b)) = (&endpoint, &image) {
            if a == b {
                return Err(ConfigError::SameFd(*a));
            }
        }
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = args.serial {
            if s.len() > ID_BYTES {
                return Err(ConfigError::SerialTooLong {
                    len: s.len(),
                    serial: s,
                });
            }
            serial[..s.len()].copy_from_slice(s.as_bytes());
        }
        if args.queues == 0 || args.queues > MAX_QUEUES {
            return Err(ConfigError::Queues(args.queues));
        }
        if args.logical_block_size != 512 && args.logical_block_size != 4096 {
            return Err(ConfigError::BlockSize(args.logical_block_size));
        }
        if args.poll_us > MAX_POLL_US {
            return Err(ConfigError::Poll(args.poll_us));
        }
        let backing = chain_args(&args.backing_fd, &image, args.format, args.direct)?;
        let mut fds: Vec<RawFd> = backing.iter().map(|(fd, _)| *fd).collect();
        fds.extend(match &image {
            Image::Fd(fd) => Some(*fd),
            Image::Path(_) => None,
        });
        fds.extend(match &endpoint {
            Endpoint::Fd(fd) => Some(*fd),
            _ => None,
        });
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::FdTwice(w[0]));
        }
        if args.lock.is_some() && matches!(image, Image::Fd(_)) {
            return Err(ConfigError::Combination(
                "--lock goes with --blk-file: with --disk-fd the launcher takes the locks",
            ));
        }
        Ok(Config {
            endpoint,
            image,
            format: args.format,
            backing,
            lock: args.lock != Some(OnOff::Off),
            read_only: args.read_only,
            serial,
            queues: args.queues,
            direct: args.direct,
            logical_block_size: args.logical_block_size,
            poll: Duration::from_micros(u64::from(args.poll_us)),
            stall_after: args
                .test_stall_after
                .or_else(|| std::env::var(STALL_ENV).ok().and_then(|v| v.parse().ok())),
        })
    }
}

/// Checks the flags of a chain and parses `--backing-fd`s.
fn chain_args(
    backing_fd: &[String],
    image: &Image,
    format: Option<ImageFormat>,
    direct: bool,
) -> Result<Vec<(RawFd, ImageFormat)>, ConfigError> {
    if direct && format == Some(ImageFormat::Qcow2) {
        return Err(ConfigError::Combination(
            "--direct is for raw images: a qcow2 is served through the page cache",
        ));
    }
    if backing_fd.is_empty() {
        return Ok(Vec::new());
    }
    if matches!(image, Image::Path(_)) {
        return Err(ConfigError::Combination(
            "--backing-fd goes with --disk-fd: with --blk-file the backing chain is opened \
             from the image's header",
        ));
    }
    if format != Some(ImageFormat::Qcow2) {
        return Err(ConfigError::Combination(
            "--backing-fd needs --format qcow2: only a qcow2 has backing files",
        ));
    }
    backing_fd
        .iter()
        .map(|arg| {
            let bad = || ConfigError::BackingFd(arg.clone());
            let (fd, format) = arg.split_once(':').ok_or_else(bad)?;
            let fd: RawFd = fd.parse().map_err(|_| bad())?;
            if fd < 0 {
                return Err(bad());
            }
            Ok((fd, format.parse().map_err(|_| bad())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("bulkhead-blk").chain(args.iter().copied()))
                .unwrap();
        Config::try_from(args)
    }

    #[test]
    fn launcher_command_line() {
        let c = parse(&[
            "--fd",
            "3",
            "--blk-file",
            "/d.img",
            "--read-only",
            "--serial",
            "abc",
        ])
        .unwrap();
        assert_eq!(c.endpoint, Endpoint::Fd(3));
        assert_eq!(c.image, Image::Path("/d.img".into()));
        assert!(c.read_only);
        assert_eq!(&c.serial[..4], b"abc\0");
        assert_eq!(c.queues, 1);
        assert_eq!(c.logical_block_size, 512);
        assert_eq!(c.poll, Duration::from_micros(32));
    }

    #[test]
    fn disk_is_an_alias_and_disk_fd_works() {
        let c = parse(&["--socket-path", "/s", "--disk", "/d.img"]).unwrap();
        assert_eq!(c.image, Image::Path("/d.img".into()));
        let c = parse(&["--socket-path", "/s", "--disk-fd", "7", "--queues", "4"]).unwrap();
        assert_eq!(c.image, Image::Fd(7));
        assert_eq!(c.queues, 4);
    }

    #[test]
    fn serial_of_20_bytes_fits_21_does_not() {
        let twenty = "abcdefghijklmnopqrst";
        let c = parse(&["--fd", "3", "--disk", "/d", "--serial", twenty]).unwrap();
        assert_eq!(&c.serial, twenty.as_bytes());
        let err = parse(&[
            "--fd",
            "3",
            "--disk",
            "/d",
            "--serial",
            "abcdefghijklmnopqrstu",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--serial \"abcdefghijklmnopqrstu\" is 21 bytes long; at most 20 are allowed"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(parse(&["--disk", "/d"]).unwrap_err(), ConfigError::NoSocket);
        assert_eq!(parse(&["--fd", "3"]).unwrap_err(), ConfigError::NoImage);
        assert_eq!(
            parse(&["--fd", "3", "--disk-fd", "3"]).unwrap_err(),
            ConfigError::SameFd(3)
        );
        assert_eq!(
            parse(&["--fd", "3", "--disk", "/d", "--queues", "0"]).unwrap_err(),
            ConfigError::Queues(0)
        );
        assert_eq!(
            parse(&["--fd", "3", "--disk", "/d", "--queues", "65"]).unwrap_err(),
            ConfigError::Queues(65)
        );
        assert_eq!(
            parse(&["--fd", "3", "--disk", "/d", "--logical-block-size", "1024"]).unwrap_err(),
            ConfigError::BlockSize(1024)
        );
        assert_eq!(
            parse(&["--fd", "3", "--disk", "/d", "--poll-us", "20000"]).unwrap_err(),
            ConfigError::Poll(20000)
        );
        let c = parse(&["--fd", "3", "--disk", "/d", "--poll-us", "0"]).unwrap();
        assert!(c.poll.is_zero());
    }

    #[test]
    fn conflicting_flags_are_usage_errors() {
        for args in [
            &["--fd", "3", "--socket-path", "/s", "--disk", "/d"][..],
            &["--fd", "3", "--disk", "/d", "--disk-fd", "4"][..],
        ] {
            assert!(Args::try_parse_from(
                std::iter::once("bulkhead-blk").chain(args.iter().copied())
            )
            .is_err());
        }
    }

    #[test]
    fn chain_flags() {
        let c = parse(&[
            "--fd",
            "3",
            "--disk-fd",
            "4",
            "--format",
            "qcow2",
            "--backing-fd",
            "5:qcow2",
            "--backing-fd",
            "6:raw",
        ])
        .unwrap();
        assert_eq!(c.format, Some(ImageFormat::Qcow2));
        assert_eq!(c.backing, [(5, ImageFormat::Qcow2), (6, ImageFormat::Raw)]);
        assert!(c.lock);
        let c = parse(&["--fd", "3", "--disk", "/d", "--lock", "off"]).unwrap();
        assert!(!c.lock);
        assert_eq!(c.format, None);
        for (args, want) in [
            (
                &["--fd", "3", "--disk-fd", "4", "--backing-fd", "5:raw"][..],
                "--backing-fd needs --format qcow2",
            ),
            (
                &[
                    "--fd",
                    "3",
                    "--disk",
                    "/d",
                    "--format",
                    "qcow2",
                    "--backing-fd",
                    "5:raw",
                ],
                "--backing-fd goes with --disk-fd",
            ),
            (
                &[
                    "--fd",
                    "3",
                    "--disk-fd",
                    "4",
                    "--format",
                    "qcow2",
                    "--backing-fd",
                    "5",
                ],
                "--backing-fd \"5\": expected M:FORMAT",
            ),
            (
                &[
                    "--fd",
                    "3",
                    "--disk-fd",
                    "4",
                    "--format",
                    "qcow2",
                    "--backing-fd",
                    "5:vmdk",
                ],
                "expected M:FORMAT",
            ),
            (
                &[
                    "--fd",
                    "3",
                    "--disk-fd",
                    "4",
                    "--format",
                    "qcow2",
                    "--backing-fd",
                    "4:raw",
                ],
                "descriptor 4 is given twice",
            ),
            (
                &["--fd", "3", "--disk-fd", "4", "--lock", "off"],
                "--lock goes with --blk-file",
            ),
            (
                &["--fd", "3", "--disk", "/d", "--format", "qcow2", "--direct"],
                "--direct is for raw images",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn capabilities_are_json_for_a_block_backend() {
        assert_eq!(
            CAPABILITIES,
            "{\"type\": \"block\", \"features\": [\"read-only\", \"blk-file\"]}"
        );
    }
}
