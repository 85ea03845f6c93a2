//! What a bulkhead process applies to itself once its resources are open and before it
//! touches guest-controlled data:
//! - seccomp filters, one allowlist per role (vmm main thread, vCPU threads, block, net and
//!   console workers, the vhost-user socket handling every backend shares), installed per
//!   thread by one helper that also names the thread;
//! - landlock, denying all filesystem access (disks, TAPs and sockets arrive as fds);
//! - the last steps of the jail: an empty read-only root and an unprivileged identity.
//!
//! The outside-in steps (namespaces, cgroups, rlimits, closing fds, clearing the
//! environment) are the jailer's, in `jailer/`.

/// An unprivileged identity: uid/gid, no capabilities, no_new_privs.
pub mod identity;
/// The last steps of a jail as one call, `finish_jail`, and the flags that ask for it.
pub mod jail;
/// Landlock denying all filesystem access.
pub mod landlock;
/// An empty read-only root (pivot_root into a tmpfs).
pub mod root;

/// Compiling an allowlist to BPF, installing it, and the SIGSYS report handler.
pub mod install;
#[cfg(test)]
mod install_tests;
/// `--seccomp enforce|log|off`, and the process-wide mode for self-confining threads.
pub mod mode;
/// x86_64 system call names by number.
pub mod names;
/// The SIGSYS report line and its parser (for the launcher).
pub mod report;
/// Which role a thread has (vmm main, vCPU, block/net/console worker, vhost-user).
pub mod role;
/// Each role's allowlist as Rust data, with a reason per rule.
pub mod rules;
/// Every raw libc call of the crate, one submodule per reason (pre-exec, signal handler).
mod sys;
/// Starting named, confined threads; confining a library's thread at its first event.
pub mod thread;

pub use install::{compile, install, Filter};
pub use mode::SeccompMode;
pub use role::Role;
