//! A deadline on every exchange with a backend.
//!
//! The socket's receive timeout is not enough: vhost 0.18 reads a reply with
//! `recv_into_iovec_all`, which retries on `EAGAIN`, so a backend that never answers (or
//! sends half a reply) would hold the caller (a vCPU, the control thread during a replay)
//! forever. Each exchange is therefore guarded ([`arm`]): if it is still running at its
//! deadline, the `vhost-watchdog` thread shuts the socket down, the blocked call fails
//! (the peer is gone, as far as it knows), and [`Guard::fired`] tells the caller that it
//! was a timeout.

use std::os::fd::RawFd;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

struct Armed {
    id: u64,
    fd: RawFd,
    deadline: Instant,
    fired: bool,
}

struct Watchdog {
    armed: Mutex<(u64, Vec<Armed>)>,
    changed: Condvar,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, (u64, Vec<Armed>)> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut armed = self.lock();
        loop {
            let now = Instant::now();
            for a in armed.1.iter_mut().filter(|a| !a.fired && a.deadline <= now) {
                // The entry is removed (under this lock) before its socket can be closed,
                // so `fd` is still the guarded socket.
                let _ = nix::sys::socket::shutdown(a.fd, nix::sys::socket::Shutdown::Both);
                a.fired = true;
            }
            let next = armed
                .1
                .iter()
                .filter(|a| !a.fired)
                .map(|a| a.deadline)
                .min();
            armed = match next {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(armed, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(armed).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// The process's watchdog, its thread started on first use (`None` if it could not be).
fn watchdog() -> Option<&'static Watchdog> {
    static DOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
    *DOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            armed: Mutex::new((0, Vec::new())),
            changed: Condvar::new(),
        }));
        match spawn_confined("vhost-watchdog", Role::VmmMain, process_mode(), move || {
            dog.run()
        }) {
            Ok(_) => Some(dog),
            Err(e) => {
                log::error!("starting the vhost-user watchdog: {e}; replies are not timed out");
                None
            }
        }
    })
}

/// A deadline on the exchanges on socket `fd` until it is dropped.
pub struct Guard {
    id: u64,
    dog: Option<&'static Watchdog>,
}

/// Guards socket `fd` for `timeout`: if the guard still exists then, the socket is shut
/// down.
pub fn arm(fd: RawFd, timeout: Duration) -> Guard {
    let dog = watchdog();
    let mut id = 0;
    if let Some(dog) = dog {
        let mut armed = dog.lock();
        armed.0 += 1;
        id = armed.0;
        armed.1.push(Armed {
            id,
            fd,
            deadline: Instant::now() + timeout,
            fired: false,
        });
        drop(armed);
        dog.changed.notify_one();
    }
    Guard { id, dog }
}

impl Guard {
    /// Whether the deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        self.dog
            .is_some_and(|dog| dog.lock().1.iter().any(|a| a.id == self.id && a.fired))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(dog) = self.dog {
            dog.lock().1.retain(|a| a.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_read_past_its_deadline_is_ended_and_one_in_time_is_not() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let g = arm(a.as_raw_fd(), Duration::from_millis(200));
        let mut buf = [0u8; 1];
        assert_eq!(a.read(&mut buf).unwrap(), 0, "shut down");
        assert!(g.fired());
        assert!(start.elapsed() < Duration::from_secs(2));
        let (c, mut d) = UnixStream::pair().unwrap();
        let g = arm(c.as_raw_fd(), Duration::from_millis(100));
        drop(g);
        std::thread::sleep(Duration::from_millis(300));
        std::io::Write::write_all(&mut &c, b"x").unwrap();
        assert_eq!(d.read(&mut buf).unwrap(), 1, "disarmed in time: still open");
    }
}
