//! The raw calls of the SIGSYS report handler ([`crate::install`]). A signal handler may
//! only make async-signal-safe calls and must not allocate; nix's counterparts either
//! allocate (`prctl::get_name` returns a `CString`) or are missing (`tgkill`,
//! `getauxval`). Every function here is allocation-free and async-signal-safe.

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: after `si_signo`,
/// `si_errno`, `si_code`, padding (16 bytes) and `si_call_addr` (8).
const SI_SYSCALL_OFFSET: usize = 24;

/// The number of the system call a seccomp SIGSYS reports, -1 for a null `info`.
///
/// # Safety
/// `info` is null or the `siginfo_t` the kernel passed to an SA_SIGINFO handler for
/// SIGSYS (valid for the handler's run).
pub unsafe fn sigsys_syscall_nr(info: *const libc::siginfo_t) -> i64 {
    if info.is_null() {
        return -1;
    }
    // SAFETY: per the contract a kernel siginfo_t (128 bytes); a seccomp SIGSYS stores
    // the call number as an int at this offset.
    i64::from(unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    })
}

/// The calling thread's name (`prctl(PR_GET_NAME)`) into `out`; returns its length (0 if
/// the call failed: the buffer stays zeroed).
pub fn thread_name(out: &mut [u8; 17]) -> usize {
    out.fill(0);
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the buffer, which
    // has 17.
    unsafe { libc::prctl(libc::PR_GET_NAME, out.as_mut_ptr()) };
    out.iter().position(|&b| b == 0).unwrap_or(16)
}

/// `tgkill(getpid(), gettid(), SIGSYS)`: sends SIGSYS to this very thread. Raw: nix has
/// no tgkill (its pthread_kill goes through libc's thread bookkeeping).
pub fn tgkill_self_sigsys() {
    let (pid, tid) = (nix::unistd::getpid(), nix::unistd::gettid());
    // SAFETY: integer arguments only; tgkill signals this very thread.
    unsafe { libc::syscall(libc::SYS_tgkill, pid.as_raw(), tid.as_raw(), libc::SIGSYS) };
}

/// The path the program was executed by (the auxiliary vector's `AT_EXECFN`), empty if
/// absent. Does not allocate.
pub fn exec_path() -> &'static [u8] {
    // SAFETY: getauxval reads the process's auxiliary vector.
    let path = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if path.is_null() {
        return &[];
    }
    // SAFETY: AT_EXECFN, when present, points at the NUL-terminated path the program was
    // executed by, valid (and unchanged) for the process's life. CStr::from_ptr only
    // measures it: no allocation.
    unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes()
}
