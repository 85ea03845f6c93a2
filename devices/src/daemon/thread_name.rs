//! The first-event hook of vhost-user-backend's worker threads: it spawns them all as
//! `vring_worker`, before any guest memory exists; at its first event each one names
//! itself per queue (`blk-q0`, `net-q1`, `console-q`, which makes `top -H`, logs and
//! seccomp reports readable) and installs its role's seccomp filter, before it touches the
//! queue. The mode is the process's (`--seccomp`, set by `backend_main`; off when a backend
//! is embedded, as in unit tests).
//!
//! The hidden `--seccomp-selftest` makes a thread call `ptrace` (in no allowlist) right
//! after confining itself, to prove the filter stops it; `worker-narrowed` makes a queue
//! thread call what only its process's broader role allows, to prove it narrowed.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::confine_current_thread;
use bulkhead_seccomp::Role;

/// Which thread `--seccomp-selftest` makes misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SelfTest {
    /// The main thread, once it has installed the vhost-user filter.
    Main,
    /// Each queue thread, at its first event.
    Worker,
    /// Each queue thread, at its first event, calls `accept4`: allowed to the process's
    /// role (the vhost-user rules are in it), not to a queue thread's, so only a thread
    /// that did narrow to its role dies by SIGSYS.
    WorkerNarrowed,
}

static SELF_TEST: AtomicU8 = AtomicU8::new(0);

/// Arms `--seccomp-selftest` for this process.
pub fn arm_self_test(which: Option<SelfTest>) {
    let v = match which {
        None => 0,
        Some(SelfTest::Main) => 1,
        Some(SelfTest::Worker) => 2,
        Some(SelfTest::WorkerNarrowed) => 3,
    };
    SELF_TEST.store(v, Ordering::SeqCst);
}

/// If `--seccomp-selftest` is armed for `which`, calls `ptrace`, which no allowlist has
/// (or, armed `worker-narrowed` on a queue thread, `accept4`): under an enforcing filter
/// the process dies by SIGSYS here.
pub fn self_test(which: SelfTest) {
    let armed = match SELF_TEST.load(Ordering::SeqCst) {
        1 => SelfTest::Main,
        2 => SelfTest::Worker,
        3 => SelfTest::WorkerNarrowed,
        _ => return,
    };
    if armed == SelfTest::WorkerNarrowed && which == SelfTest::Worker {
        log::warn!("--seccomp-selftest: calling accept4");
        crate::sys::provoke_accept4();
    } else if armed == which {
        log::warn!("--seccomp-selftest: calling ptrace");
        crate::sys::provoke_ptrace();
    }
}

/// Names the calling worker thread `name()` and installs `role`'s filter, the first time
/// it is called on that thread. An error means the thread is not confined: the caller
/// must not serve the queue (returning the error from `handle_event` ends the thread).
pub fn confine_worker_thread(name: impl FnOnce() -> String, role: Role) -> io::Result<()> {
    let mut named = None;
    confine_current_thread(
        || {
            let n = name();
            named = Some(n.clone());
            n
        },
        role,
        process_mode(),
    )
    .map_err(|e| {
        log::error!("{}: {e}", named.as_deref().unwrap_or("queue thread"));
        io::Error::other(e)
    })?;
    if named.is_some() {
        self_test(SelfTest::Worker);
    }
    Ok(())
}
