//! Which queues of a multi-queue TAP are attached: the TAP queue of a queue pair the driver
//! has not enabled is detached (`TUNSETQUEUE`), otherwise the kernel would steer flows to a
//! queue nobody reads. Pair 0 is never detached (a TAP keeps at least one queue, and the
//! device always runs on it).
//!
//! `vhost-user-backend` tells a backend nothing when `SET_VRING_ENABLE` arrives: it only
//! flips the vring's `enabled` flag and (un)registers its kick. So the pair's threads call
//! [`QueueLink::reconcile`] with the vrings' flags: its worker before serving any event
//! (which attaches a newly enabled pair before its first frame), and its RX thread on every
//! wake-up and on a timer (which detaches a pair whose rings were disabled).
//!
//! Everyone using the descriptor holds [`QueueLink::read`] meanwhile, so a detach never
//! lands in the middle of a read or write (which would then fail with EBADFD, the error
//! that otherwise means the TAP has gone).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use super::tap::set_queue_attached;

/// Attaches or detaches one TAP queue (the real one is a TAP descriptor; tests use mocks).
pub trait QueueSwitch {
    /// Attaches (`true`) or detaches (`false`) the queue.
    fn set_attached(&self, attached: bool) -> io::Result<()>;
}

impl QueueSwitch for OwnedFd {
    fn set_attached(&self, attached: bool) -> io::Result<()> {
        set_queue_attached(self.as_raw_fd(), attached)
    }
}

impl<T: QueueSwitch> QueueSwitch for std::sync::Arc<T> {
    fn set_attached(&self, attached: bool) -> io::Result<()> {
        (**self).set_attached(attached)
    }
}

/// Whether pair `pair`'s TAP queue should be attached, given whether the driver enabled its
/// RX and TX rings. Either ring is enough: a TX ring needs the queue to write to, an RX
/// ring to be steered frames.
pub fn wanted(pair: usize, rx_enabled: bool, tx_enabled: bool) -> bool {
    pair == 0 || rx_enabled || tx_enabled
}

/// What [`QueueLink::reconcile`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the queue already was as wanted.
    None,
    /// The queue was attached.
    Attached,
    /// The queue was detached.
    Detached,
}

/// `TUNSETQUEUE` failed.
#[derive(Debug, thiserror::Error)]
#[error("{} the TAP queue of pair {pair} (TUNSETQUEUE): {source}", if *.attach { "attaching" } else { "detaching" })]
pub struct LinkError {
    /// The queue pair.
    pub pair: usize,
    /// Attaching (or detaching).
    pub attach: bool,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// One queue pair's TAP queue and whether it is attached.
#[derive(Debug)]
pub struct QueueLink<S> {
    pair: usize,
    switch: S,
    /// Attached; written only by [`QueueLink::reconcile`], read by whoever uses the queue.
    attached: RwLock<bool>,
    /// A detach failed and was reported: don't retry (and report) on every timer tick.
    detach_failed: AtomicBool,
}

impl<S: QueueSwitch> QueueLink<S> {
    /// The link of pair `pair`, whose queue is attached (as `TUNSETIFF` leaves it).
    pub fn new(pair: usize, switch: S) -> Self {
        QueueLink {
            pair,
            switch,
            attached: RwLock::new(true),
            detach_failed: AtomicBool::new(false),
        }
    }

    /// The queue pair.
    pub fn pair(&self) -> usize {
        self.pair
    }

    /// The switch (the TAP descriptor).
    pub fn switch(&self) -> &S {
        &self.switch
    }

    /// Whether the queue is attached now.
    pub fn is_attached(&self) -> bool {
        *self.read()
    }

    /// Holds the attachment as it is (`true`: attached) while the queue is used. Don't call
    /// [`QueueLink::reconcile`] while holding it: that waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, bool> {
        self.attached.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the queue attached, as [`QueueLink::new`] assumes it is: a process that had
    /// the same descriptor before us (a restarted backend's predecessor, which dies with
    /// idle pairs detached) may have left it detached, and then a detach would fail and an
    /// attach never be tried. Returns whether it had been detached. EINVAL means it already
    /// was attached (or the TAP has a single queue).
    pub fn reattach(&self) -> Result<bool, LinkError> {
        let mut attached = self
            .attached
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match self.switch.set_attached(true) {
            Ok(()) => {
                *attached = true;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                *attached = true;
                Ok(false)
            }
            Err(source) => Err(LinkError {
                pair: self.pair,
                attach: true,
                source,
            }),
        }
    }

    /// Attaches or detaches the queue as [`wanted`] says for these ring states. On a failed
    /// attach the queue stays detached; on a failed detach it stays attached, and later
    /// detaches aren't tried until the queue is wanted again (the error is returned once).
    pub fn reconcile(&self, rx_enabled: bool, tx_enabled: bool) -> Result<Change, LinkError> {
        let want = wanted(self.pair, rx_enabled, tx_enabled);
        if *self.read() == want {
            if want {
                self.detach_failed.store(false, Ordering::Relaxed);
            }
            return Ok(Change::None);
        }
        if !want && self.detach_failed.load(Ordering::Relaxed) {
            return Ok(Change::None);
        }
        let mut attached = self
            .attached
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *attached == want {
            return Ok(Change::None);
        }
        match self.switch.set_attached(want) {
            Ok(()) => {
                *attached = want;
                self.detach_failed.store(false, Ordering::Relaxed);
                Ok(if want {
                    Change::Attached
                } else {
                    Change::Detached
                })
            }
            Err(source) => {
                if !want {
                    self.detach_failed.store(true, Ordering::Relaxed);
                }
                Err(LinkError {
                    pair: self.pair,
                    attach: want,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the calls; fails those listed in `fail` (by call number), with EINVAL or
    /// `fail_with`.
    #[derive(Default)]
    struct Mock {
        calls: Mutex<Vec<bool>>,
        fail: Vec<usize>,
        fail_with: Option<i32>,
    }

    impl QueueSwitch for Mock {
        fn set_attached(&self, attached: bool) -> io::Result<()> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(attached);
            if self.fail.contains(&(calls.len() - 1)) {
                return Err(io::Error::from_raw_os_error(
                    self.fail_with.unwrap_or(libc::EINVAL),
                ));
            }
            Ok(())
        }
    }

    fn calls(link: &QueueLink<Mock>) -> Vec<bool> {
        link.switch().calls.lock().unwrap().clone()
    }

    #[test]
    fn pair_zero_is_always_wanted_others_with_either_ring() {
        assert!(wanted(0, false, false));
        assert!(!wanted(1, false, false));
        assert!(wanted(1, true, false));
        assert!(wanted(3, false, true));
        assert!(wanted(3, true, true));
    }

    #[test]
    fn a_queue_left_detached_is_attached_again() {
        // The kernel says EINVAL to attaching an attached queue.
        let link = QueueLink::new(
            1,
            Mock {
                fail: vec![0],
                ..Mock::default()
            },
        );
        assert!(!link.reattach().unwrap(), "already attached");
        assert!(link.reattach().unwrap(), "was detached");
        assert!(link.is_attached());
        assert_eq!(link.reconcile(false, false).unwrap(), Change::Detached);
        assert_eq!(calls(&link), [true, true, false]);
        let broken = QueueLink::new(
            2,
            Mock {
                fail: vec![0],
                fail_with: Some(libc::EPERM),
                ..Mock::default()
            },
        );
        assert!(broken.reattach().is_err(), "another error is one");
    }

    #[test]
    fn pair_zero_is_never_detached() {
        let link = QueueLink::new(0, Mock::default());
        assert_eq!(link.reconcile(false, false).unwrap(), Change::None);
        assert!(link.is_attached());
        assert!(calls(&link).is_empty());
    }

    #[test]
    fn disabled_pair_detaches_once_and_reattaches_when_enabled() {
        let link = QueueLink::new(1, Mock::default());
        assert_eq!(link.reconcile(false, false).unwrap(), Change::Detached);
        assert!(!link.is_attached());
        // The timer asks again and again: no more ioctls.
        assert_eq!(link.reconcile(false, false).unwrap(), Change::None);
        // Only TX enabled: attached (the TX ring writes through it).
        assert_eq!(link.reconcile(false, true).unwrap(), Change::Attached);
        assert_eq!(link.reconcile(true, true).unwrap(), Change::None);
        assert_eq!(link.reconcile(false, false).unwrap(), Change::Detached);
        assert_eq!(calls(&link), [false, true, false]);
    }

    #[test]
    fn a_failed_attach_leaves_it_detached_and_is_retried() {
        let link = QueueLink::new(
            2,
            Mock {
                fail: vec![1],
                ..Mock::default()
            },
        );
        link.reconcile(false, false).unwrap();
        let err = link.reconcile(true, false).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("attaching the TAP queue of pair 2 (TUNSETQUEUE): "));
        assert!(!link.is_attached(), "an attach that failed");
        assert_eq!(link.reconcile(true, false).unwrap(), Change::Attached);
        assert_eq!(calls(&link), [false, true, true]);
    }

    #[test]
    fn a_failed_detach_is_reported_once_until_wanted_again() {
        let link = QueueLink::new(
            1,
            Mock {
                fail: vec![0],
                ..Mock::default()
            },
        );
        let err = link.reconcile(false, false).unwrap_err();
        assert_eq!(err.pair, 1);
        assert!(!err.attach);
        assert!(link.is_attached());
        assert_eq!(link.reconcile(false, false).unwrap(), Change::None);
        assert_eq!(calls(&link), [false]);
        // Enabled again (still attached: nothing to do), then disabled: tried afresh.
        assert_eq!(link.reconcile(true, true).unwrap(), Change::None);
        assert_eq!(link.reconcile(false, false).unwrap(), Change::Detached);
        assert_eq!(calls(&link), [false, false]);
    }

    #[test]
    fn a_detach_waits_for_the_queue_user() {
        let link = std::sync::Arc::new(QueueLink::new(1, Mock::default()));
        let guard = link.read();
        let l = std::sync::Arc::clone(&link);
        let t = std::thread::spawn(move || l.reconcile(false, false).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(calls(&link).is_empty(), "detached under a reader");
        drop(guard);
        assert_eq!(t.join().unwrap(), Change::Detached);
        assert_eq!(calls(&link), [false]);
    }
}
