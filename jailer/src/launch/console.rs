//! Starting `bulkhead-console` on the stream `--console` chose.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;

use super::{backend_program, spawn, DeviceProcess, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD};

/// Where the virtio console is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleStream {
    /// bulkhead's own terminal (standard input and output).
    Stdio,
    /// A Unix socket the console process listens on (one client at a time, reconnectable).
    Socket(PathBuf),
    /// A new pseudo-terminal (its path is printed).
    Pty,
    /// Guest output appended to a file; no input.
    File(PathBuf),
}

/// A `--console` value: a stream, or `None` for `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleChoice(pub Option<ConsoleStream>);

/// Parses a `--console` value.
pub fn parse(s: &str) -> Result<ConsoleChoice, String> {
    parse_stream(s).map(ConsoleChoice)
}

fn parse_stream(s: &str) -> Result<Option<ConsoleStream>, String> {
    Ok(Some(match s {
        "off" => return Ok(None),
        "stdio" => ConsoleStream::Stdio,
        "pty" => ConsoleStream::Pty,
        _ => match s.split_once('=') {
            Some(("socket", p)) if !p.is_empty() => ConsoleStream::Socket(p.into()),
            Some(("file", p)) if !p.is_empty() => ConsoleStream::File(p.into()),
            _ => {
                return Err(format!(
                    "{s:?}: expected stdio, socket=PATH, pty, file=PATH or off"
                ))
            }
        },
    }))
}

/// Starts `bulkhead-console` for device `name` on `stream`.
pub fn start_console(
    name: &str,
    stream: &ConsoleStream,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = backend_program(name, "bulkhead-console")?;
    let mut cmd = Command::new(&program);
    cmd.args(["--fd", &SOCKET_FD.to_string()]);
    let mut fds = Vec::new();
    match stream {
        ConsoleStream::Stdio => {
            cmd.arg("--stdio");
        }
        ConsoleStream::Socket(p) => {
            cmd.arg("--socket").arg(p);
        }
        ConsoleStream::Pty => {
            cmd.arg("--pty");
        }
        ConsoleStream::File(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| LaunchError::OpenDisk {
                    what: "console file",
                    name: name.to_owned(),
                    path: p.clone(),
                    source,
                })?;
            fds.push(OwnedFd::from(f));
            cmd.args(["--stream-fd", &FIRST_EXTRA_FD.to_string()]);
        }
    }
    let needs = Needs {
        // The guest's output may fill a console file; other streams are not files.
        max_file_size: (!matches!(stream, ConsoleStream::File(_))).then_some(0),
        reports: true,
        ..Needs::default()
    };
    spawn(name, cmd, fds, *stream == ConsoleStream::Stdio, &needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_values() {
        assert_eq!(parse("off"), Ok(ConsoleChoice(None)));
        assert_eq!(parse_stream("stdio"), Ok(Some(ConsoleStream::Stdio)));
        assert_eq!(
            parse_stream("socket=/run/c.sock"),
            Ok(Some(ConsoleStream::Socket("/run/c.sock".into())))
        );
        assert_eq!(
            parse_stream("file=/tmp/c.log"),
            Ok(Some(ConsoleStream::File("/tmp/c.log".into())))
        );
        for bad in ["", "tty", "socket=", "file="] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
