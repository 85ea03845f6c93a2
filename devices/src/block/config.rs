//! `bulkhead-blk`'s command line, and the checked [`Config`] it turns into.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::virtio::{ID_BYTES, MAX_QUEUES};
use crate::daemon::Endpoint;
use crate::daemon::{BackendArgs, CommonArgs};

/// The JSON `--print-capabilities` prints: QEMU's `docs/interop/vhost-user.json` schema for
/// a block backend (`VHostUserBackendCapabilitiesBlock`: `--read-only` and `--blk-file`
/// supported).
pub const CAPABILITIES: &str = r#"{"type": "block", "features": ["read-only", "blk-file"]}"#;

/// A vhost-user-blk backend serving one raw disk image to a frontend (a VMM).
///
/// The image is a regular file or a block device. Its size must be a non-zero multiple of
/// 512 bytes (of 4096 with --logical-block-size 4096); anything else is refused at start-up.
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
        Ok(Config {
            endpoint,
            image,
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
    fn capabilities_are_json_for_a_block_backend() {
        assert_eq!(
            CAPABILITIES,
            "{\"type\": \"block\", \"features\": [\"read-only\", \"blk-file\"]}"
        );
    }
}
