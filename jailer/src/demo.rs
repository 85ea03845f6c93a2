//! `bulkhead run` with no flags at all: the demo machine. The built-in test guest with a
//! scratch disk (a sparse file deleted when the VM ends), a virtio console on this terminal
//! and a network device on a TAP in a private network namespace, each device in its own
//! process. `bulkhead run --transport pci` (or `mmio`) alone is the demo on that transport;
//! any other flag means the user describes the machine and gets exactly that.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Size of the scratch disk.
const SCRATCH_BYTES: u64 = 64 << 20;
/// The scratch disk's name in its directory.
pub const SCRATCH_NAME: &str = "scratch.img";

/// The demo's scratch disk, alone in a private directory; both deleted when dropped.
///
/// Why a directory: the image must have a path (`--disk path=` opens it like any disk,
/// with the launcher's checks on paths), so O_TMPFILE does not fit; a name of the
/// launcher's choosing in the shared temporary directory could be taken or watched by
/// another user. So a fresh directory with a random name (mkdtemp: mode 0700, created
/// exclusively, a new name if one is taken), and in it the image, created exclusively,
/// mode 0600, not following a link. If the launcher is killed before it can remove them,
/// the directory (`bulkhead-<pid>-XXXXXX` in the temporary directory, the launcher's pid)
/// stays behind, readable by root only, until the next launcher's reaper removes it
/// ([`crate::stale`]).
pub struct Demo {
    dir: PathBuf,
    scratch: PathBuf,
}

/// A new directory `bulkhead-<pid>-XXXXXX` in the temporary directory, mode 0700.
fn private_dir() -> io::Result<PathBuf> {
    let template = std::env::temp_dir().join(format!("bulkhead-{}-XXXXXX", std::process::id()));
    Ok(nix::unistd::mkdtemp(&template)?)
}

/// `e` with what was being done to `path`.
fn with_path(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Whether `bulkhead run ARGS` (the arguments after `run`) asks for the demo: no flags at
/// all, or only the transport (`--transport pci`, `--transport=mmio`), the one choice the
/// demo leaves to the user. The transport flags are returned, to follow the demo's.
pub fn wanted(args: &[OsString]) -> Option<Vec<OsString>> {
    match args {
        [] => Some(Vec::new()),
        [flag, _] if flag == "--transport" => Some(args.to_vec()),
        [flag] if flag.to_str().is_some_and(|f| f.starts_with("--transport=")) => {
            Some(args.to_vec())
        }
        _ => None,
    }
}

impl Demo {
    /// Creates the scratch disk; returns the demo and the `bulkhead run` flags describing
    /// the machine.
    pub fn create() -> io::Result<(Demo, Vec<String>)> {
        let dir = private_dir().map_err(|e| {
            with_path(
                "creating a directory for the scratch disk in",
                &std::env::temp_dir(),
                e,
            )
        })?;
        let scratch = dir.join(SCRATCH_NAME);
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&scratch);
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // Nothing of ours is in the directory: only it is removed.
                let _ = std::fs::remove_dir(&dir);
                return Err(with_path("creating the scratch disk", &scratch, e));
            }
        };
        // From here, dropping `demo` removes both.
        let demo = Demo { dir, scratch };
        file.set_len(SCRATCH_BYTES)
            .map_err(|e| with_path("sizing the scratch disk", &demo.scratch, e))?;
        eprintln!(
            "bulkhead: no machine described: demo VM (built-in test guest) with a {} MiB scratch disk \
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
        for (path, removed) in [
            (&self.scratch, std::fs::remove_file(&self.scratch)),
            (&self.dir, std::fs::remove_dir(&self.dir)),
        ] {
            match removed {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    log::warn!("removing {}: {e}", path.display())
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn scratch_disk_is_private_and_exists_while_the_demo_lives() {
        // Another user took the old, guessable name for this pid.
        let old = std::env::temp_dir().join(format!("bulkhead-{}-scratch.img", std::process::id()));
        std::fs::write(&old, b"not yours").unwrap();
        let root = is_root();
        if root {
            std::os::unix::fs::chown(&old, Some(65534), Some(65534)).unwrap();
        }
        let created = Demo::create();
        std::fs::remove_file(&old).unwrap();
        let (demo, flags) = created.expect("the demo does not depend on a guessable name");
        let (dir, path) = (demo.dir.clone(), demo.scratch.clone());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), SCRATCH_BYTES);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "image mode");
        let dmeta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(dmeta.is_dir());
        assert_eq!(dmeta.permissions().mode() & 0o7777, 0o700, "directory mode");
        assert_eq!(dmeta.uid(), meta.uid());
        assert_eq!(path.parent(), Some(dir.as_path()));
        assert_ne!(path, old);
        assert_eq!(flags[1], format!("path={}", path.display()));
        // Two demos of one launcher get two directories.
        let (other, _) = Demo::create().unwrap();
        assert_ne!(other.dir, dir);
        drop(other);
        drop(demo);
        assert!(!path.exists() && !dir.exists(), "removed at the end");
    }

    #[test]
    fn only_the_transport_keeps_the_demo() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(wanted(&[]), Some(vec![]));
        for args in [
            &["--transport", "pci"][..],
            &["--transport", "mmio"],
            &["--transport=pci"],
        ] {
            assert_eq!(wanted(&os(args)), Some(os(args)), "{args:?}");
        }
        for args in [
            &["--memory", "64"][..],
            &["--transport", "pci", "--memory", "64"],
            &["--transport"],
            &["--config", "vm.json"],
            &["--transportx=pci"],
        ] {
            assert_eq!(wanted(&os(args)), None, "{args:?}");
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }
}
