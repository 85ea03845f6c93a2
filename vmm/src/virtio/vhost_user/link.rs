//! The state of a device's connection to its backend, shared by the device (which talks
//! to the backend) and the `vhost-monitor` thread (which watches the socket for a
//! hang-up and reports a lost backend). It is the one mailbox between them:
//!
//! - the device hands over a duplicate of each new connection's socket
//!   ([`Link::connected`]) and says when a backend failed it on a request
//!   ([`Link::fail`]: a timeout or garbage; only for a restartable device);
//! - the monitor takes those ([`Link::take_news`]) and marks a hang-up
//!   ([`Link::hung_up`]), which it reports once.
//!
//! Each connection has a generation: a reconnection starts a new one
//! ([`Link::begin_reconnect`]), so a late hang-up of the old socket is not reported.

use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

/// One device's connection state.
pub struct Link {
    name: String,
    /// Written whenever there is news for the monitor.
    wake: EventFd,
    inner: Mutex<Inner>,
}

struct Inner {
    restartable: bool,
    /// A backend serves the device.
    up: bool,
    generation: u64,
    /// A new connection's socket, for the monitor to watch.
    socket: Option<OwnedFd>,
    /// A failure the device saw, for the monitor to report.
    failure: Option<String>,
}

/// What the monitor learns from [`Link::take_news`].
pub struct News {
    /// A new socket to watch (instead of the old one), of generation `generation`.
    pub socket: Option<OwnedFd>,
    /// The connection's generation now.
    pub generation: u64,
    /// A failure to report as a lost backend.
    pub failure: Option<String>,
}

impl Link {
    /// A link for device `name`, not connected yet.
    pub fn new(name: &str) -> std::io::Result<Link> {
        Ok(Link {
            name: name.to_owned(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            inner: Mutex::new(Inner {
                restartable: false,
                up: false,
                generation: 0,
                socket: None,
                failure: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poke(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!("{}: waking the backend monitor: {e}", self.name);
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The eventfd the monitor polls for news.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Whether the launcher restarts this device's backend (`restart=on`).
    pub fn restartable(&self) -> bool {
        self.lock().restartable
    }

    /// Marks the device restartable (or not).
    pub fn set_restartable(&self, on: bool) {
        self.lock().restartable = on;
    }

    /// Whether a backend serves the device now.
    pub fn is_up(&self) -> bool {
        self.lock().up
    }

    /// A backend serves the device over a connection the monitor watches through `socket`
    /// (a duplicate).
    pub fn connected(&self, socket: OwnedFd) {
        let mut inner = self.lock();
        inner.up = true;
        inner.failure = None;
        inner.socket = Some(socket);
        drop(inner);
        self.poke();
    }

    /// The backend of a restartable device failed a request (timed out, answered
    /// garbage): it counts as lost, and the monitor reports it. Nothing for a device that
    /// is not restartable (its requests fail as they always did) or already lost.
    /// Returns whether the device is now lost.
    pub fn fail(&self, why: String) -> bool {
        let mut inner = self.lock();
        if !inner.restartable {
            return false;
        }
        if inner.up {
            inner.up = false;
            inner.failure = Some(why);
            drop(inner);
            self.poke();
        }
        true
    }

    /// A new backend is being connected: the old connection is forgotten (its hang-up,
    /// seen late, is not reported) and the device is down until [`Link::connected`].
    pub fn begin_reconnect(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.up = false;
        inner.failure = None;
        inner.socket = None;
        drop(inner);
        self.poke();
    }

    /// Monitor: takes what changed since the last call (reads the wake eventfd).
    pub fn take_news(&self) -> News {
        let _ = self.wake.read();
        let mut inner = self.lock();
        News {
            socket: inner.socket.take(),
            generation: inner.generation,
            failure: inner.failure.take(),
        }
    }

    /// Monitor: the socket of generation `generation` hung up. Returns whether that is
    /// news to report (it was the current connection and it was up).
    pub fn hung_up(&self, generation: u64) -> bool {
        self.hung_up_then(generation, || ())
    }

    /// Monitor: [`Link::hung_up`], and if it is news, `report` it before a reconnection
    /// can begin (under the link's lock): a loss is never reported after the launcher was
    /// told the new backend took over.
    pub fn hung_up_then(&self, generation: u64, report: impl FnOnce()) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation || !inner.up {
            return false;
        }
        inner.up = false;
        report();
        true
    }

    /// Monitor: `report`s a failure taken with [`Link::take_news`] at `generation`, if no
    /// reconnection began since (under the link's lock, as [`Link::hung_up_then`]).
    pub fn still_current_then(&self, generation: u64, report: impl FnOnce()) -> bool {
        let inner = self.lock();
        if inner.generation != generation {
            return false;
        }
        report();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn socket() -> OwnedFd {
        OwnedFd::from(UnixStream::pair().unwrap().0)
    }

    #[test]
    fn a_failure_is_reported_once_and_only_for_a_restartable_device() {
        let link = Link::new("disk0").unwrap();
        link.connected(socket());
        assert!(!link.fail("timeout".into()), "not restartable");
        assert!(link.is_up());
        link.set_restartable(true);
        assert!(link.fail("timeout".into()));
        assert!(link.fail("again".into()));
        let news = link.take_news();
        assert!(news.socket.is_some());
        assert_eq!(news.failure.as_deref(), Some("timeout"));
        assert!(!link.is_up());
        assert!(!link.hung_up(news.generation), "already reported as lost");
    }

    #[test]
    fn a_failure_seen_before_a_reconnection_is_not_reported_after_it() {
        let link = Link::new("disk0").unwrap();
        link.set_restartable(true);
        link.connected(socket());
        assert!(link.fail("GET_CONFIG: timed out".into()));
        let news = link.take_news();
        assert!(news.failure.is_some());
        // The control thread starts replaying to a new backend before the monitor reports.
        link.begin_reconnect();
        let mut reported = false;
        assert!(!link.still_current_then(news.generation, || reported = true));
        assert!(
            !reported,
            "the launcher must not hear of it after Reconnected"
        );
        let mut reported = false;
        assert!(!link.hung_up_then(news.generation, || reported = true));
        assert!(!reported);
    }

    #[test]
    fn a_hangup_of_an_old_connection_is_not_news() {
        let link = Link::new("net0").unwrap();
        link.connected(socket());
        let old = link.take_news().generation;
        link.begin_reconnect();
        link.connected(socket());
        let news = link.take_news();
        assert_ne!(news.generation, old);
        assert!(!link.hung_up(old));
        assert!(link.hung_up(news.generation));
        assert!(!link.hung_up(news.generation), "once");
    }
}
