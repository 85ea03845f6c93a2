//! Filters installed for real, in forked children that make raw system calls and exit
//! with `SYS_exit` (a forked child of the threaded test process must not allocate; the
//! filters are compiled before the fork).

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2_stderr, fork, pipe2, ForkResult};
use std::os::fd::OwnedFd;

use crate::install::{compile, Filter};
use crate::mode::SeccompMode;
use crate::report;
use crate::role::Role;
use crate::rules;

/// How a child ended, and what it wrote on stderr.
struct Outcome {
    status: WaitStatus,
    stderr: String,
}

impl Outcome {
    fn killed_by(&self) -> Option<libc::c_int> {
        match self.status {
            WaitStatus::Signaled(_, signal, _) => Some(signal as libc::c_int),
            _ => None,
        }
    }
    fn exit_code(&self) -> Option<libc::c_int> {
        match self.status {
            WaitStatus::Exited(_, code) => Some(code),
            _ => None,
        }
    }
}

/// Ends the calling (only) thread, and so the child, without exit_group.
fn thread_exit(code: libc::c_long) -> ! {
    loop {
        // SAFETY: SYS_exit ends the calling thread; it takes only the status.
        unsafe { libc::syscall(libc::SYS_exit, code) };
    }
}

/// In the child: stderr to `w`, no core dump, `filter` installed, then `body`, whose
/// return is the exit code (non-allocating throughout).
fn in_child(w: &OwnedFd, filter: &Filter, body: fn() -> libc::c_long) -> ! {
    if dup2_stderr(w).is_err() || setrlimit(Resource::RLIMIT_CORE, 0, 0).is_err() {
        thread_exit(101);
    }
    if filter.apply().is_err() {
        thread_exit(100);
    }
    thread_exit(body());
}

/// Runs `body` in a child under `role`'s filter in `mode`; `body` returns the exit code.
fn run(role: Role, mode: SeccompMode, body: fn() -> libc::c_long) -> Outcome {
    let filter = compile(role, mode).unwrap().unwrap();
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child only makes non-allocating calls (dup2, setrlimit, the
    // non-allocating Filter::apply, the body's raw calls) and ends with SYS_exit.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => in_child(&w, &filter, body),
        ForkResult::Parent { child } => child,
    };
    drop(w);
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut stderr).unwrap();
    let status = waitpid(child, None).unwrap();
    Outcome {
        status,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn ptrace() -> libc::c_long {
    // nix's wrapper makes the ptrace system call (the test checks the reported number is
    // SYS_ptrace); the filter stops it.
    let _ = nix::sys::ptrace::traceme();
    0
}

#[test]
fn every_role_compiles_and_its_size_is_reported() {
    for role in Role::ALL {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            assert!(compile(role, mode).unwrap().is_some());
        }
        assert!(compile(role, SeccompMode::Off).unwrap().is_none());
        println!("{role}: {} system calls", rules::syscalls(role).len());
    }
}

#[test]
fn a_call_outside_the_list_kills_by_sigsys_with_a_report_in_every_role() {
    for role in Role::ALL {
        let out = run(role, SeccompMode::Enforce, ptrace);
        assert_eq!(
            out.killed_by(),
            Some(libc::SIGSYS),
            "{role}: {}",
            out.stderr
        );
        let v = report::parse(out.stderr.lines().next().unwrap_or_default())
            .unwrap_or_else(|| panic!("{role}: no report in {:?}", out.stderr));
        assert_eq!((v.nr, v.name.as_str()), (libc::SYS_ptrace, "ptrace"));
        assert_eq!(v.role, role.name());
        assert!(!v.program.is_empty() && !v.thread.is_empty(), "{v:?}");
    }
}

#[test]
fn log_mode_lets_the_call_through() {
    let out = run(Role::BlkWorker, SeccompMode::Log, || {
        if nix::unistd::getppid().as_raw() > 0 {
            7
        } else {
            1
        }
    });
    assert_eq!(out.exit_code(), Some(7), "{}", out.stderr);
}

#[test]
fn allowed_calls_work_with_allowed_arguments() {
    let out = run(Role::BlkWorker, SeccompMode::Enforce, || {
        // SAFETY: an anonymous private read-write mapping, unmapped again; fdatasync on a
        // closed descriptor fails with EBADF without touching memory.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return 2;
            }
            *p.cast::<u8>() = 1;
            if libc::munmap(p, 4096) != 0 {
                return 3;
            }
            if libc::syscall(libc::SYS_fdatasync, 999) != -1 {
                return 4;
            }
        }
        if nix::unistd::write(std::io::stderr(), b"ok") != Ok(2) {
            return 5;
        }
        0
    });
    assert_eq!(out.exit_code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "ok");
}

#[test]
fn executable_mappings_are_killed() {
    for role in Role::ALL {
        let out = run(role, SeccompMode::Enforce, || {
            // SAFETY: an anonymous mapping request; the filter stops it before the kernel
            // maps anything.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            0
        });
        assert_eq!(out.killed_by(), Some(libc::SIGSYS), "{role}");
        assert_eq!(
            report::parse(&out.stderr).map(|v| v.nr),
            Some(libc::SYS_mmap)
        );
    }
}

#[test]
fn clone3_answers_enosys_so_glibc_falls_back_to_clone() {
    let out = run(Role::BlkWorker, SeccompMode::Enforce, || {
        // SAFETY: clone3 with no arguments struct; the filter answers before the kernel
        // reads it.
        let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
        if ret == -1 && Errno::last() == Errno::ENOSYS {
            0
        } else {
            1
        }
    });
    assert_eq!(out.exit_code(), Some(0), "{}", out.stderr);
}

#[test]
fn clone_without_clone_thread_is_killed() {
    let out = run(Role::VhostUser, SeccompMode::Enforce, || {
        // SAFETY: a fork-style clone; the filter stops it before any child exists.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        0
    });
    assert_eq!(out.killed_by(), Some(libc::SIGSYS), "{}", out.stderr);
    assert_eq!(
        report::parse(&out.stderr).map(|v| v.nr),
        Some(libc::SYS_clone)
    );
}

#[test]
fn nobody_can_replace_the_sigsys_handler() {
    let out = run(Role::VhostUser, SeccompMode::Enforce, || {
        // SAFETY: a zeroed sigaction (SIG_DFL) for SIGSYS; the filter stops the call.
        unsafe {
            let action: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        }
        0
    });
    assert_eq!(out.killed_by(), Some(libc::SIGSYS), "{}", out.stderr);
    assert_eq!(
        report::parse(&out.stderr).map(|v| v.nr),
        Some(libc::SYS_rt_sigaction)
    );
}

#[test]
fn ioctls_are_allowed_by_request_number() {
    let out = run(Role::Vcpu, SeccompMode::Enforce, || {
        // SAFETY: KVM_RUN on a descriptor that is not open fails with EBADF.
        let ret = unsafe { libc::ioctl(999, rules::consts::KVM_RUN as libc::c_ulong, 0) };
        if ret == -1 {
            0
        } else {
            1
        }
    });
    assert_eq!(out.exit_code(), Some(0), "{}", out.stderr);
    let out = run(Role::Vcpu, SeccompMode::Enforce, || {
        // SAFETY: TUNSETIFF (not a vCPU's) is stopped before the kernel reads anything.
        unsafe { libc::ioctl(999, 0x4004_54CA, 0) };
        0
    });
    assert_eq!(out.killed_by(), Some(libc::SIGSYS), "{}", out.stderr);
}

#[test]
fn opening_a_path_gets_enoent_in_every_role() {
    for role in Role::ALL {
        let out = run(role, SeccompMode::Enforce, || {
            // The filter answers openat before the kernel reads the path.
            let opened = openat(AT_FDCWD, c"/etc/passwd", OFlag::O_RDONLY, Mode::empty());
            if opened.err() == Some(Errno::ENOENT) {
                0
            } else {
                1
            }
        });
        assert_eq!(out.exit_code(), Some(0), "{role}: {}", out.stderr);
    }
}

/// Runs `body` under `role`'s filter as the init of a new PID namespace, as a jailed
/// process runs (needs CAP_SYS_ADMIN); `None` without it.
fn run_as_namespace_init(role: Role, body: fn() -> libc::c_long) -> Option<Outcome> {
    let filter = compile(role, SeccompMode::Enforce).unwrap().unwrap();
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    // SAFETY: a fork-style clone (no CLONE_VM, no stack); the child makes only
    // non-allocating calls, as in `run`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWPID | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match pid {
        -1 => {
            eprintln!(
                "skipped: a new PID namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        0 => in_child(&w, &filter, body),
        _ => {}
    }
    drop(w);
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut stderr).unwrap();
    let status = waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
    Some(Outcome {
        status,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

#[test]
fn abort_in_a_namespace_init_is_a_crash_not_a_seccomp_kill() {
    // The kernel drops the SIGABRT that abort() raises in its PID namespace's init; glibc
    // then resets SIGABRT and ends with a faulting instruction (SIGSEGV). Had seccomp
    // refused the reset, the process would die by SIGSYS with a report, a "security
    // event" to the launcher.
    for role in Role::ALL {
        let Some(out) = run_as_namespace_init(role, || {
            // SAFETY: abort ends the process; nothing of ours runs after it.
            unsafe { libc::abort() }
        }) else {
            return;
        };
        assert!(
            matches!(out.killed_by(), Some(libc::SIGSEGV | libc::SIGABRT)),
            "{role}: {:?}\n{}",
            out.status,
            out.stderr
        );
        assert!(
            report::parse(&out.stderr).is_none(),
            "{role}: {}",
            out.stderr
        );
    }
}
