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
