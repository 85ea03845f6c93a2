//! The jail's last steps for a backend process (`bulkhead_seccomp::jail::finish_jail`):
//! an empty root and an unprivileged identity when a jailer started it, landlock unless
//! `--landlock off`. They must run while the process has a single thread, so [`serve`]
//! applies them once the resources and the frontend's socket are open and before any thread
//! starts (the signal watcher included).
//!
//! [`serve`]: super::serve

use std::sync::OnceLock;

use bulkhead_seccomp::jail::{finish_jail, JailArgs};
use bulkhead_seccomp::SeccompMode;

use super::thread_name::SelfTest;
use super::{DaemonError, Termination};

/// What a launcher tells every backend (`#[command(flatten)]` them): confinement, and
/// where to report.
#[derive(Clone, Debug, clap::Args)]
pub struct LauncherArgs {
    /// An inherited socket to the launcher: the process says Ready once confined and
    /// serving, Error if it cannot start, Exited at the end (`bulkhead-protocol`).
    #[arg(long, value_name = "FD", hide_short_help = true)]
    pub control_fd: Option<std::os::fd::RawFd>,

    /// Seccomp filters on every thread: enforce (a call outside a thread's allowlist is
    /// reported on stderr and kills the process with SIGSYS), log (allowed, logged by the
    /// kernel: for debugging), or off.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,

    /// The jail's last steps, once the resources are open: `--jail-uid/--jail-gid` (set by
    /// a jailer) and `--landlock`.
    #[command(flatten)]
    pub jail: JailArgs,

    /// Test only: make the main thread or each queue thread call a system call outside
    /// its allowlist once confined.
    #[arg(long, value_enum, value_name = "THREAD", hide = true)]
    pub seccomp_selftest: Option<SelfTest>,
}

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
