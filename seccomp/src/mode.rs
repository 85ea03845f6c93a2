//! How strictly filters are applied: `--seccomp enforce|log|off`.
//!
//! The mode a process runs with is also kept process-wide ([`set_process_mode`]), for
//! threads that a library starts and that confine themselves at their first event
//! (vhost-user-backend's queue threads); it starts as `Off`, so code embedding a backend
//! (unit tests) stays unconfined unless it asks otherwise.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// What a thread's filter does with a call outside its allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Report the call on stderr and kill the process with SIGSYS.
    #[default]
    Enforce,
    /// Allow the call and have the kernel log it (audit/dmesg): for finding missing rules.
    Log,
    /// No filters.
    Off,
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
    let v = match mode {
        SeccompMode::Enforce => 0,
        SeccompMode::Log => 1,
        SeccompMode::Off => 2,
    };
    PROCESS_MODE.store(v, Ordering::SeqCst);
}

/// The mode set by [`set_process_mode`] (`Off` until then).
pub fn process_mode() -> SeccompMode {
    match PROCESS_MODE.load(Ordering::SeqCst) {
        0 => SeccompMode::Enforce,
        1 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}
