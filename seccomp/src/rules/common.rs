//! Rules every thread of every role needs: memory, locks, leaving a thread, and the
//! SIGSYS report itself; and the calls a thread makes to start another one
//! ([`THREAD_START`], for the roles that start threads).

use libc::*;

use super::{Arg, Rule};

const NO_EXEC: &[Arg] = &[Arg::Masked(2, PROT_EXEC as u64, 0)];

/// What every role allows.
pub const RULES: &[Rule] = &[
    Rule::when(
        SYS_mmap,
        NO_EXEC,
        "malloc arenas, buffers, thread stacks; never executable",
    ),
    Rule::when(
        SYS_mprotect,
        NO_EXEC,
        "malloc arenas grow, stack guard pages; never executable",
    ),
    Rule::any(SYS_munmap, "freeing what mmap gave"),
    Rule::when(
        SYS_madvise,
        &[Arg::Eq32(2, MADV_DONTNEED as u32)],
        "glibc returns a finished thread's stack and malloc trims",
    ),
    Rule::any(
        SYS_futex,
        "mutexes, condition variables, thread joins, channels",
    ),
    Rule::any(
        SYS_write,
        "log lines on stderr, eventfd notifications, the SIGSYS report",
    ),
    Rule::any(
        SYS_rt_sigprocmask,
        "glibc masks signals while a thread starts or exits",
    ),
    Rule::any(
        SYS_sigaltstack,
        "Rust's stack-overflow guard removes its stack at thread exit",
    ),
    Rule::any(
        SYS_rt_sigreturn,
        "returning from a signal handler (vCPU kick)",
    ),
    Rule::any(
        SYS_restart_syscall,
        "a thread stopped (SIGSTOP) in a timed wait resumes it through the kernel's restart",
    ),
    Rule::any(
        SYS_getrandom,
        "std's HashMap seeds its hasher once per thread",
    ),
    Rule::any(SYS_exit, "a thread returns"),
    Rule::any(
        SYS_getpid,
        "abort() and the SIGSYS report signal their own process",
    ),
    Rule::any(
        SYS_gettid,
        "the SIGSYS report signals its own thread; glibc's thread start",
    ),
    Rule::when(
        SYS_prctl,
        &[Arg::Eq32(0, PR_GET_NAME as u32)],
        "the SIGSYS report names the thread",
    ),
    Rule::when(
        SYS_tgkill,
        &[Arg::Eq32(2, SIGSYS as u32)],
        "the SIGSYS report re-raises the signal so the process dies by it",
    ),
    Rule::when(
        SYS_tgkill,
        &[Arg::Eq32(2, SIGABRT as u32)],
        "abort() on a panic (release builds) ends the process with SIGABRT",
    ),
    Rule::when(
        SYS_rt_sigaction,
        &[Arg::Eq32(0, SIGABRT as u32), Arg::Ne(0, SIGSYS as u64)],
        "abort() resets SIGABRT when raising it did not end the process (a jailed process \
         is its PID namespace's init, whose own default-action signals the kernel drops); \
         its last resort then faults, which does",
    ),
];

/// What a thread needs to start another (glibc's clone fallback, the new thread's own
/// start-up in glibc and std).
pub const THREAD_START: &[Rule] = &[
    Rule::when(
        SYS_clone,
        &[Arg::Masked(0, CLONE_THREAD as u64, CLONE_THREAD as u64)],
        "starting threads; never a new process",
    ),
    Rule::any(
        SYS_set_robust_list,
        "a new thread registers its robust futex list",
    ),
    Rule::any(
        SYS_rseq,
        "a new thread registers its restartable sequence area",
    ),
    Rule::any(
        SYS_sched_getaffinity,
        "std reads a new thread's stack bounds through glibc",
    ),
    Rule::when(
        SYS_prctl,
        &[Arg::Eq32(0, PR_SET_NAME as u32)],
        "a new thread names itself",
    ),
];
