//! Watching vhost-user backends: a thread that notices when a backend's socket hangs up
//! (the backend process died or closed the connection) and stops the VM, naming the device.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::Sender;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::VmStop;

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

/// A backend connection to watch: the device's name and a duplicate of its socket.
pub struct Watched {
    /// Device name.
    pub name: String,
    /// A duplicate of the device's vhost-user socket.
    pub socket: OwnedFd,
}

/// Starts the `vhost-monitor` thread (under the vmm main role's seccomp filter). It sends
/// [`VmStop::DeviceFailed`] for the first backend that hangs up, and ends then or when
/// `exit` is written.
pub fn spawn(
    watched: Vec<Watched>,
    exit: EventFd,
    events: Sender<VmStop>,
) -> std::io::Result<std::thread::JoinHandle<Option<()>>> {
    Ok(spawn_confined(
        "vhost-monitor",
        Role::VmmMain,
        process_mode(),
        move || {
            if let Some(stop) = wait_for_hangup(&watched, &exit) {
                let _ = events.send(stop);
            }
        },
    )?)
}

fn wait_for_hangup(watched: &[Watched], exit: &EventFd) -> Option<VmStop> {
    let mut fds: Vec<libc::pollfd> = watched
        .iter()
        .map(|w| libc::pollfd {
            fd: w.socket.as_fd().as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    fds.push(libc::pollfd {
        fd: exit.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is a valid array of pollfd of the length passed; every fd in it is
        // owned by `watched` or `exit`, which outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("watching vhost-user backends: {e}");
            return None;
        }
        let (exit_fd, device_fds) = fds.split_last()?;
        // A hang-up first: told to end while a backend is already gone (the guest ended on
        // seeing its device fail), the failure is still what the VM stopped for.
        let hung_up = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if let Some(i) = device_fds.iter().position(|p| p.revents & hung_up != 0) {
            return Some(VmStop::DeviceFailed {
                device: watched[i].name.clone(),
                why: "its vhost-user backend closed the connection (the backend process exited or crashed)".into(),
            });
        }
        if exit_fd.revents != 0 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn hangup_names_the_device() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        let watched = vec![
            Watched {
                name: "disk0".into(),
                socket: OwnedFd::from(d),
            },
            Watched {
                name: "disk1".into(),
                socket: OwnedFd::from(b),
            },
        ];
        let (tx, rx) = std::sync::mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(watched, exit.try_clone().unwrap(), tx).unwrap();
        drop(a);
        match rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap() {
            VmStop::DeviceFailed { device, .. } => assert_eq!(device, "disk1"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn exit_event_ends_the_thread_quietly() {
        let (_a, b) = UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(
            vec![Watched {
                name: "d".into(),
                socket: OwnedFd::from(b),
            }],
            exit.try_clone().unwrap(),
            tx,
        )
        .unwrap();
        exit.write(1).unwrap();
        t.join().unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_hangup_already_there_when_told_to_end_is_still_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let (tx, rx) = std::sync::mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        exit.write(1).unwrap();
        let t = spawn(
            vec![Watched {
                name: "net0".into(),
                socket: OwnedFd::from(b),
            }],
            exit.try_clone().unwrap(),
            tx,
        )
        .unwrap();
        t.join().unwrap();
        match rx.try_recv() {
            Ok(VmStop::DeviceFailed { device, .. }) => assert_eq!(device, "net0"),
            other => panic!("{other:?}"),
        }
    }
}
