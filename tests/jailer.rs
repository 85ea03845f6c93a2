//! End-to-end tests of the jailer (`bulkhead-jailer` and `bulkhead::jail`), checked from
//! outside the jailed process as a user would: /proc/<pid>/status, ns, root, fd, net/dev.
