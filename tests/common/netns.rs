//! Doing things inside a network namespace from a test: a thread enters it (a thread's
//! network namespace is its own) and runs a closure there; commands run with `ip netns exec`.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// Runs `f` on a thread that has entered network namespace `name` (under /run/netns).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || -> std::io::Result<T> {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns on an fd we own, for this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("thread in the namespace panicked"))?
}

/// Runs a command inside namespace `name`.
pub fn exec(name: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", name])
        .args(args)
        .output()
        .expect("running ip netns exec")
}

/// Why network tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("network namespaces and TAPs need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("ip(8) (iproute2) is not installed".into());
    }
    if std::fs::metadata("/dev/net/tun").is_err() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}
