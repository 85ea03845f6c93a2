//! SIGTERM and SIGINT end a daemon cleanly: the signals are blocked in every thread and a
//! dedicated thread `sigwait`s for them, then runs whatever stops the daemon at that moment
//! (shutting the listening socket while waiting for a frontend, shutting the connection
//! once one is served), so the main thread returns and the process exits with status 0.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

use log::info;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

type Action = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    /// Whether signals are blocked for this watcher to wait for.
    watch: bool,
    /// Whether the waiting thread was started.
    watching: AtomicBool,
    signalled: AtomicBool,
    action: Mutex<Option<Action>>,
}

/// The termination watcher.
#[derive(Clone)]
pub struct Termination {
    state: Arc<State>,
}

impl std::fmt::Debug for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Termination")
            .field("signalled", &self.signalled())
            .finish()
    }
}

fn termination_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

impl Termination {
    /// Blocks SIGTERM and SIGINT in the calling thread, so that every thread started from
    /// it afterwards inherits the block (call it before starting any), and starts the thread
    /// that waits for them.
    pub fn install() -> io::Result<Termination> {
        let termination = Termination::block()?;
        termination.watch()?;
        Ok(termination)
    }

    /// Blocks SIGTERM and SIGINT in the calling thread (call it before starting any thread,
    /// so that all inherit the block); [`watch`](Self::watch) starts the thread that waits
    /// for them. Until then the signals stay pending.
    pub fn block() -> io::Result<Termination> {
        let set = termination_set();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        Ok(Termination {
            state: Arc::new(State {
                watch: true,
                ..State::default()
            }),
        })
    }

    /// Starts the thread that waits for the blocked signals (once; nothing for a
    /// [`manual`](Self::manual) watcher).
    pub fn watch(&self) -> io::Result<()> {
        if !self.state.watch || self.state.watching.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let set = termination_set();
        let watcher = self.clone();
        // Confined like the vhost-user thread whose connection it shuts down.
        spawn_confined("signals", Role::VhostUser, process_mode(), move || loop {
            if let Ok(signal) = set.wait() {
                info!("signal {} received: shutting down", signal as i32);
                watcher.trigger();
            }
        })?;
        Ok(())
    }

    /// A watcher with no signal handling, triggered only by [`trigger`](Self::trigger) (for
    /// tests and for embedding a daemon in a process that handles signals itself).
    pub fn manual() -> Termination {
        Termination {
            state: Arc::default(),
        }
    }

    /// Whether termination was asked for.
    pub fn signalled(&self) -> bool {
        self.state.signalled.load(Ordering::SeqCst)
    }

    /// Asks for termination: runs the current action (once).
    pub fn trigger(&self) {
        self.state.signalled.store(true, Ordering::SeqCst);
        let action = self
            .state
            .action
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(action) = action {
            action();
        }
    }

    /// Sets what stops the daemon now, replacing the previous action; runs it at once if
    /// termination was already asked for.
    pub fn on_signal(&self, action: impl FnOnce() + Send + 'static) {
        *self
            .state
            .action
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(action));
        if self.signalled() {
            self.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn action_runs_once_and_late_actions_run_at_once() {
        let t = Termination::manual();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        t.on_signal(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!t.signalled());
        t.trigger();
        t.trigger();
        assert!(t.signalled());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let r = runs.clone();
        t.on_signal(move || {
            r.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 11);
    }
}
