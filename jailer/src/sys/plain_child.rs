//! A plain (not jailed, `--jail off`) child: started by [`spawn`] with `clone(CLONE_VM |
//! CLONE_VFORK)` as posix_spawn starts one, and its steps until exec, allocation-free on
//! memory it shares with the launcher and on fd numbers that no Rust object owns in the
//! child (nix's `dup2` wants an `OwnedFd` target that it would close on drop).

use std::ffi::{c_char, c_void, CStr};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::mman::{mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

/// The most fds a plain child is given by [`place_fds`].
pub const MAX_PLACED_FDS: usize = 64;

/// In the child (allocation-free): makes each `(from, to)` fd available as `to`,
/// inheritable. Goes through temporary copies so that a `from` equal to another pair's `to`
/// is not clobbered.
pub fn place_fds(pairs: &[(RawFd, RawFd)]) -> io::Result<()> {
    const TEMP_BASE: RawFd = 100;
    let mut temps = [0 as RawFd; MAX_PLACED_FDS];
    if pairs.len() > temps.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (i, (from, _)) in pairs.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd number; no memory is touched.
        let t = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, TEMP_BASE) };
        if t < 0 {
            return Err(io::Error::last_os_error());
        }
        temps[i] = t;
    }
    for (i, (_, to)) in pairs.iter().enumerate() {
        // SAFETY: dup2 between fds of this (child) process; the new fd does not have
        // FD_CLOEXEC, so it survives exec.
        if unsafe { libc::dup2(temps[i], *to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child (allocation-free): a session of its own, and death with the parent
/// (`signal`); fails if the parent, `parent` (its pid, read before the child was made), is
/// already gone (the child was then given another parent: init or a subreaper).
pub fn detach_and_tie_to_parent(signal: Signal, parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: setsid, prctl(PR_SET_PDEATHSIG) and getppid touch no memory of ours.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_int) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Stack of a plain child until it executes (it runs only the few calls below), above a
/// guard page.
const CHILD_STACK: usize = 64 * 1024;

/// What [`spawn`] passes to its child, in the launcher's memory that the child shares.
struct Shared<'a> {
    path: &'a CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
    pairs: &'a [(RawFd, RawFd)],
    death_signal: Signal,
    /// This process's pid, the child's parent while this process lives.
    parent: libc::pid_t,
    /// The errno of the step that failed (0: none), written by the child before it exits.
    failure: AtomicI32,
}

/// A plain child just started: its pid and a pidfd (from `CLONE_PIDFD`).
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Starts `path` with `argv` and `envp` (null-terminated arrays of C strings) the way
/// posix_spawn does: `clone(CLONE_VM | CLONE_VFORK)` runs the child on a stack of its own
/// inside this process's memory, and this thread waits until the child executes or fails.
/// fork would copy this process's page tables and turn its next writes into copy-on-write
/// faults: about 0.3 ms of CPU per start on a PVM host. In the child: every caught signal
/// back to its default action (a handler must not run on memory it shares with us), the
/// `(from, to)` fds placed ([`place_fds`]), a session of its own, `death_signal` when the
/// calling thread ends ([`detach_and_tie_to_parent`]), an empty signal mask and the default
/// SIGPIPE action (as `std::process::Command` leaves them), then execve. A step that
/// fails is this call's error (the child is reaped). Needs Linux 5.4 (`CLONE_PIDFD` here,
/// `waitid(P_PIDFD)` to reap), as the jailed path does.
///
/// # Safety
/// `argv` and `envp` must be null-terminated arrays of pointers to NUL-terminated strings,
/// all alive for the call.
pub unsafe fn spawn(
    path: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
    pairs: &[(RawFd, RawFd)],
    death_signal: Signal,
) -> io::Result<Spawned> {
    let shared = Shared {
        path,
        argv,
        envp,
        pairs,
        death_signal,
        parent: nix::unistd::getpid().as_raw(),
        failure: AtomicI32::new(0),
    };
    let stack = ChildStack::new()?;
    let mut old = SigSet::empty();
    // No handler of ours may run in the child before it resets them: block every signal
    // that can be blocked across the clone (the child starts with this mask). glibc keeps
    // its two internal ones (SIGCANCEL, SIGSETXID) out of any mask; their handlers act only
    // on signals this process sent itself, which none of its threads does to the child.
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child shares this process's memory and this thread's thread-local
    // storage (errno among it) while other threads of ours go on running, so `run_child`
    // and what it calls allocate nothing, take no lock, cannot panic and never return into
    // Rust code (it execs or `_exit`s). It runs on `stack` (mapped, above a guard page,
    // used by nothing else) and reads `shared` only while this thread is suspended
    // (CLONE_VFORK: until the child executes or exits), so `shared`, `pairs` and the
    // caller's argv/envp outlive its use. CLONE_PIDFD writes the new pidfd to `pidfd`.
    let pid = unsafe {
        libc::clone(
            run_child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &shared as *const Shared as *mut c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(stack);
    if pid == -1 {
        return Err(clone_error);
    }
    if pidfd < 0 {
        // A kernel older than 5.2 ignores CLONE_PIDFD: reap the child by pid.
        reap_by_pid(pid);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel gives no pidfd for a new process (CLONE_PIDFD needs Linux 5.2)",
        ));
    }
    // SAFETY: clone with CLONE_PIDFD stored a new pidfd (checked above) that nothing else
    // owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let failure = match shared.failure.load(Ordering::Acquire) {
        0 => restored.err().map(io::Error::from),
        errno => Some(io::Error::from_raw_os_error(errno)),
    };
    match failure {
        None => Ok(Spawned { pid, pidfd }),
        Some(e) => {
            // Exited (127) or, if our mask could not be restored, killed: reap it, so
            // that it is no zombie.
            let _ = super::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = super::pidfd::Reaped::default().poll(pidfd.as_fd(), true);
            Err(e)
        }
    }
}

/// Waits for child `pid` to end and reaps it, again after EINTR (our own unreaped child,
/// so the pid is still its).
fn reap_by_pid(pid: libc::pid_t) {
    let pid = nix::unistd::Pid::from_raw(pid);
    while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
}

/// The child of [`spawn`]: its steps, then execve; returns (exits) only on failure.
extern "C" fn run_child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` that `spawn` passed; it outlives the child's use (the
    // parent's thread is suspended until the child executes or exits).
    let shared = unsafe { &*(arg as *const Shared) };
    let errno = child_steps(shared);
    shared.failure.store(errno.max(1), Ordering::Release);
    // SAFETY: _exit ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

/// The child's steps (allocation-free, on memory shared with the parent); returns the
/// errno of the step that failed.
fn child_steps(shared: &Shared<'_>) -> i32 {
    let os_errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EINVAL);
    if let Err(e) = default_handlers() {
        return e;
    }
    if let Err(e) = place_fds(shared.pairs) {
        return os_errno(e);
    }
    if let Err(e) = detach_and_tie_to_parent(shared.death_signal, shared.parent) {
        return os_errno(e);
    }
    if let Err(e) = super::jail_child::reset_signals() {
        return e;
    }
    // SAFETY: the caller of `spawn` guarantees argv and envp.
    unsafe { super::jail_child::execve(shared.path, shared.argv, shared.envp) }
}

/// Every signal with a handler back to its default action (ignored ones stay ignored, as
/// across exec).
fn default_handlers() -> Result<(), i32> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction reads/writes plain structs on this stack.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                if libc::sigaction(signal, &default, std::ptr::null_mut()) != 0 {
                    return Err(super::jail_child::errno());
                }
            }
        }
    }
    Ok(())
}

/// The child's stack: an anonymous mapping with a guard page at its low end.
struct ChildStack {
    base: NonNull<c_void>,
    /// The guard's size: one page.
    guard: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let guard = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| usize::try_from(size).ok())
            .unwrap_or(4096);
        let len = NonZeroUsize::new(CHILD_STACK + guard).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a new private anonymous mapping, aliasing nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE,
            )
        }?;
        let stack = ChildStack { base, guard };
        // SAFETY: the lowest page of our own new mapping, which nothing uses.
        unsafe { mprotect(stack.base, guard, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The highest address, where the stack starts (16-byte aligned: the mapping is
    /// page-aligned and its length a multiple of 16).
    fn top(&self) -> *mut c_void {
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(CHILD_STACK + self.guard)
            .cast()
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping of this length, no longer used (the child has executed
        // or exited by the time `spawn` drops it).
        let _ = unsafe { munmap(self.base, CHILD_STACK + self.guard) };
    }
}
