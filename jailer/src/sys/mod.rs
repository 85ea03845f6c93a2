//! Every raw system call of the `bulkhead` package, in one place, each with the reason it
//! is not made through nix. The rest of the package calls the safe functions here (or an
//! `unsafe fn` whose SAFETY contract says what the caller must hold).
//!
//! | Module | Calls | Why not nix |
//! |---|---|---|
//! | [`jail_child`] | `clone3`, and in the jail's child until exec: `sigprocmask`, `signal(SIGPIPE)`, `prctl(PR_SET_PDEATHSIG)`, `write`, `read`, `close`, `setns`, `mount(MS_PRIVATE)`, `sethostname`, `fcntl(F_DUPFD_CLOEXEC)`, `dup2`, `close_range(CLOSE_RANGE_CLOEXEC)`, `setrlimit`, `execve`, `execveat`, `_exit` | between `clone3` and exec nothing may allocate or take a lock (the parent is multi-threaded); `clone3`, `execveat` and `close_range` flags have no nix wrapper; the fd numbers are owned by no Rust object in the child |
//! | [`pidfd`] | `pidfd_send_signal`, `waitid(P_PIDFD)` | no `pidfd_send_signal` in nix 0.32; nix's `waitid` turns a real-time signal (the vmm's kick) into an error where the exit status must be reported |
//! | [`launcher`] | `sigtimedwait` | nix has `sigwait` only, with no timeout |
//! | [`launcher`] | `prlimit` on another process | nix has `setrlimit` (own process) only |
//! | [`launcher`] | `pidfd_open` | no wrapper in nix 0.32 |
//! | [`launcher`] | `sched_setscheduler(SCHED_IDLE)` | nix's `sched` has affinity only |
//! | [`launcher`] | `seccomp(SECCOMP_GET_ACTION_AVAIL)` | no wrapper in nix |
//! | [`launcher`] | `setgroups(0, NULL)` as a system call | glibc's (and so nix's) applies it to every thread; `open_as` changes only the calling thread |
//! | [`plain_child`] | `clone(CLONE_VM \| CLONE_VFORK \| CLONE_PIDFD)`, and in the plain child until exec: `sigaction` (handlers back to default), `fcntl(F_DUPFD_CLOEXEC)`, `dup2` onto fixed numbers, `setsid`, `PR_SET_PDEATHSIG`, `getppid`, `sigprocmask`, `signal(SIGPIPE)`, `execve`, `_exit` | nix's `clone` takes a boxed closure and has no pidfd out-pointer; the child shares the launcher's memory, so it may not allocate, and its fd numbers are owned by no Rust object in it (nix's `dup2` wants an `OwnedFd` target that it would close on drop) |
//! | [`files`] | `flock` | nix 0.32 deprecates its `flock` for an owning `Flock`, which would change who holds the lock |
//! | [`files`] | `ioctl` with a `struct ifreq` (interface address, netmask, flags) | one generic call for several request numbers and layouts, kept as an `unsafe fn` whose caller names the layout |
//!
//! Not here: nix's own `ioctl_*!` wrappers (`tap.rs`, `check/resources.rs`), `sigaction`
//! through nix (`stop_signals.rs`), and `Command::pre_exec` closures that call only nix
//! (`firecracker/launcher.rs`, `fc_jailer/process.rs`, `bench/density/fleet.rs`): they
//! make no raw libc call.

pub mod files;
pub(crate) mod jail_child;
pub mod launcher;
pub mod pidfd;
pub mod plain_child;

pub use jail_child::exec_pointers;
pub use launcher::{
    drop_groups_this_thread, pidfd_open, sched_idle, seccomp_action_available, set_file_size_limit,
    sigtimedwait,
};
pub use plain_child::{detach_and_tie_to_parent, place_fds, MAX_PLACED_FDS};
