//! Starting `bulkhead-console` on the stream `--console` chose.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;

use bulkhead_vmm::process::args::split_max_size;

use super::recipe::Planned;
use super::{backend_program, open_named, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD};
use crate::safe_open::{Access, SocketFile};

/// Where the virtio console is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleStream {
    /// bulkhead's own terminal (standard input and output).
    Stdio,
    /// A Unix socket the console process listens on (one client at a time, reconnectable).
    Socket(PathBuf),
    /// A new pseudo-terminal (its path is printed).
    Pty,
    /// Guest output appended to a file, which stops growing at `max_size` bytes; no input.
    File {
        /// The file.
        path: PathBuf,
        /// Its size limit (`max-size=`, 16 MiB by default).
        max_size: u64,
    },
    /// Not a stream: a vhost-user console backend someone else started
    /// (`vhost-user=PATH`, see `external`); no `bulkhead-console` is started.
    VhostUser(crate::external_arg::ExternalBackend),
}

/// A `--console` value: a stream, or `None` for `off`, and what to do when its process
/// dies (`VALUE,restart=off|N/SECS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleChoice(pub Option<ConsoleStream>, pub crate::restart::RestartPolicy);

/// Parses a `--console` value.
pub fn parse(s: &str) -> Result<ConsoleChoice, String> {
    let (s, restart) = crate::restart::split_policy(s)?;
    parse_stream(s).map(|stream| ConsoleChoice(stream, restart))
}

fn parse_stream(s: &str) -> Result<Option<ConsoleStream>, String> {
    if let Some(ext) = crate::external_arg::parse_alone(s) {
        return ext.map(|e| Some(ConsoleStream::VhostUser(e)));
    }
    Ok(Some(match s {
        "off" => return Ok(None),
        "stdio" => ConsoleStream::Stdio,
        "pty" => ConsoleStream::Pty,
        _ => match s.split_once('=') {
            Some(("socket", p)) if !p.is_empty() => ConsoleStream::Socket(p.into()),
            Some(("file", value)) => {
                let (p, max_size) = split_max_size(value)?;
                if p.is_empty() {
                    return Err("file= needs a path".into());
                }
                ConsoleStream::File {
                    path: p.into(),
                    max_size,
                }
            }
            _ => {
                return Err(format!(
                    "{s:?}: expected stdio, socket=PATH, pty, file=PATH[,max-size=SIZE], vhost-user=PATH or off"
                ))
            }
        },
    }))
}

/// A planned console: its process (started by [`super::recipe::Planned::launch`]), the
/// vmm's side of its connection and, for a socket stream, the socket's file (removed when
/// dropped, once the VM has ended).
pub type StartedConsole = (Planned, UnixStream, Option<SocketFile>);

/// Plans `bulkhead-console` for device `name` on `stream`.
pub fn start_console(name: &str, stream: &ConsoleStream) -> Result<StartedConsole, LaunchError> {
    let program = backend_program(name, "bulkhead-console")?;
    let mut cmd = Command::new(&program);
    cmd.args(["--fd", &SOCKET_FD.to_string()]);
    let mut fds: Vec<OwnedFd> = Vec::new();
    // The guest's output may fill a console file (up to its max-size); sockets and ptys
    // are not files; stdio is the user's own stdout, which may be a file they redirected
    // it to, and is not limited (as the serial console on stdio is not).
    let mut max_file_size = Some(0);
    let mut socket_file = None;
    match stream {
        ConsoleStream::VhostUser(e) => {
            return Err(LaunchError::Spawn {
                name: name.to_owned(),
                program: program.display().to_string(),
                source: std::io::Error::other(format!(
                    "vhost-user={} is served by an external backend",
                    e.path.display()
                )),
            })
        }
        ConsoleStream::Stdio => {
            cmd.arg("--stdio");
            max_file_size = None;
        }
        ConsoleStream::Socket(p) => {
            let (listener, file) = listen(name, p)?;
            fds.push(listener.into());
            socket_file = Some(file);
            cmd.args(["--stream-fd", &FIRST_EXTRA_FD.to_string()]);
        }
        ConsoleStream::Pty => {
            cmd.arg("--pty");
        }
        ConsoleStream::File { path, max_size } => {
            let f = open_named(name, "console file", path, Access::Append)?;
            // The backend stops the file at max-size itself; the limit is the backstop.
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            max_file_size = Some(size.saturating_add(*max_size));
            fds.push(f.into());
            cmd.args(["--stream-fd", &FIRST_EXTRA_FD.to_string()]);
            cmd.args(["--max-size", &max_size.to_string()]);
        }
    }
    let needs = Needs {
        max_file_size,
        reports: true,
        ..Needs::default()
    };
    let recipe = super::Recipe::new(name, &cmd, fds, *stream == ConsoleStream::Stdio, needs);
    let (planned, socket) = super::recipe::plan(recipe)?;
    Ok((planned, socket, socket_file))
}

/// Binds console socket `path` for device `name`: in its directory resolved under the
/// rule for paths a user names, replacing a socket an earlier run left (nothing else).
/// The socket's file is removed when the returned [`SocketFile`] is dropped.
fn listen(name: &str, path: &std::path::Path) -> Result<(UnixListener, SocketFile), LaunchError> {
    crate::safe_open::bind_socket(path, true)
        .map(|bound| bound.removed_on_drop(path))
        .map_err(|source| LaunchError::Open {
            what: "console socket",
            name: name.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_values() {
        use crate::restart::{RestartPolicy, DEFAULT};
        assert_eq!(parse("off"), Ok(ConsoleChoice(None, DEFAULT)));
        assert_eq!(
            parse("file=/tmp/c.log,max-size=1M,restart=off"),
            Ok(ConsoleChoice(
                Some(ConsoleStream::File {
                    path: "/tmp/c.log".into(),
                    max_size: 1 << 20
                }),
                RestartPolicy::Off
            ))
        );
        assert_eq!(
            parse("pty,restart=2").map(|c| c.1),
            Ok(RestartPolicy::Budget {
                restarts: 2,
                window_secs: 60
            })
        );
        assert_eq!(parse_stream("stdio"), Ok(Some(ConsoleStream::Stdio)));
        assert_eq!(
            parse_stream("socket=/run/c.sock"),
            Ok(Some(ConsoleStream::Socket("/run/c.sock".into())))
        );
        assert_eq!(
            parse_stream("file=/tmp/c.log"),
            Ok(Some(ConsoleStream::File {
                path: "/tmp/c.log".into(),
                max_size: 16 << 20
            }))
        );
        assert_eq!(
            parse_stream("file=/tmp/c.log,max-size=1M"),
            Ok(Some(ConsoleStream::File {
                path: "/tmp/c.log".into(),
                max_size: 1 << 20
            }))
        );
        for bad in [
            "",
            "tty",
            "socket=",
            "file=",
            "file=/x,max-size=0",
            "file=/x,max-size=9Q",
            "pty,restart=never",
            "restart=off",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
