//! `bulkhead-vsock`'s command line, and the checked [`Config`] it turns into.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use clap::Parser;

use super::broker::Broker;
use crate::daemon::Endpoint;
use crate::daemon::{BackendArgs, CommonArgs};

/// The JSON `--print-capabilities` prints (QEMU's vhost-user.json has a `vsock` type).
pub const CAPABILITIES: &str = r#"{"type": "vsock"}"#;

/// A vhost-user virtio-vsock backend with Firecracker's hybrid vsock on the host side.
///
/// Host programs connect to the listening socket of --listen-fd and send
/// "CONNECT <port>\n" to reach the guest's port (answered "OK <hostport>\n"); the guest's
/// connections to CID 2 port P are connected by the launcher's broker on --broker-fd.
#[derive(Debug, Parser)]
#[command(name = "bulkhead-vsock", version, about, long_about)]
pub struct Args {
    /// The flags every backend takes (frontend socket, capabilities, confinement).
    #[command(flatten)]
    pub common: CommonArgs,

    /// The guest's context id (3 or more).
    #[arg(long, value_name = "N")]
    pub guest_cid: u64,

    /// Inherited listening Unix socket host programs connect to (hybrid vsock's uds_path).
    #[arg(long, value_name = "N")]
    pub listen_fd: Option<RawFd>,

    /// Inherited socket to the launcher's broker, which connects `<uds>_<port>` for the
    /// guest's connections (without it they are refused).
    #[arg(long, value_name = "N")]
    pub broker_fd: Option<RawFd>,
}

impl BackendArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// A checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The frontend's socket.
    pub endpoint: Endpoint,
    /// The guest's CID.
    pub cid: u64,
    /// The hybrid listener.
    pub listen_fd: Option<RawFd>,
    /// The broker.
    pub broker_fd: Option<RawFd>,
}

/// A command line that doesn't make sense.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither --socket-path nor --fd.
    #[error("no frontend socket: pass --socket-path PATH or --fd N")]
    NoSocket,
    /// A CID that is not a guest's.
    #[error("--guest-cid {0}: a guest's CID is 3 to 4294967294")]
    Cid(u64),
    /// Two flags name the same descriptor.
    #[error("descriptor {0} is given twice")]
    SameFd(RawFd),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let endpoint = args.common.endpoint().ok_or(ConfigError::NoSocket)?;
        if !(3..u64::from(u32::MAX)).contains(&args.guest_cid) {
            return Err(ConfigError::Cid(args.guest_cid));
        }
        let mut fds: Vec<RawFd> = args.listen_fd.into_iter().chain(args.broker_fd).collect();
        if let Endpoint::Fd(fd) = endpoint {
            fds.push(fd);
        }
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::SameFd(w[0]));
        }
        Ok(Config {
            endpoint,
            cid: args.guest_cid,
            listen_fd: args.listen_fd,
            broker_fd: args.broker_fd,
        })
    }
}

impl Config {
    /// Takes the inherited listener and broker socket (call once).
    pub fn open(&self) -> std::io::Result<(Option<UnixListener>, Option<Broker>)> {
        let check = |fd: RawFd| crate::sys::check_open(fd).map(|()| fd);
        let listener = match self.listen_fd {
            // SAFETY: an inherited descriptor the command line gives this process, open
            // (checked), taken once, owned by nothing else.
            Some(fd) => Some(unsafe { UnixListener::from_raw_fd(check(fd)?) }),
            None => None,
        };
        let broker = match self.broker_fd {
            // SAFETY: as above.
            Some(fd) => Some(Broker::new(unsafe { UnixStream::from_raw_fd(check(fd)?) })?),
            None => None,
        };
        Ok((listener, broker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Config, ConfigError> {
        Config::try_from(
            Args::try_parse_from(std::iter::once("bulkhead-vsock").chain(a.iter().copied()))
                .unwrap(),
        )
    }

    #[test]
    fn launcher_command_line() {
        let c = parse(&[
            "--fd",
            "3",
            "--guest-cid",
            "3",
            "--listen-fd",
            "4",
            "--broker-fd",
            "5",
        ])
        .unwrap();
        assert_eq!((c.cid, c.listen_fd, c.broker_fd), (3, Some(4), Some(5)));
    }

    #[test]
    fn bad_command_lines() {
        assert_eq!(parse(&["--guest-cid", "3"]), Err(ConfigError::NoSocket));
        assert_eq!(
            parse(&["--fd", "3", "--guest-cid", "2"]),
            Err(ConfigError::Cid(2))
        );
        assert_eq!(
            parse(&["--fd", "3", "--guest-cid", "9", "--listen-fd", "3"]),
            Err(ConfigError::SameFd(3))
        );
    }
}
