//! The queue-notify ioeventfds of a function, kept at the addresses its BAR0 decodes now:
//! when the guest moves BAR0 or turns memory decoding off, the old registrations go before
//! new ones are made. A registration KVM refuses (another function's BAR over this one, so
//! the same address twice) is logged and skipped; that queue's notifications then reach
//! the vmm, which writes the kick eventfd itself, so the device still works.

use std::sync::Arc;

use bulkhead_ratelimit::{debug_limited, warn_limited};
use vmm_sys_util::eventfd::EventFd;

use super::layout::{NOTIFY, NOTIFY_MULTIPLIER};
use crate::kvm::irq_routing::InterruptHost;

/// The kick eventfds of a function's backend-served queues and where they are registered.
pub struct Notifiers {
    name: String,
    host: Arc<dyn InterruptHost>,
    kicks: Vec<EventFd>,
    /// The BAR0 address the registrations are for.
    base: Option<u64>,
    /// The address each kick is registered at.
    registered: Vec<Option<u64>>,
}

impl Notifiers {
    /// `kicks[q]` is queue `q`'s kick fd; none registered yet.
    pub fn new(name: &str, host: Arc<dyn InterruptHost>, kicks: Vec<EventFd>) -> Notifiers {
        let n = kicks.len();
        Notifiers {
            name: name.to_owned(),
            host,
            kicks,
            base: None,
            registered: vec![None; n],
        }
    }

    /// Where queue `q` is notified in a BAR0 at `base`.
    pub fn address(base: u64, q: usize) -> Option<u64> {
        let off = NOTIFY.checked_add((q as u64).checked_mul(u64::from(NOTIFY_MULTIPLIER))?)?;
        base.checked_add(off)
    }

    /// BAR0 now decodes at `base` (`None`: not at all).
    pub fn follow(&mut self, base: Option<u64>) {
        if base == self.base {
            return;
        }
        for (kick, at) in self.kicks.iter().zip(&mut self.registered) {
            if let Some(addr) = at.take() {
                if let Err(e) = self.host.ioeventfd(kick, addr, false) {
                    warn_limited!(
                        "{}: removing the notify ioeventfd at {addr:#x}: {e}",
                        self.name
                    );
                }
            }
        }
        self.base = base;
        let Some(base) = base else { return };
        for (q, (kick, at)) in self.kicks.iter().zip(&mut self.registered).enumerate() {
            let Some(addr) = Self::address(base, q) else {
                continue;
            };
            match self.host.ioeventfd(kick, addr, true) {
                Ok(()) => *at = Some(addr),
                Err(e) => warn_limited!(
                    "{}: queue {q}'s notify ioeventfd at {addr:#x}: {e}; served by the vmm",
                    self.name
                ),
            }
        }
    }

    /// A notification of queue `q` reached the vmm; true if it was a backend's queue (now
    /// kicked), false if the vmm serves that queue itself.
    pub fn kick(&self, q: usize) -> bool {
        let Some(kick) = self.kicks.get(q) else {
            return false;
        };
        if let Err(e) = kick.write(1) {
            debug_limited!("{}: kicking queue {q}: {e}", self.name);
        }
        true
    }

    /// How many addresses are registered (for tests and the log).
    pub fn registered(&self) -> usize {
        self.registered.iter().flatten().count()
    }
}

impl Drop for Notifiers {
    fn drop(&mut self) {
        self.follow(None);
    }
}
