//! Pausing the vCPUs: the control side sets the flag and kicks each vCPU thread out of
//! `KVM_RUN`; each thread parks before its next entry until resumed (or stopped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::run_loop::kick_signal;

/// How often threads not yet parked are kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Default)]
struct State {
    paused: bool,
    parked: usize,
}

/// The pause state shared by the vCPU threads and whoever pauses them.
#[derive(Default)]
pub struct Pause {
    state: Mutex<State>,
    changed: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Pause {
    fn state(&self) -> MutexGuard<'_, State> {
        // A vCPU thread that panicked while holding the lock left a consistent state (two
        // plain fields), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a vCPU thread to kick when pausing.
    pub fn register(&self, thread: libc::pthread_t) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
    }

    /// Whether the vCPUs are (being) paused.
    pub fn is_paused(&self) -> bool {
        self.state().paused
    }

    /// vCPU side, before each entry into the guest: blocks while paused, until resumed or
    /// `stop` is set.
    pub fn park_if_paused(&self, stop: &AtomicBool) {
        let mut s = self.state();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !stop.load(Ordering::Acquire) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    /// Pauses every registered vCPU thread; returns whether all parked within `timeout`.
    pub fn pause(&self, timeout: Duration) -> bool {
        self.state().paused = true;
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deadline = Instant::now() + timeout;
        loop {
            if self.state().parked >= threads.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            for t in &threads {
                // A registered vCPU thread lives as long as the VM runs (the threads are
                // joined only after stopping, when nobody pauses any more); the kick
                // signal's handler does nothing. A failed kick is retried next round.
                let _ = crate::sys::signal_thread(*t, kick_signal());
            }
            let s = self.state();
            let _ = self
                .changed
                .wait_timeout(s, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Resumes paused vCPU threads (also wakes them to see a stop).
    pub fn resume(&self) {
        self.state().paused = false;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_parked_thread_waits_until_resumed() {
        let pause = Arc::new(Pause::default());
        let stop = Arc::new(AtomicBool::new(false));
        // No registered threads: pausing succeeds at once.
        assert!(pause.pause(Duration::from_millis(10)));
        let (p, s) = (pause.clone(), stop.clone());
        let t = std::thread::spawn(move || p.park_if_paused(&s));
        while pause.state().parked == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.is_finished());
        pause.resume();
        t.join().unwrap();
        assert_eq!(pause.state().parked, 0);
    }

    #[test]
    fn stop_wakes_a_parked_thread() {
        let pause = Arc::new(Pause::default());
        let stop = Arc::new(AtomicBool::new(false));
        pause.pause(Duration::ZERO);
        let (p, s) = (pause.clone(), stop.clone());
        let t = std::thread::spawn(move || p.park_if_paused(&s));
        while pause.state().parked == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Release);
        pause.changed.notify_all();
        t.join().unwrap();
        assert!(pause.is_paused());
    }

    #[test]
    fn not_paused_returns_at_once() {
        Pause::default().park_if_paused(&AtomicBool::new(false));
    }
}
