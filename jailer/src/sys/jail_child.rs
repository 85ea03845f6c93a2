//! The raw calls of the jail's child, between `clone3` and exec (see `jail/clone.rs` for
//! the order). The child of a multi-threaded parent may not allocate or take a lock, so
//! every function here takes only data prepared before the clone (fd numbers, C strings,
//! pointer arrays), allocates nothing and reports failure as the bare errno. `clone3`,
//! `execveat` and `close_range` flags have no nix wrapper; the fd numbers are owned by no
//! Rust object in the child.

use std::ffi::{c_char, CStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The errno of the last failed call (no allocation).
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: i32) -> Result<(), i32> {
    if ret == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `struct clone_args` of clone3(2).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of [`clone3`] this is.
pub(crate) enum Cloned {
    /// The new process.
    Child,
    /// The caller: the child's pid (in the caller's namespace) and its pidfd.
    Parent { pid: i32, pidfd: OwnedFd },
}

/// clone3 with `flags` plus `CLONE_PIDFD` (exit signal SIGCHLD), into the v2 cgroup
/// directory `into_cgroup` if given; no stack (fork-like, on a copy of this stack).
///
/// # Safety
/// On [`Cloned::Child`] the caller runs in a copy of a possibly multi-threaded process: it
/// may only make async-signal-safe calls without allocating or taking locks, and must end
/// in exec or [`exit_now`], never return into the parent's code.
pub(crate) unsafe fn clone3(flags: u64, into_cgroup: Option<RawFd>) -> io::Result<Cloned> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cgroup) = into_cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup as u64;
    }
    // SAFETY: a valid clone_args of the size passed; no CLONE_VM and no stack, so the child
    // runs on a copy of this stack like after fork; the caller keeps the child's contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        pid => {
            // SAFETY: clone3 with CLONE_PIDFD stored a new pidfd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Cloned::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// Leaves at once with `code`, running none of the parent's atexit handlers or destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; no memory is touched.
    unsafe { libc::_exit(code) }
}

/// `write(fd, bytes)`: the count written, or the errno.
pub(crate) fn write(fd: RawFd, bytes: &[u8]) -> Result<usize, i32> {
    // SAFETY: a buffer of the length passed, valid for the call.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// `read` of one byte: `Ok(None)` at end-of-file, or the errno.
pub(crate) fn read_byte(fd: RawFd) -> Result<Option<u8>, i32> {
    let mut byte = 0u8;
    // SAFETY: a one-byte stack buffer.
    let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
    match n {
        1 => Ok(Some(byte)),
        0 => Ok(None),
        _ => Err(errno()),
    }
}

/// `close(fd)`, its result ignored (closing a number this process does not keep, or its
/// last use; EBADF is harmless).
pub(crate) fn close(fd: RawFd) {
    // SAFETY: closes an fd number of this process that no Rust object owns in the child.
    unsafe { libc::close(fd) };
}

/// An empty signal mask and the default SIGPIPE action: the jailer may block or ignore
/// signals that the program expects to receive.
pub(crate) fn reset_signals() -> Result<(), i32> {
    // SAFETY: an empty set on the stack, read by sigprocmask; signal takes integers.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    Ok(())
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: die with the parent.
pub(crate) fn die_with_parent() -> Result<(), i32> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
}

/// `setns(netns, CLONE_NEWNET)`.
pub(crate) fn join_netns(netns: RawFd) -> Result<(), i32> {
    // SAFETY: integer arguments; `netns` is a namespace fd opened by the parent before clone.
    check(unsafe { libc::setns(netns, libc::CLONE_NEWNET) })
}

/// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)`: no propagation to or from the
/// parent's mount namespace.
pub(crate) fn make_mounts_private() -> Result<(), i32> {
    // SAFETY: constant NUL-terminated strings and null pointers.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

/// `sethostname(name)` (in the child's own UTS namespace).
pub(crate) fn set_hostname(name: &[u8]) -> Result<(), i32> {
    // SAFETY: a buffer of the length passed.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, base)`: a close-on-exec copy at or above `base`.
pub(crate) fn dup_cloexec_above(fd: RawFd, base: RawFd) -> Result<RawFd, i32> {
    // SAFETY: integer arguments only.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
    if copy == -1 {
        Err(errno())
    } else {
        Ok(copy)
    }
}

/// `dup2(from, to)`; `to` is left without close-on-exec.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> Result<(), i32> {
    // SAFETY: integer arguments only; fd numbers no Rust object owns in the child.
    check(unsafe { libc::dup2(from, to) })
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks (does not close) every fd from
/// `first` on, so that exec closes them.
pub(crate) fn cloexec_from(first: u32) -> Result<(), i32> {
    // SAFETY: integer arguments only.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `setrlimit(resource, {value, value})`.
pub(crate) fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), i32> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit struct for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// The null-terminated array of pointers to `strings` that execve takes as argv or envp
/// (made before the clone: the child may not allocate; valid while `strings` lives).
pub fn exec_pointers(strings: &[std::ffi::CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `execve(path, argv, envp)`; returns only on failure, with the errno.
///
/// # Safety
/// `argv` and `envp` must be null-terminated arrays of pointers to NUL-terminated strings,
/// all alive for the call.
pub(crate) unsafe fn execve(
    path: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> i32 {
    // SAFETY: NUL-terminated path; the caller guarantees argv and envp.
    unsafe { libc::execve(path.as_ptr(), argv, envp) };
    errno()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: executes the open file `fd`; returns only
/// on failure, with the errno.
///
/// # Safety
/// As [`execve`].
pub(crate) unsafe fn execveat_fd(
    fd: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> i32 {
    // SAFETY: an empty NUL-terminated path; the caller guarantees argv and envp.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv,
            envp,
            libc::AT_EMPTY_PATH,
        )
    };
    errno()
}
