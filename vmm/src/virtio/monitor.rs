//! Watching vhost-user backends: a thread that notices when a backend's socket hangs up
//! (the backend process died or closed the connection). For a device whose backend the
//! launcher restarts (`restart=on`) it reports the loss ([`Lost`]) and goes on watching
//! the other devices and, once the launcher reconnected it, the new socket; for any other
//! device it stops the VM ([`VmStop::DeviceFailed`]), naming the device, and ends.
//!
//! What changes (a new connection, a failure a vCPU saw on a request) reaches the thread
//! through each device's [`Link`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::Link;
use crate::devices::VmStop;
use crate::sys::{event_fd, peer_hung_up, POLLRDHUP};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

/// A backend connection to watch: its device's link (which carries the socket).
pub type Watched = Arc<Link>;

/// A restartable device lost its backend: device name and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The device.
    pub device: String,
    /// What happened.
    pub reason: String,
}

/// Where lost backends are reported (to the launcher, which restarts them). Without one,
/// no device is treated as restartable: nobody would reconnect it.
pub type Report = Box<dyn Fn(Lost) + Send>;

const HUNG_UP: &str =
    "its vhost-user backend closed the connection (the backend process exited or crashed)";

/// Starts the `vhost-monitor` thread (under the vmm main role's seccomp filter). It ends
/// when it sent a [`VmStop::DeviceFailed`], or when `exit` is written.
pub fn spawn(
    watched: Vec<Watched>,
    exit: EventFd,
    events: Sender<VmStop>,
    report: Option<Report>,
) -> std::io::Result<std::thread::JoinHandle<Option<()>>> {
    Ok(spawn_confined(
        "vhost-monitor",
        Role::VmmMain,
        process_mode(),
        move || {
            if let Some(stop) = watch(&watched, &exit, report.as_ref()) {
                let _ = events.send(stop);
            }
        },
    )?)
}

/// One watched device: its link and the socket of the connection generation watched.
struct Entry<'a> {
    link: &'a Link,
    socket: Option<(OwnedFd, u64)>,
}

fn watch(watched: &[Watched], exit: &EventFd, report: Option<&Report>) -> Option<VmStop> {
    let mut entries: Vec<Entry> = watched
        .iter()
        .map(|link| Entry { link, socket: None })
        .collect();
    let restartable = |e: &Entry| report.is_some() && e.link.restartable();
    // The connections made at build time.
    for e in &mut entries {
        take_news(e, report);
    }
    loop {
        let seen = match wait(&entries, exit) {
            Ok(seen) => seen,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("watching vhost-user backends: {e}");
                return None;
            }
        };
        // A hang-up first: told to end while a backend is already gone (the guest ended on
        // seeing its device fail), the failure is still what the VM stopped for.
        for (e, &(wake, hung_up)) in entries.iter_mut().zip(&seen.devices) {
            if hung_up {
                if !restartable(e) {
                    return Some(VmStop::DeviceFailed {
                        device: e.link.name().to_owned(),
                        why: HUNG_UP.into(),
                    });
                }
                if let Some((_, generation)) = e.socket.take() {
                    e.link
                        .hung_up_then(generation, || lost(report, e.link.name(), HUNG_UP));
                }
            }
            if wake {
                take_news(e, report);
            }
        }
        if seen.exit {
            return None;
        }
    }
}

/// What one poll saw: per entry, whether its wake eventfd was written and whether its
/// watched socket (if any) hung up; and whether `exit` was written.
struct Seen {
    devices: Vec<(bool, bool)>,
    exit: bool,
}

/// Waits until an entry's wake eventfd or watched socket, or `exit`, has something.
fn wait(entries: &[Entry], exit: &EventFd) -> nix::Result<Seen> {
    // Per entry its wake eventfd and, while one is watched, its socket; then `exit`.
    let mut fds = Vec::with_capacity(entries.len() * 2 + 1);
    for e in entries {
        fds.push(PollFd::new(event_fd(e.link.wake_fd()), PollFlags::POLLIN));
        if let Some((s, _)) = &e.socket {
            fds.push(PollFd::new(s.as_fd(), POLLRDHUP));
        }
    }
    fds.push(PollFd::new(event_fd(exit), PollFlags::POLLIN));
    poll(&mut fds, PollTimeout::NONE)?;
    let hung_up = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    // (An eventfd polled for POLLIN reports only flags nix knows.)
    let written = |p: Option<&PollFd>| p.is_some_and(|p| p.any() != Some(false));
    let mut fds = fds.iter();
    let mut devices = Vec::with_capacity(entries.len());
    for e in entries {
        let wake = written(fds.next());
        let socket = e.socket.is_some() && fds.next().is_some_and(|p| peer_hung_up(p, hung_up));
        devices.push((wake, socket));
    }
    let exit = written(fds.next());
    Ok(Seen { devices, exit })
}

fn take_news(e: &mut Entry, report: Option<&Report>) {
    let news = e.link.take_news();
    if let Some(socket) = news.socket {
        e.socket = Some((socket, news.generation));
    } else if e
        .socket
        .as_ref()
        .is_some_and(|(_, g)| *g != news.generation)
    {
        // A reconnection began: the old connection is no longer watched.
        e.socket = None;
    }
    if let Some(why) = news.failure {
        e.link
            .still_current_then(news.generation, || lost(report, e.link.name(), &why));
    }
}

fn lost(report: Option<&Report>, device: &str, reason: &str) {
    log::warn!("{device}: backend lost ({reason}); waiting for the launcher to reconnect it");
    if let Some(report) = report {
        report(Lost {
            device: device.to_owned(),
            reason: reason.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A link for `name` connected through `socket` (the monitor's copy).
    fn link(name: &str, socket: UnixStream, restartable: bool) -> Watched {
        let link = Link::new(name).unwrap();
        link.set_restartable(restartable);
        link.connected(OwnedFd::from(socket));
        Arc::new(link)
    }

    fn reporter() -> (Option<Report>, mpsc::Receiver<Lost>) {
        let (tx, rx) = mpsc::channel();
        let report: Report = Box::new(move |l| {
            let _ = tx.send(l);
        });
        (Some(report), rx)
    }

    #[test]
    fn hangup_names_the_device() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        let watched = vec![link("disk0", d, false), link("disk1", b, false)];
        let (tx, rx) = mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(watched, exit.try_clone().unwrap(), tx, None).unwrap();
        drop(a);
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            VmStop::DeviceFailed { device, .. } => assert_eq!(device, "disk1"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn exit_event_ends_the_thread_quietly() {
        let (_a, b) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(
            vec![link("d", b, false)],
            exit.try_clone().unwrap(),
            tx,
            None,
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
        let (tx, rx) = mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        exit.write(1).unwrap();
        let t = spawn(
            vec![link("net0", b, false)],
            exit.try_clone().unwrap(),
            tx,
            None,
        )
        .unwrap();
        t.join().unwrap();
        match rx.try_recv() {
            Ok(VmStop::DeviceFailed { device, .. }) => assert_eq!(device, "net0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restartable_device_is_lost_not_failed_and_watched_again_once_reconnected() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        let disk = link("disk0", b, true);
        let net = link("net0", d, false);
        let (tx, stops) = mpsc::channel();
        let (report, lost) = reporter();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(
            vec![disk.clone(), net],
            exit.try_clone().unwrap(),
            tx,
            report,
        )
        .unwrap();
        drop(a);
        let l = lost.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(l.device, "disk0");
        assert!(!disk.is_up());
        assert!(stops.try_recv().is_err(), "the VM goes on");
        // Reconnected: the new socket is watched, and its hang-up is a second loss.
        let (e, f) = UnixStream::pair().unwrap();
        disk.begin_reconnect();
        disk.connected(OwnedFd::from(f));
        std::thread::sleep(Duration::from_millis(50));
        assert!(lost.try_recv().is_err(), "nothing new yet");
        drop(e);
        assert_eq!(
            lost.recv_timeout(Duration::from_secs(5)).unwrap().device,
            "disk0"
        );
        // A failure a vCPU saw is reported by the monitor too.
        let (_g, h) = UnixStream::pair().unwrap();
        disk.begin_reconnect();
        disk.connected(OwnedFd::from(h));
        assert!(disk.fail("GET_CONFIG timed out".into()));
        let l = lost.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(l.reason, "GET_CONFIG timed out");
        // The other device is still watched, and is not restartable.
        drop(c);
        match stops.recv_timeout(Duration::from_secs(5)).unwrap() {
            VmStop::DeviceFailed { device, .. } => assert_eq!(device, "net0"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
        assert!(lost.try_recv().is_err(), "each loss reported once");
    }

    #[test]
    fn without_a_reporter_a_restartable_device_fails_as_before() {
        let (a, b) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let exit = EventFd::new(0).unwrap();
        let t = spawn(
            vec![link("disk0", b, true)],
            exit.try_clone().unwrap(),
            tx,
            None,
        )
        .unwrap();
        drop(a);
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            VmStop::DeviceFailed { .. }
        ));
        t.join().unwrap();
    }
}
