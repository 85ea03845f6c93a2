//! Starting `bulkhead-vsock` for `--vsock cid=N,uds=PATH`, and the broker that connects
//! host listeners for the guest's connections.
//!
//! The vsock process is confined like the other backends (empty root, landlock denying
//! every path, a seccomp filter without `socket` or `connect`), so it cannot reach a host
//! socket by itself. The launcher binds `uds` (under the rule for paths a user names, as
//! for `--console socket=`) and passes the listening socket; for a guest connecting to CID
//! 2 port P, the process sends P over its broker socket and this launcher connects
//! `<uds>_P` under the same rule (a user's symlink cannot point it at a root-only socket)
//! and passes the connected socket back. The process can thus reach only the sockets named
//! `<uds>_<port>`; a directory bind-mounted into its jail would give a compromised process
//! every socket in that directory, and need connect in its filter.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::recipe::Planned;
use super::{backend_program, LaunchError, Needs, FIRST_EXTRA_FD};
use crate::safe_open::SocketFile;
use crate::vsock_arg::VsockArg;

/// Worker threads of `bulkhead-vsock`: its queue thread and its I/O thread.
pub const WORKERS: u64 = 2;

/// A planned vsock device: its process (started by [`super::recipe::Planned::launch`]),
/// the vmm's side of its connection, and the uds
/// socket's file (removed when dropped, once the VM has ended).
pub type StartedVsock = (Planned, UnixStream, SocketFile);

/// Plans `bulkhead-vsock` for device `name`.
pub fn start_vsock(name: &str, arg: &VsockArg) -> Result<StartedVsock, LaunchError> {
    let program = backend_program(name, "bulkhead-vsock")?;
    let (listener, socket_file) = crate::safe_open::bind_socket(&arg.uds, true)
        .map(|bound| bound.removed_on_drop(&arg.uds))
        .map_err(|source| LaunchError::Open {
            what: "vsock socket",
            name: name.to_owned(),
            source,
        })?;
    let mut cmd = Command::new(&program);
    cmd.args(["--fd", &super::SOCKET_FD.to_string()]);
    cmd.args(["--guest-cid", &arg.cid.to_string()]);
    cmd.args(["--listen-fd", &FIRST_EXTRA_FD.to_string()]);
    cmd.args(["--broker-fd", &(FIRST_EXTRA_FD + 1).to_string()]);
    // The broker's end of a new pair is added at each start, as fd 5.
    let fds: Vec<OwnedFd> = vec![listener.into()];
    let needs = Needs {
        workers: WORKERS,
        // Streams (256), CONNECT clients (64) and the process's own.
        max_fds: 512,
        reports: true,
        ..Needs::default()
    };
    let recipe = super::Recipe::new(name, &cmd, fds, false, needs).with_broker(&arg.uds);
    let (planned, socket) = super::recipe::plan(recipe)?;
    Ok((planned, socket, socket_file))
}

/// Starts the thread answering, on `ours`, the requests of device `name`'s vsock process
/// (one thread per process: it ends when that process's end closes).
pub(super) fn start_broker(name: &str, ours: UnixStream, uds: PathBuf) -> std::io::Result<()> {
    let broker_name = name.to_owned();
    std::thread::Builder::new()
        .name(format!("{name}-broker"))
        .spawn(move || broker(&broker_name, ours, &uds))
        .map(drop)
}

/// The path a guest's connection to host port `port` reaches.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Answers the vsock process's requests until it closes its end (it ended).
fn broker(name: &str, mut socket: UnixStream, uds: &Path) {
    loop {
        let answered = bulkhead_devices::vsock::broker::answer(&mut socket, |port| {
            let path = port_path(uds, port);
            crate::safe_open::connect_socket(&path).map_err(|e| {
                log::debug!("{name}: the guest's connection to port {port}: {e}");
                match e {
                    crate::safe_open::SafeOpenError::Io { source, .. } => source,
                    _ => std::io::Error::from_raw_os_error(libc::EACCES),
                }
            })
        });
        match answered {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::warn!("{name}: the vsock broker: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_paths() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 6000),
            PathBuf::from("/run/v.sock_6000")
        );
    }
}
