//! The `bulkhead` package's library: the jailer, which the launcher (`bulkhead run`) and
//! the standalone `bulkhead-jailer` use to start confined processes.

/// Starting a program in namespaces, a cgroup, an empty root, with only the fds it is given.
pub mod jail;

/// The raw system calls nix cannot make (a table of reasons), outside the jail's clone child.
pub mod sys;
