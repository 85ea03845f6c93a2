//! Starting `bulkhead-net`: its TAP queue fds (opened by the launcher) from fd 4 on.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

use bulkhead::jail::NetNs;

use super::recipe::Planned;
use super::{backend_program, LaunchError, Needs, FIRST_EXTRA_FD, SOCKET_FD};
use crate::net_arg::{format_mac, Mac};

/// Starts `bulkhead-net` for device `name` on the TAP queues `taps`, with `mac`, in network
/// namespace `netns` (the one holding the TAP): planned, started by
/// [`super::recipe::Planned::launch`].
pub fn start_net(
    name: &str,
    taps: Vec<OwnedFd>,
    mac: &Mac,
    netns: NetNs,
) -> Result<(Planned, UnixStream), LaunchError> {
    let program = backend_program(name, "bulkhead-net")?;
    let tap_fds: Vec<String> = (FIRST_EXTRA_FD..)
        .take(taps.len())
        .map(|fd| fd.to_string())
        .collect();
    let mut cmd = Command::new(&program);
    cmd.args(["--fd", &SOCKET_FD.to_string()])
        .args(["--tap-fd", &tap_fds.join(",")])
        .args(["--mac", &format_mac(mac)])
        .args(["--queue-pairs", &taps.len().to_string()]);
    let needs = Needs {
        netns,
        workers: taps.len() as u64,
        reports: true,
        ..Needs::default()
    };
    super::recipe::plan(super::Recipe::new(name, &cmd, taps, false, needs))
}
