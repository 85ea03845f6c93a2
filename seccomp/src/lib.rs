//! Seccomp filters per process role: filled in by the confinement issue.
