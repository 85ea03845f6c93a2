//! Waiting for the vmm's outcome while honouring the user's stop request: SIGINT, SIGTERM
//! or SIGHUP to the launcher asks the vmm to stop (SIGTERM), which then reports a clean
//! shutdown; a vmm that does not report within [`STOP_GRACE`] is killed.
//!
//! The device processes run in sessions of their own (see `launch::spawn`), so a Ctrl-C on
//! the terminal reaches only the launcher, which stops everything in order.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the vmm gets to report after being asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The signals that stop the VM.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Write end of the self-pipe the signal handler reports on (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local to the pipe's write end,
    // which stays open for the life of the process.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Routes the stop signals into a pipe; returns its read end. Called once.
pub fn catch_stop_signals() -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else; the write end is
    // deliberately leaked for the handler.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    for s in STOP_SIGNALS {
        // SAFETY: installs a handler that only calls write(2); the sigaction struct is a
        // zero-initialised local.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(read)
}

/// What the wait gave.
pub struct Waited {
    /// The vmm's outcome line, if it wrote one (empty when the socket closed first).
    pub line: String,
    /// The stop signal the launcher received, if any.
    pub signal: Option<i32>,
}

/// Waits for the vmm (pid `vmm_pid`) to write its outcome line on `control`, asking it to
/// stop when a signal arrives on `signals`.
pub fn wait_for_outcome(control: &UnixStream, vmm_pid: u32, signals: &OwnedFd) -> Waited {
    let mut signal = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout = deadline.map_or(-1, |d| {
            d.saturating_duration_since(Instant::now()).as_millis() as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: control.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid fds in a local array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[0].revents != 0 {
            let mut line = String::new();
            let _ = BufReader::new(control).read_line(&mut line);
            return Waited { line, signal };
        }
        if fds[1].revents != 0 {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local from the pipe's read end (non-blocking).
            if unsafe { libc::read(signals.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) } == 1
                && signal.is_none()
            {
                signal = Some(i32::from(byte));
                eprintln!("bulkhead: signal {byte}: stopping the VM");
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(vmm_pid as libc::pid_t, libc::SIGTERM) };
                deadline = Some(Instant::now() + STOP_GRACE);
            }
            continue;
        }
        if n == 0 {
            log::warn!("the vmm did not stop within {STOP_GRACE:?}; killing it");
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(vmm_pid as libc::pid_t, libc::SIGKILL) };
            deadline = None;
        }
    }
    Waited {
        line: String::new(),
        signal,
    }
}
