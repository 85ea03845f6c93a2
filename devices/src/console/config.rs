//! `bulkhead-console`'s command line, and the checked [`Config`] it turns into.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{ArgGroup, Parser};

use crate::daemon::Endpoint;
use crate::daemon::{BackendArgs, CommonArgs};

/// The JSON `--print-capabilities` prints: QEMU's `docs/interop/vhost-user.json` has a
/// `console` backend type (with no console-specific features).
pub const CAPABILITIES: &str = r#"{"type": "console"}"#;

/// A vhost-user virtio-console backend: port 0 of a console bridged to one stream.
///
/// Guest output goes to the stream, in order; bytes read from the stream reach the guest.
/// On --socket-path or a listening --fd it serves frontends one after the other until
/// SIGTERM/SIGINT (status 0; the socket it created is removed); with --once, or on a
/// connected --fd, one frontend, exiting with status 0 when it disconnects.
/// Any error is reported on one line and the exit status is 1. Logging is
/// controlled by RUST_LOG (default: warn).
#[derive(Debug, Parser)]
#[command(name = "bulkhead-console", version, about, long_about)]
#[command(group(ArgGroup::new("stream").args(["stdio", "socket", "pty", "file", "stream_fd"])))]
pub struct Args {
    /// The flags every backend takes (frontend socket, capabilities, confinement).
    #[command(flatten)]
    pub common: CommonArgs,

    /// The stream is this process's stdin (input) and stdout (output). A terminal stdin is
    /// put in raw mode (restored on exit) and its size is given to the guest.
    #[arg(long)]
    pub stdio: bool,

    /// Listen on a Unix socket at PATH; one client at a time is the stream. Guest output
    /// while no client is connected is dropped.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Open a pseudo-terminal and serve its master side; its name is printed on stderr as
    /// `bulkhead-console: pty /dev/pts/N`.
    #[arg(long)]
    pub pty: bool,

    /// Append guest output to the file at PATH (created if missing); no input.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// The stream is inherited descriptor N: a socket, a terminal or a pipe (read and
    /// written), or a regular file or write-only descriptor (output only). A terminal is
    /// put in raw mode (restored on exit) and its size is given to the guest.
    #[arg(long, value_name = "N")]
    pub stream_fd: Option<RawFd>,

    /// When the stream is a regular file: it stops growing at SIZE bytes (its size before
    /// included; K, M, G suffixes), further guest output is dropped and counted.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = bulkhead_protocol::capped::parse_size)]
    pub max_size: u64,
}

impl BackendArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Where the console's bytes go and come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSpec {
    /// stdin and stdout.
    Stdio,
    /// A listening Unix socket at this path.
    Socket(PathBuf),
    /// A new pseudo-terminal.
    Pty,
    /// A file, appended to.
    File(PathBuf),
    /// An inherited descriptor.
    Fd(RawFd),
}

/// A checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The frontend's socket.
    pub endpoint: Endpoint,
    /// The stream.
    pub stream: StreamSpec,
    /// The size limit of a regular file stream.
    pub max_size: u64,
}

/// A command line that doesn't make sense.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither --socket-path nor --fd.
    #[error("no frontend socket: pass --socket-path PATH or --fd N")]
    NoSocket,
    /// No stream.
    #[error(
        "no console stream: pass one of --stdio, --socket PATH, --pty, --file PATH, --stream-fd N"
    )]
    NoStream,
    /// --fd and --stream-fd name the same descriptor.
    #[error("--fd and --stream-fd are both {0}")]
    SameFd(RawFd),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let endpoint = args.common.endpoint().ok_or(ConfigError::NoSocket)?;
        let stream = if args.stdio {
            StreamSpec::Stdio
        } else if let Some(path) = args.socket {
            StreamSpec::Socket(path)
        } else if args.pty {
            StreamSpec::Pty
        } else if let Some(path) = args.file {
            StreamSpec::File(path)
        } else if let Some(fd) = args.stream_fd {
            StreamSpec::Fd(fd)
        } else {
            return Err(ConfigError::NoStream);
        };
        if let (Endpoint::Fd(a), StreamSpec::Fd(b)) = (&endpoint, &stream) {
            if a == b {
                return Err(ConfigError::SameFd(*a));
            }
        }
        Ok(Config {
            endpoint,
            stream,
            max_size: args.max_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("bulkhead-console").chain(args.iter().copied()))
    }

    fn parse(a: &[&str]) -> Result<Config, ConfigError> {
        Config::try_from(args(a).unwrap())
    }

    #[test]
    fn launcher_command_line() {
        let c = parse(&["--fd", "3", "--stream-fd", "4"]).unwrap();
        assert_eq!(c.endpoint, Endpoint::Fd(3));
        assert_eq!(c.stream, StreamSpec::Fd(4));
    }

    #[test]
    fn each_stream() {
        for (flags, want) in [
            (&["--stdio"][..], StreamSpec::Stdio),
            (&["--pty"][..], StreamSpec::Pty),
            (
                &["--socket", "/c.sock"][..],
                StreamSpec::Socket("/c.sock".into()),
            ),
            (&["--file", "/log"][..], StreamSpec::File("/log".into())),
        ] {
            let mut a = vec!["--socket-path", "/s"];
            a.extend_from_slice(flags);
            assert_eq!(parse(&a).unwrap().stream, want);
        }
    }

    #[test]
    fn bad_command_lines() {
        assert_eq!(parse(&["--stdio"]).unwrap_err(), ConfigError::NoSocket);
        assert_eq!(parse(&["--fd", "3"]).unwrap_err(), ConfigError::NoStream);
        assert_eq!(
            parse(&["--fd", "3", "--stream-fd", "3"]).unwrap_err(),
            ConfigError::SameFd(3)
        );
        assert!(args(&["--fd", "3", "--stdio", "--pty"]).is_err());
        assert!(args(&["--fd", "3", "--socket-path", "/s", "--pty"]).is_err());
    }

    #[test]
    fn capabilities_name_the_console_type() {
        assert_eq!(CAPABILITIES, "{\"type\": \"console\"}");
    }
}
