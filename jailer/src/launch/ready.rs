//! Waiting for a VM's processes to say they are ready, all at once: the launcher starts
//! every process without waiting for any, then answers each one's handshake and reads its
//! `Ready` as it comes, in one poll loop over their control sockets, so that one process's
//! start-up (its dynamic loading, its jail) overlaps the others'. The first that fails
//! (an `Error`, its end, silence for [`READY_TIMEOUT`]) is the error, named.

use std::time::Instant;

use super::{DeviceProcess, LaunchError, READY_TIMEOUT};

/// Waits until every process in `processes` is ready (those without a control socket
/// are at once), or one fails.
pub fn wait_all(processes: &mut [DeviceProcess]) -> Result<(), LaunchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut fds = Vec::new();
        let mut waiting = Vec::new();
        for (i, p) in processes.iter_mut().enumerate() {
            if p.ready {
                continue;
            }
            match p.control_fd() {
                Some(fd) => {
                    fds.push(libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    waiting.push(i);
                }
                None => {
                    p.executed()?;
                    p.ready = true;
                }
            }
        }
        let Some(&first) = waiting.first() else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: poll on valid fds (the processes' control sockets, alive while
        // `processes` is borrowed) in a local array of the length given.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Cannot poll: one at a time then, as before.
            for &i in &waiting {
                processes[i].wait_ready()?;
            }
            return Ok(());
        }
        if n == 0 {
            let how = format!("did not say it was ready within {READY_TIMEOUT:?}");
            return Err(processes[first].not_ready(how));
        }
        for (fd, &i) in fds.iter().zip(&waiting) {
            if fd.revents != 0 {
                processes[i].advance()?;
            }
        }
    }
}
