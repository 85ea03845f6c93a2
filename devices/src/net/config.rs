//! `bulkhead-net`'s command line, and the checked [`Config`] it turns into.

use std::os::fd::RawFd;
use std::time::Duration;

use clap::Parser;

use super::busy_poll::{DEFAULT_POLL_US, MAX_POLL_US};
use super::virtio::MAX_QUEUE_PAIRS;
use crate::daemon::Endpoint;
use crate::daemon::{BackendArgs, CommonArgs};

/// The JSON `--print-capabilities` prints. QEMU's `docs/interop/vhost-user.json` defines no
/// net-specific capabilities (`VHostUserBackendCapabilities` has members only for `gpu`
/// and `input`, and its parser refuses unknown keys), so a net backend prints its type only.
pub const CAPABILITIES: &str = r#"{"type": "net"}"#;

/// A vhost-user-net backend bridging a virtio-net device to one TAP interface.
///
/// The TAP is opened by name (--tap) or inherited (--tap-fd, one descriptor per queue pair,
/// opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and IFF_MULTI_QUEUE when there are several).
/// On --socket-path or a listening --fd it serves frontends one after the other until
/// SIGTERM/SIGINT (status 0; the socket it created is removed); with --once, or on a
/// connected --fd, one frontend, exiting with status 0 when it disconnects.
/// Any error, including the TAP disappearing, is reported on one line and
/// the exit status is 1. Logging is controlled by RUST_LOG (default: warn).
#[derive(Debug, Parser)]
#[command(name = "bulkhead-net", version, about, long_about)]
pub struct Args {
    /// The flags every backend takes (frontend socket, capabilities, confinement).
    #[command(flatten)]
    pub common: CommonArgs,

    /// Open the TAP interface NAME (created if it does not exist and we may).
    #[arg(long, value_name = "NAME", conflicts_with = "tap_fd")]
    pub tap: Option<String>,

    /// Inherited TAP descriptors, one per queue pair, comma-separated.
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    pub tap_fd: Vec<RawFd>,

    /// The guest's MAC address (default: a random locally administered one, logged at start).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// Queue pairs (1 to 16); more than one offers VIRTIO_NET_F_MQ.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queue_pairs: u16,

    /// The MTU the guest is told (VIRTIO_NET_F_MTU), 68 to 65535.
    #[arg(long, value_name = "BYTES", default_value_t = 1500)]
    pub mtu: u16,

    /// When a TX ring runs dry, or RX runs out of buffers, busy-poll the ring this many
    /// microseconds for the driver's next entry before sleeping until the next kick (0:
    /// never poll; the time adapts below this while polls find nothing). Trades CPU time
    /// for latency and fewer guest exits, like bulkhead-blk's --poll-us.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u32,
}

impl BackendArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Where the TAP comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An interface to open by name.
    Name(String),
    /// Inherited descriptors, one per queue pair.
    Fds(Vec<RawFd>),
}

/// A checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The frontend's socket.
    pub endpoint: Endpoint,
    /// The TAP.
    pub tap: TapSource,
    /// The MAC address, `None` for a random one.
    pub mac: Option<[u8; 6]>,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// MTU.
    pub mtu: u16,
    /// Longest busy poll of a dry ring.
    pub poll: Duration,
}

/// A command line that doesn't make sense.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither --socket-path nor --fd.
    #[error("no frontend socket: pass --socket-path PATH or --fd N")]
    NoSocket,
    /// Neither --tap nor --tap-fd.
    #[error("no TAP: pass --tap NAME or --tap-fd N[,N...]")]
    NoTap,
    /// A descriptor named twice.
    #[error("descriptor {0} is given twice (--fd/--tap-fd)")]
    SameFd(RawFd),
    /// Not one --tap-fd per queue pair.
    #[error(
        "--tap-fd has {fds} descriptors but --queue-pairs is {pairs}: give one per queue pair"
    )]
    TapFdCount {
        /// Descriptors given.
        fds: usize,
        /// Queue pairs.
        pairs: u16,
    },
    /// Queue pairs out of range.
    #[error("--queue-pairs {0}: must be between 1 and {max}", max = MAX_QUEUE_PAIRS)]
    QueuePairs(u16),
    /// Poll time out of range.
    #[error("--poll-us {0}: must be at most {max}", max = MAX_POLL_US)]
    Poll(u32),
    /// MTU out of range.
    #[error("--mtu {0}: must be between 68 and 65535")]
    Mtu(u16),
    /// Unparsable MAC.
    #[error("--mac {0:?}: not a MAC address (expected six hex bytes like 52:54:00:12:34:56)")]
    Mac(String),
    /// Multicast MAC.
    #[error("--mac {0}: a multicast address can't be a station's address")]
    MulticastMac(String),
    /// TAP name too long.
    #[error("--tap {0:?}: interface names are 1 to 15 bytes")]
    TapName(String),
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let endpoint = args.common.endpoint().ok_or(ConfigError::NoSocket)?;
        if args.queue_pairs == 0 || args.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(ConfigError::QueuePairs(args.queue_pairs));
        }
        let tap = match args.tap {
            Some(name) => {
                if name.is_empty() || name.len() > 15 || name.contains('\0') {
                    return Err(ConfigError::TapName(name));
                }
                TapSource::Name(name)
            }
            None if args.tap_fd.is_empty() => return Err(ConfigError::NoTap),
            None => {
                if args.tap_fd.len() != usize::from(args.queue_pairs) {
                    return Err(ConfigError::TapFdCount {
                        fds: args.tap_fd.len(),
                        pairs: args.queue_pairs,
                    });
                }
                let mut seen: Vec<RawFd> = args.common.fd.into_iter().collect();
                for &fd in &args.tap_fd {
                    if seen.contains(&fd) {
                        return Err(ConfigError::SameFd(fd));
                    }
                    seen.push(fd);
                }
                TapSource::Fds(args.tap_fd)
            }
        };
        if args.poll_us > MAX_POLL_US {
            return Err(ConfigError::Poll(args.poll_us));
        }
        if args.mtu < 68 {
            return Err(ConfigError::Mtu(args.mtu));
        }
        let mac = match args.mac {
            None => None,
            Some(s) => {
                let mac = parse_mac(&s).ok_or_else(|| ConfigError::Mac(s.clone()))?;
                if mac[0] & 1 != 0 {
                    return Err(ConfigError::MulticastMac(s));
                }
                Some(mac)
            }
        };
        Ok(Config {
            endpoint,
            tap,
            mac,
            queue_pairs: args.queue_pairs,
            mtu: args.mtu,
            poll: Duration::from_micros(u64::from(args.poll_us)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("bulkhead-net").chain(args.iter().copied()))
                .unwrap();
        Config::try_from(args)
    }

    #[test]
    fn launcher_command_line() {
        let c = parse(&[
            "--fd",
            "3",
            "--tap-fd",
            "4,5",
            "--mac",
            "52:54:00:12:34:56",
            "--queue-pairs",
            "2",
        ])
        .unwrap();
        assert_eq!(c.endpoint, Endpoint::Fd(3));
        assert_eq!(c.tap, TapSource::Fds(vec![4, 5]));
        assert_eq!(c.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(c.queue_pairs, 2);
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.poll, Duration::from_micros(32));
    }

    #[test]
    fn standalone_by_name() {
        let c = parse(&["--socket-path", "/s", "--tap", "tap0", "--mtu", "9000"]).unwrap();
        assert_eq!(c.tap, TapSource::Name("tap0".into()));
        assert_eq!(c.mac, None);
        assert_eq!(c.mtu, 9000);
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(parse(&["--tap", "t"]).unwrap_err(), ConfigError::NoSocket);
        assert_eq!(parse(&["--fd", "3"]).unwrap_err(), ConfigError::NoTap);
        assert_eq!(
            parse(&["--fd", "3", "--tap-fd", "3"]).unwrap_err(),
            ConfigError::SameFd(3)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap-fd", "4,4", "--queue-pairs", "2"]).unwrap_err(),
            ConfigError::SameFd(4)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap-fd", "4", "--queue-pairs", "2"]).unwrap_err(),
            ConfigError::TapFdCount { fds: 1, pairs: 2 }
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--queue-pairs", "0"]).unwrap_err(),
            ConfigError::QueuePairs(0)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--queue-pairs", "17"]).unwrap_err(),
            ConfigError::QueuePairs(17)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--poll-us", "10001"]).unwrap_err(),
            ConfigError::Poll(10001)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--poll-us", "0"])
                .unwrap()
                .poll,
            Duration::ZERO
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--mtu", "67"]).unwrap_err(),
            ConfigError::Mtu(67)
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "0123456789abcdef"]).unwrap_err(),
            ConfigError::TapName("0123456789abcdef".into())
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--mac", "52:54:00:12:34"]).unwrap_err(),
            ConfigError::Mac("52:54:00:12:34".into())
        );
        assert_eq!(
            parse(&["--fd", "3", "--tap", "t", "--mac", "01:00:5e:00:00:01"]).unwrap_err(),
            ConfigError::MulticastMac("01:00:5e:00:00:01".into())
        );
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02-AB-cd-00-01-ff").unwrap();
        assert_eq!(format_mac(&mac), "02:ab:cd:00:01:ff");
        assert!(parse_mac("02:ab:cd:00:01:ff:00").is_none());
        assert!(parse_mac("02:ab:cd:00:01:f").is_none());
        assert!(parse_mac("").is_none());
    }

    #[test]
    fn capabilities_are_json_for_a_net_backend() {
        assert_eq!(CAPABILITIES, "{\"type\": \"net\"}");
    }
}
