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

/// The last steps of a jail as one call, `finish_jail`, and the flags that ask for it.
pub mod jail;
/// An empty read-only root (pivot_root into a tmpfs).
pub mod root;
/// An unprivileged identity: uid/gid, no capabilities, no_new_privs.
pub mod identity;
/// Landlock denying all filesystem access.
pub mod landlock;
