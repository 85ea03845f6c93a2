//! qemu-storage-daemon as an independent vhost-user-blk backend, for the block benchmark
//! and the interoperability tests (which include this file): it exports one image (raw, or
//! through QEMU's qcow2 driver) on a Unix socket and is killed, by pid, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running qemu-storage-daemon.
pub struct Qsd {
    child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Why qemu-storage-daemon could not serve: not installed at all, or installed and failing
/// (a test skips on the first and fails on the second: a changed flag must not pass unseen).
#[derive(Debug, thiserror::Error)]
pub enum QsdError {
    /// The program is not there.
    #[error("qemu-storage-daemon (Debian package qemu-utils) is not installed")]
    NotInstalled(#[source] std::io::Error),
    /// It could not be started for another reason.
    #[error("starting qemu-storage-daemon")]
    Spawn(#[source] std::io::Error),
    /// It exited before making its socket.
    #[error("qemu-storage-daemon exited ({0}) before creating its socket {1}")]
    Exited(std::process::ExitStatus, PathBuf),
    /// It ran but made no socket in time.
    #[error("qemu-storage-daemon did not create its socket {1} within {0:?}")]
    NoSocket(Duration, PathBuf),
}

/// How long qemu-storage-daemon gets to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Starts qemu-storage-daemon exporting `image` (writable unless `readonly`) on a socket
/// named after `tag`.
pub fn start(image: &Path, readonly: bool, tag: &str) -> Result<Qsd, QsdError> {
    start_as(image, "raw", readonly, tag)
}

/// As [`start`], the image read through QEMU's `format` driver (`raw` or `qcow2`).
pub fn start_as(image: &Path, format: &str, readonly: bool, tag: &str) -> Result<Qsd, QsdError> {
    let socket =
        std::env::temp_dir().join(format!("bulkhead-qsd-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev").arg(format!(
        "driver=file,node-name=file0,filename={}",
        image.display()
    ));
    let node = if format == "raw" {
        "file0"
    } else {
        cmd.arg("--blockdev")
            .arg(format!("driver={format},node-name=fmt0,file=file0"));
        "fmt0"
    };
    let child = cmd
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name={node},addr.type=unix,addr.path={},writable={}",
            socket.display(),
            if readonly { "off" } else { "on" }
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => QsdError::NotInstalled(e),
            _ => QsdError::Spawn(e),
        })?;
    let mut qsd = Qsd { child, socket };
    let deadline = Instant::now() + SOCKET_WAIT;
    while !qsd.socket.exists() {
        // A daemon that refused its command line is gone long before the deadline.
        if let Ok(Some(status)) = qsd.child.try_wait() {
            return Err(QsdError::Exited(status, qsd.socket.clone()));
        }
        if Instant::now() > deadline {
            return Err(QsdError::NoSocket(SOCKET_WAIT, qsd.socket.clone()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(qsd)
}
