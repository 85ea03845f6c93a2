//! A backend in a process of its own: a copy of the test binary running only its
//! `child_backend` test, which reads what to run from an environment variable (each test
//! binary names its own and writes the body).

use std::os::fd::RawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starts the copy with `env` set to `spec`, inheriting `inherit` (their numbers appear
/// in `spec`); stdin and stdout null, stderr piped, RUST_LOG=info.
pub fn spawn(env: &str, spec: &str, inherit: &[RawFd]) -> Child {
    for &fd in inherit {
        // SAFETY: clears FD_CLOEXEC on a descriptor the caller owns, so the child has it.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    }
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_backend",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(env, spec)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits at most `within` for `child` (then kills it and fails the test with its
/// stderr); its status and stderr.
pub fn finish(mut child: Child, within: Duration) -> (ExitStatus, String) {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the backend did not exit within {within:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
