//! Waiting for a VM's processes to say they are ready, all at once: the launcher starts
//! every process without waiting for any, then answers each one's handshake and reads its
//! `Ready` as it comes, in one poll loop over their control sockets, so that one process's
//! start-up (its dynamic loading, its jail) overlaps the others'. The first that fails
//! (an `Error`, its end, silence for [`READY_TIMEOUT`]) is the error, named.

use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::{DeviceProcess, LaunchError, READY_TIMEOUT};

/// Waits until every process in `processes` is ready (those without a control socket
/// are at once), or one fails.
pub fn wait_all(processes: &mut [DeviceProcess]) -> Result<(), LaunchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut waiting = Vec::new();
        for (i, p) in processes.iter_mut().enumerate() {
            if p.ready {
                continue;
            }
            if p.control_fd().is_some() {
                waiting.push(i);
            } else {
                p.executed()?;
                p.ready = true;
            }
        }
        let Some(&first) = waiting.first() else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // The processes' control sockets, borrowed for the poll only.
        let polled = {
            let mut fds: Vec<PollFd> = waiting
                .iter()
                .filter_map(|&i| processes[i].control_fd())
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            nix::poll::poll(&mut fds, timeout).map(|_| {
                // nix shows no flags when the kernel sets one it cannot name: ready all
                // the same.
                fds.iter()
                    .map(|p| p.revents().is_none_or(|r| !r.is_empty()))
                    .collect::<Vec<bool>>()
            })
        };
        let ready = match polled {
            Ok(ready) => ready,
            Err(Errno::EINTR) => continue,
            Err(_) => {
                // Cannot poll: one at a time then, as before.
                for &i in &waiting {
                    processes[i].wait_ready()?;
                }
                return Ok(());
            }
        };
        if !ready.contains(&true) {
            let how = format!("did not say it was ready within {READY_TIMEOUT:?}");
            return Err(processes[first].not_ready(how));
        }
        for (&r, &i) in ready.iter().zip(&waiting) {
            if r {
                processes[i].advance()?;
            }
        }
    }
}
