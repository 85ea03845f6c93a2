//! `bulkhead run` with no flags at all: the demo machine. The built-in test guest with a
//! scratch disk (a sparse file deleted when the VM ends), a virtio console on this terminal
//! and a network device on a TAP in a private network namespace, each device in its own
//! process. Any flag means the user describes the machine and gets exactly that.

use std::path::PathBuf;

/// Size of the scratch disk.
const SCRATCH_BYTES: u64 = 64 << 20;

/// The demo's scratch disk; deleted when dropped.
pub struct Demo {
    scratch: PathBuf,
}

impl Demo {
    /// Creates the scratch disk; returns the demo and the `bulkhead run` flags describing
    /// the machine.
    pub fn create() -> std::io::Result<(Demo, Vec<String>)> {
        let scratch =
            std::env::temp_dir().join(format!("bulkhead-{}-scratch.img", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&scratch)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("creating the scratch disk {}: {e}", scratch.display()),
                )
            })?;
        let demo = Demo { scratch };
        file.set_len(SCRATCH_BYTES).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("sizing the scratch disk {}: {e}", demo.scratch.display()),
            )
        })?;
        eprintln!(
            "bulkhead: no flags given: demo VM (built-in test guest) with a {} MiB scratch disk \
             {} (deleted at exit), a console on this terminal and a network device in a private \
             namespace; `bulkhead run --help` lists the flags",
            SCRATCH_BYTES >> 20,
            demo.scratch.display()
        );
        let flags = vec![
            "--disk".into(),
            format!("path={}", demo.scratch.display()),
            "--net".into(),
            "auto".into(),
            "--console".into(),
            "stdio".into(),
        ];
        Ok((demo, flags))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.scratch) {
            log::warn!("removing {}: {e}", self.scratch.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_disk_exists_while_the_demo_lives() {
        let (demo, flags) = Demo::create().unwrap();
        let path = demo.scratch.clone();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SCRATCH_BYTES);
        assert_eq!(flags[1], format!("path={}", path.display()));
        drop(demo);
        assert!(!path.exists());
    }
}
