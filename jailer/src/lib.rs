//! The `bulkhead` package's library: the jailer, which the launcher (`bulkhead run`) and
//! the standalone `bulkhead-jailer` use to start confined processes.

/// Starting a program in namespaces, a cgroup, an empty root, with only the fds it is given.
pub mod jail;

/// Every raw system call of the package (a table of reasons), the jail's clone child included.
pub mod sys;
