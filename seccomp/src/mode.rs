//! How strictly filters are applied: `--seccomp enforce|log|off`.
//!
//! The mode a process runs with is also kept process-wide ([`set_process_mode`]), for
//! threads that a library starts and that confine themselves at their first event
//! (vhost-user-backend's queue threads); it starts as `Off`, so code embedding a backend
//! (unit tests) stays unconfined unless it asks otherwise. A launcher keeps the mode it
//! passes to the processes it starts separately ([`set_children_mode`], `Enforce` until
//! set), as it does not confine itself.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// What a thread's filter does with a call outside its allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[repr(u8)]
pub enum SeccompMode {
    /// Report the call on stderr and kill the process with SIGSYS.
    #[default]
    Enforce = 0,
    /// Allow the call and have the kernel log it (audit/dmesg): for finding missing rules.
    Log = 1,
    /// No filters.
    Off = 2,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

static PROCESS_MODE: AtomicU8 = AtomicU8::new(2);

/// Sets the mode of this process's self-confining threads.
pub fn set_process_mode(mode: SeccompMode) {
    PROCESS_MODE.store(mode as u8, Ordering::SeqCst);
}

/// The mode set by [`set_process_mode`] (`Off` until then).
pub fn process_mode() -> SeccompMode {
    from_u8(PROCESS_MODE.load(Ordering::SeqCst))
}

fn from_u8(v: u8) -> SeccompMode {
    match v {
        0 => SeccompMode::Enforce,
        1 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

static CHILDREN_MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode a launcher passes (`--seccomp`) to the processes it starts.
pub fn set_children_mode(mode: SeccompMode) {
    CHILDREN_MODE.store(mode as u8, Ordering::SeqCst);
}

/// The mode set by [`set_children_mode`] (`Enforce` until then).
pub fn children_mode() -> SeccompMode {
    from_u8(CHILDREN_MODE.load(Ordering::SeqCst))
}
