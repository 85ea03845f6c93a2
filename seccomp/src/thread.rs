//! Starting and confining threads: every bulkhead thread is named and gets its role's
//! filter before it touches guest-controlled data.
//!
//! - [`spawn_confined`] starts a thread that names itself, installs its filter, then runs
//!   its work; it returns only once the filter is in place (or failed to be, in which
//!   case the work never runs and the error is returned).
//! - [`confine_current_thread`] is for threads a library starts (vhost-user-backend's
//!   queue threads): called at the thread's first event, it names the thread and installs
//!   the filter once.

use std::cell::Cell;
use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::install::{compile, Error, Filter};
use crate::mode::SeccompMode;
use crate::role::Role;

/// Why a confined thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The filter could not be built or installed.
    #[error("thread {name}: {source}")]
    Filter {
        /// The thread's name.
        name: String,
        /// What failed.
        #[source]
        source: Error,
    },
    /// The thread could not be created.
    #[error("starting thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<SpawnError> for io::Error {
    fn from(e: SpawnError) -> io::Error {
        io::Error::other(e)
    }
}

/// Starts thread `name` (cut to 15 bytes by the kernel) under `role`'s filter in `mode`,
/// running `f` once the filter is installed.
pub fn spawn_confined<F, T>(
    name: &str,
    role: Role,
    mode: SeccompMode,
    f: F,
) -> Result<JoinHandle<Option<T>>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let filter = compile(role, mode).map_err(|source| SpawnError::Filter {
        name: name.to_owned(),
        source,
    })?;
    let (ready, installed) = mpsc::sync_channel::<Result<(), Error>>(1);
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = filter.as_ref().map_or(Ok(()), |f| f.apply());
            CONFINED.with(|c| c.set(true));
            let ok = result.is_ok();
            let _ = ready.send(result);
            ok.then(f)
        })
        .map_err(|source| SpawnError::Spawn {
            name: name.to_owned(),
            source,
        })?;
    match installed.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(source)) => {
            let _ = handle.join();
            Err(SpawnError::Filter {
                name: name.to_owned(),
                source,
            })
        }
        Err(_) => Err(SpawnError::Spawn {
            name: name.to_owned(),
            source: io::Error::other("the thread ended before installing its filter"),
        }),
    }
}

thread_local! {
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// Names the calling thread `name()` and installs `role`'s filter in `mode`, the first
/// time it is called on this thread; later calls do nothing. An error leaves the thread
/// unconfined: the caller must not go on to guest-controlled data.
pub fn confine_current_thread(
    name: impl FnOnce() -> String,
    role: Role,
    mode: SeccompMode,
) -> Result<(), Error> {
    if CONFINED.with(|c| c.get()) {
        return Ok(());
    }
    // Compiled before the thread counts as confined: an error leaves it unconfined.
    let filter = compile(role, mode)?;
    confine_current_thread_compiled(name, role, filter.as_ref())
}

/// [`confine_current_thread`] with `role`'s filter compiled beforehand by [`compile`] in
/// `mode` (`filter`: `None` when `mode` is `Off`), off the thread's way: a vCPU thread's
/// is compiled while the vmm waits for its peers, so that the guest starts sooner.
pub fn confine_current_thread_compiled(
    name: impl FnOnce() -> String,
    role: Role,
    filter: Option<&Filter>,
) -> Result<(), Error> {
    if CONFINED.with(|c| c.replace(true)) {
        return Ok(());
    }
    set_name(name());
    let self_test = self_test_wanted(role);
    if let Some(filter) = filter {
        debug_assert_eq!(filter.role(), role);
        if let Err(e) = filter.apply() {
            CONFINED.with(|c| c.set(false));
            return Err(e);
        }
    }
    if self_test {
        call_outside_every_list(role);
    }
    Ok(())
}

/// Test only (see [`SELF_TEST_ENV`]): calls `ptrace`, which no allowlist has.
pub(crate) fn call_outside_every_list(role: Role) {
    log::warn!("{SELF_TEST_ENV}={role}: calling ptrace");
    // The filter stops it (that is the test); unconfined, it fails or succeeds harmlessly.
    let _ = nix::sys::ptrace::traceme();
}

/// Test only: when this environment variable names a role (`vcpu`, `net-worker`, ...),
/// each thread that confines itself to that role through [`confine_current_thread`] then
/// calls `ptrace`, in no allowlist, to show the filter stops it (the backends also take
/// `main` and `worker`, see their `--seccomp-selftest`).
pub const SELF_TEST_ENV: &str = "BULKHEAD_SECCOMP_SELFTEST";

pub(crate) fn self_test_wanted(role: Role) -> bool {
    std::env::var_os(SELF_TEST_ENV).is_some_and(|v| v == role.name())
}

/// Sets the calling thread's name (the kernel keeps 15 bytes; a NUL ends it).
fn set_name(mut name: String) {
    if let Some(nul) = name.find('\0') {
        name.truncate(nul);
    }
    while name.len() > 15 {
        name.pop();
    }
    if let Ok(name) = std::ffi::CString::new(name) {
        // Naming is cosmetic (logs, the SIGSYS report): a failure changes nothing else.
        let _ = nix::sys::prctl::set_name(&name);
    }
}
