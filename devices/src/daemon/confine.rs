//! The jail's last steps for a backend process (`bulkhead_seccomp::jail::finish_jail`):
//! an empty root and an unprivileged identity when a jailer started it, landlock unless
//! `--landlock off`. They must run while the process has a single thread, so [`serve`]
//! applies them once the resources and the frontend's socket are open and before any thread
//! starts (the signal watcher included).
//!
//! [`serve`]: super::serve

use std::sync::OnceLock;

use bulkhead_seccomp::jail::{finish_jail, JailArgs};

use super::{DaemonError, Termination};

static JAIL: OnceLock<JailArgs> = OnceLock::new();

/// Sets this process's jail arguments (once, from its command line). Code embedding a
/// backend without setting them (tests) is not jailed.
pub fn set_jail(args: JailArgs) {
    let _ = JAIL.set(args);
}

/// Finishes the jail if the process has jail arguments, then starts the signal watcher.
pub(crate) fn confine(termination: &Termination) -> Result<(), DaemonError> {
    if let Some(args) = JAIL.get() {
        finish_jail(args).map_err(DaemonError::Jail)?;
    }
    termination.watch().map_err(DaemonError::Signals)
}
