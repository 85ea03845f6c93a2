//! The allowlists, as data: a [`Rule`] is a system call, the argument conditions under
//! which it is allowed (none: always), and why the role needs it. A role's list is the
//! rules every thread needs ([`common`]) plus its own; [`for_role`] puts them together.
//!
//! The lists were found by tracing the real processes (`strace -f`) through the
//! end-to-end tests, per thread, from the point where each thread installs its filter.

pub mod common;
pub mod consts;
pub mod vmm;

mod blk;
mod console;
mod narrowing;
mod net;
mod startup;
mod vcpu;
mod vhost_user;
mod vsock;

use std::collections::BTreeSet;

use crate::role::Role;

/// A condition on one argument of a system call (arguments are numbered from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// The argument equals the value (all 64 bits).
    Eq(u8, u64),
    /// The argument's low 32 bits equal the value (ioctl requests, which the kernel reads
    /// as `unsigned int`).
    Eq32(u8, u32),
    /// The argument differs from the value.
    Ne(u8, u64),
    /// `argument & mask == value`.
    Masked(u8, u64, u64),
}

/// One allowlist entry. Several rules for the same call are alternatives.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The call (`libc::SYS_*`).
    pub syscall: i64,
    /// All of these must hold (empty: the call is allowed with any arguments).
    pub args: &'static [Arg],
    /// Why the role needs it.
    pub reason: &'static str,
}

impl Rule {
    /// `syscall` with any arguments.
    pub const fn any(syscall: i64, reason: &'static str) -> Rule {
        Rule {
            syscall,
            args: &[],
            reason,
        }
    }

    /// `syscall` when every condition in `args` holds.
    pub const fn when(syscall: i64, args: &'static [Arg], reason: &'static str) -> Rule {
        Rule {
            syscall,
            args,
            reason,
        }
    }
}

/// A call that is neither run nor fatal: every role answers it with an error (a filter of
/// its own, whose answer wins over the allowlist's).
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// The call.
    pub syscall: i64,
    /// The errno it gets.
    pub errno: i32,
    /// Why this answer, rather than running it or killing the process.
    pub reason: &'static str,
}

/// The calls every role answers with an error.
pub const ANSWERED: &[Answer] = &[
    Answer {
        syscall: libc::SYS_clone3,
        errno: libc::ENOSYS,
        reason: "its flags are in memory where a filter can't read them: glibc then falls \
                 back to clone, whose flags the allowlists check",
    },
    Answer {
        syscall: libc::SYS_openat,
        errno: libc::ENOENT,
        reason: "a confined process works only on descriptors it was handed; glibc still \
                 probes /sys/devices/system/cpu/online when a new thread first needs a \
                 malloc arena, and copes with ENOENT (crosvm answers open the same way)",
    },
];

/// Every rule of `role`: the common ones, then the role's own.
pub fn for_role(role: Role) -> Vec<&'static Rule> {
    let own: &[&'static [Rule]] = match role {
        Role::VmmMain => &[common::THREAD_START, vmm::RULES],
        Role::Vcpu => &[vcpu::RULES],
        Role::BlkWorker => &[blk::RULES],
        Role::NetWorker => &[common::THREAD_START, net::RULES],
        Role::ConsoleWorker => &[console::RULES],
        Role::VhostUser => &[common::THREAD_START, vhost_user::RULES],
        Role::BlkProcess => &[
            common::THREAD_START,
            vhost_user::RULES,
            blk::RULES,
            narrowing::RULES,
            startup::RULES,
        ],
        Role::NetProcess => &[
            common::THREAD_START,
            vhost_user::RULES,
            net::RULES,
            narrowing::RULES,
            startup::RULES,
        ],
        Role::ConsoleMain => &[common::THREAD_START, vhost_user::RULES, console::TERMINAL],
        Role::ConsoleProcess => &[
            common::THREAD_START,
            vhost_user::RULES,
            console::RULES,
            console::TERMINAL,
            narrowing::RULES,
            startup::RULES,
        ],
        Role::VsockWorker => &[vsock::WORKER],
        Role::VsockIo => &[vsock::IO],
        Role::VsockProcess => &[
            common::THREAD_START,
            vhost_user::RULES,
            vsock::WORKER,
            vsock::IO,
            narrowing::RULES,
            startup::RULES,
        ],
    };
    common::RULES
        .iter()
        .chain(own.iter().flat_map(|rules| rules.iter()))
        .collect()
}

/// The distinct system calls `role` allows (with some arguments at least); the
/// [`ANSWERED`] ones are not counted: they never run.
pub fn syscalls(role: Role) -> BTreeSet<i64> {
    for_role(role).iter().map(|r| r.syscall).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_reason_and_a_known_call() {
        for role in Role::ALL {
            for rule in for_role(role) {
                assert!(!rule.reason.is_empty(), "{role}: {rule:?}");
                assert_ne!(
                    crate::names::name(rule.syscall),
                    "unknown",
                    "{role}: {rule:?}"
                );
            }
        }
    }

    #[test]
    fn every_role_survives_a_stop_and_a_signal() {
        // A thread stopped (SIGSTOP) in a timed wait (poll, nanosleep, futex) resumes it
        // through restart_syscall after SIGCONT; a signal handler returns by rt_sigreturn.
        for role in Role::ALL {
            let calls = syscalls(role);
            for needed in [libc::SYS_restart_syscall, libc::SYS_rt_sigreturn] {
                assert!(
                    calls.contains(&needed),
                    "{role} lacks {}",
                    crate::names::name(needed)
                );
            }
            // Unconditionally: the kernel makes the call, not the program.
            assert!(for_role(role)
                .iter()
                .any(|r| r.syscall == libc::SYS_restart_syscall && r.args.is_empty()));
        }
    }

    #[test]
    fn no_role_may_disarm_the_sigsys_report_or_map_code() {
        for role in Role::ALL {
            for rule in for_role(role) {
                if rule.syscall == libc::SYS_rt_sigaction {
                    assert!(
                        rule.args.contains(&Arg::Ne(0, libc::SIGSYS as u64)),
                        "{role}: rt_sigaction without the SIGSYS exclusion"
                    );
                }
                if rule.syscall == libc::SYS_mmap || rule.syscall == libc::SYS_mprotect {
                    assert!(
                        rule.args
                            .contains(&Arg::Masked(2, libc::PROT_EXEC as u64, 0)),
                        "{role}: {} without the PROT_EXEC exclusion",
                        crate::names::name(rule.syscall)
                    );
                }
                if rule.syscall == libc::SYS_clone {
                    let thread = libc::CLONE_THREAD as u64;
                    assert!(rule.args.contains(&Arg::Masked(0, thread, thread)));
                }
                for forbidden in [
                    libc::SYS_execve,
                    libc::SYS_execveat,
                    libc::SYS_fork,
                    libc::SYS_vfork,
                    libc::SYS_ptrace,
                    libc::SYS_openat,
                    libc::SYS_open,
                    libc::SYS_mount,
                    libc::SYS_socket,
                    libc::SYS_connect,
                    libc::SYS_process_vm_writev,
                ] {
                    assert_ne!(rule.syscall, forbidden, "{role}: {rule:?}");
                }
            }
        }
    }
}
