//! qemu-storage-daemon as an independent vhost-user-blk backend, for the block benchmark
//! and the interoperability tests (which include this file): it exports one raw image on a
//! Unix socket and is killed, by pid, when dropped.

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

/// Starts qemu-storage-daemon exporting `image` (writable unless `readonly`) on a socket
/// named after `tag`; `Err` says why it could not.
pub fn start(image: &Path, readonly: bool, tag: &str) -> Result<Qsd, String> {
    let socket =
        std::env::temp_dir().join(format!("bulkhead-qsd-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable={}",
            socket.display(),
            if readonly { "off" } else { "on" }
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting qemu-storage-daemon (Debian package qemu-utils): {e}"))?;
    let qsd = Qsd { child, socket };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !qsd.socket.exists() {
        if Instant::now() > deadline {
            return Err("qemu-storage-daemon did not create its socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(qsd)
}
