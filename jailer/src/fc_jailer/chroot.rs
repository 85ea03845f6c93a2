//! The jail's directory as Firecracker's jailer lays it out:
//! `<chroot-base-dir>/<exec-file name>/<id>/root`, owned by `--uid`/`--gid`, into which the
//! orchestrator hard-links or copies the kernel and drives. Only what this jailer itself
//! creates is removed at the end (the API socket's directory, the pid file): the
//! orchestrator's files and the directories stay as it left them.

use std::os::unix::fs::{chown, DirBuilderExt};
use std::path::{Path, PathBuf};

use super::args::{JailerArgs, EXEC_NAME};

/// The chroot and what was made in it.
#[derive(Debug)]
pub struct Chroot {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Chroot {
    /// Creates (or reuses) the chroot directory and gives it to the jail's identity.
    pub fn prepare(args: &JailerArgs) -> Result<Chroot, String> {
        if !args.chroot_base.is_absolute() {
            return Err(format!(
                "--chroot-base-dir {}: must be an absolute path",
                args.chroot_base.display()
            ));
        }
        let root = args.chroot_base.join(EXEC_NAME).join(&args.id).join("root");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(|e| format!("Failed to create chroot folder {}: {e}", root.display()))?;
        chown(&root, Some(args.uid), Some(args.gid))
            .map_err(|e| format!("Failed to change owner of {}: {e}", root.display()))?;
        Ok(Chroot {
            root,
            made: Vec::new(),
        })
    }

    /// The chroot directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the directories of `inside` (a path as the jailed process sees it) that are
    /// missing, owned by the jail's identity; they are removed by [`Chroot::clean`].
    pub fn make_parents(&mut self, inside: &Path, uid: u32, gid: u32) -> Result<(), String> {
        let full = self.resolve(inside);
        let mut missing = Vec::new();
        let mut dir = full.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root) && !d.exists()) {
            missing.push(d.to_owned());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            chown(&d, Some(uid), Some(gid))
                .map_err(|e| format!("changing owner of {}: {e}", d.display()))?;
            self.made.push(d);
        }
        Ok(())
    }

    /// Removes `inside` (a path as the jailed process sees it) at the end if it is left
    /// (the API socket of a program that did not end in order).
    pub fn remove_at_end(&mut self, inside: &Path) {
        let full = self.resolve(inside);
        self.made.push(full);
    }

    /// Writes `pid` to `<chroot>/<exec-file name>.pid`, as Firecracker's jailer does with
    /// `--new-pid-ns`.
    pub fn write_pid(&mut self, pid: u32) -> Result<(), String> {
        let file = self.root.join(format!("{EXEC_NAME}.pid"));
        std::fs::write(&file, format!("{pid}"))
            .map_err(|e| format!("Failed to write the pid file {}: {e}", file.display()))?;
        self.made.push(file);
        Ok(())
    }

    /// `inside` as a host path (the rule `bulkhead-firecracker` applies to API paths).
    pub fn resolve(&self, inside: &Path) -> PathBuf {
        crate::firecracker::jailed::resolve_in(&self.root, inside)
    }

    /// Removes what this jailer made, newest first (a directory only if empty).
    pub fn clean(&mut self) {
        for p in self.made.drain(..).rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
