//! Control messages between the launcher and the processes it starts: filled in by the confinement issue.
