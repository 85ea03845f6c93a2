//! Making a file with its final permissions from the start: a thread of its own umask.
//!
//! A socket's mode comes from the umask at bind(2); changing it afterwards (chmod by path)
//! would leave a window in which the socket has the launcher's mode, and would follow
//! whatever a local user put at that name meanwhile (a symlink to a file of root's). The
//! umask is shared by every thread of the process unless a thread unshares its filesystem
//! context (CLONE_FS): the work runs on a short-lived thread that does, so the launcher's
//! other threads never see the changed mask.

use std::io;

use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{umask, Mode};

/// Runs `f` on a thread whose umask is `mask` (and whose threads inherit it).
pub fn run<T: Send>(mask: libc::mode_t, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("umask".into())
            .spawn_scoped(s, move || {
                // This thread's own cwd/root/umask from here on.
                unshare(CloneFlags::CLONE_FS)?;
                // Now this thread's mask only.
                umask(Mode::from_bits_truncate(mask));
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("the umask thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_mask_applies_on_its_thread_only() {
        let dir = std::env::temp_dir().join(format!("bulkhead-umask-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        run(0o077, || std::fs::File::create(dir.join("a")).map(drop))
            .unwrap()
            .unwrap();
        let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("a"), 0o600);
        // The process's own mask is untouched.
        // Read and put back at once.
        let own = umask(Mode::from_bits_truncate(0o022));
        umask(own);
        assert_ne!(own.bits(), 0o077);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
