//! Naming vhost-user-backend's worker threads: it spawns them all as `vring_worker`;
//! per-queue names (`blk-q0`, `net-q1`, `console-q`) make `top -H`, logs and seccomp
//! policies readable.

use std::cell::Cell;

thread_local! {
    static NAMED: Cell<bool> = const { Cell::new(false) };
}

/// Names the calling thread `name` the first time it is called on that thread.
pub fn name_worker_thread(name: impl FnOnce() -> String) {
    if NAMED.with(|n| n.replace(true)) {
        return;
    }
    let mut name = name();
    while name.len() > 15 {
        name.pop();
    }
    name.push('\0');
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a pointer
    // that stays valid for the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
