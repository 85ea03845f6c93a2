//! Busy polling of an available ring: before a queue that ran dry goes back to waiting for
//! a kick, watch the driver's available index for a few microseconds. A driver that is
//! sending (or handing back RX buffers) usually adds the next entry within that time;
//! seeing it here saves the driver a notification (a VM exit) and us a sleep and wake-up,
//! as `bulkhead-blk --poll-us` and QEMU's iothread polling do.
//!
//! The poll time adapts, so a quiet queue doesn't burn a CPU in every round: it doubles
//! (up to `--poll-us`) each time a poll finds work, and halves each time one doesn't
//! (down to [`MIN_POLL`], below which one poll costs about what it could save).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};

use super::GuestRam;

/// Default `--poll-us`.
pub const DEFAULT_POLL_US: u32 = 32;
/// Most `--poll-us` accepts (10 ms: polling longer than that is just burning a CPU).
pub const MAX_POLL_US: u32 = 10_000;
/// The shortest poll the adaptation goes down to.
pub const MIN_POLL: Duration = Duration::from_micros(2);

/// One queue's poll time, between [`MIN_POLL`] and the configured maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    max: Duration,
    now: Duration,
}

impl BusyPoll {
    /// Polling for at most `max` (zero: never poll).
    pub fn new(max: Duration) -> Self {
        BusyPoll { max, now: max }
    }

    /// The configured maximum.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// What the next poll may take.
    #[cfg(test)]
    fn current(&self) -> Duration {
        self.now
    }

    /// Watches `queue`'s available index until it differs from `seen` (true) or the poll
    /// time is over (false; also when the index can't be read). Adapts the poll time.
    pub fn wait_for_avail(&mut self, queue: &Queue, mem: &GuestRam, seen: u16) -> bool {
        self.wait_until(|| match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => Some(idx.0 != seen),
            Err(_) => None,
        })
    }

    /// Calls `moved` until it says `Some(true)` (then true), `None` (then false, with no
    /// adaptation), or the poll time is over (false).
    fn wait_until(&mut self, mut moved: impl FnMut() -> Option<bool>) -> bool {
        if self.max.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            // The clock costs more than a look at the index: look a few times per reading.
            for _ in 0..16 {
                match moved() {
                    Some(true) => {
                        self.now = (self.now * 2).min(self.max);
                        return true;
                    }
                    Some(false) => std::hint::spin_loop(),
                    None => return false,
                }
            }
            if start.elapsed() >= self.now {
                self.now = (self.now / 2).max(MIN_POLL.min(self.max));
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn zero_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        let mut calls = 0;
        assert!(!p.wait_until(|| {
            calls += 1;
            Some(true)
        }));
        assert_eq!(calls, 0);
    }

    #[test]
    fn idle_polls_halve_down_to_the_minimum_and_work_doubles_up_to_the_maximum() {
        let max = Duration::from_micros(32);
        let mut p = BusyPoll::new(max);
        assert!(!p.wait_until(|| Some(false)));
        assert_eq!(p.current(), Duration::from_micros(16));
        for _ in 0..10 {
            p.wait_until(|| Some(false));
        }
        assert_eq!(p.current(), MIN_POLL);
        assert!(p.wait_until(|| Some(true)));
        assert_eq!(p.current(), Duration::from_micros(4));
        for _ in 0..10 {
            p.wait_until(|| Some(true));
        }
        assert_eq!(p.current(), max);
    }

    #[test]
    fn an_idle_poll_lasts_about_the_poll_time() {
        let mut p = BusyPoll::new(Duration::from_millis(5));
        let start = Instant::now();
        assert!(!p.wait_until(|| Some(false)));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(5), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn sees_the_driver_add_an_entry() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let queue: Queue = vq.create_queue().unwrap();
        let mut p = BusyPoll::new(Duration::from_micros(200));
        assert!(!p.wait_for_avail(&queue, &mem, 0), "nothing added yet");
        vq.avail().idx().store(1);
        assert!(p.wait_for_avail(&queue, &mem, 0));
    }
}
