//! `--cgroup FILE=VALUE`, `--cgroup-version` and `--parent-cgroup` as Firecracker's jailer
//! reads them: a cgroup `<parent-cgroup or exec-file name>/<id>` (v2: in the unified
//! hierarchy; v1: in each hierarchy of the files' controllers, `pids.max` in `pids/`) with
//! the files written, holding `bulkhead-firecracker` and its launcher. The VM's own
//! processes (vmm, devices) are moved by the launcher into bulkhead's per-process cgroups
//! `bulkhead/<id>` with their own limits (see the README), so these limits bound the API
//! process and the launcher.

use std::fs;
use std::path::{Path, PathBuf};

use bulkhead::jail::cgroup::CGROUP_ROOT;

/// The created cgroup (one leaf for v2, one per controller for v1).
#[derive(Debug)]
pub struct FcCgroup {
    /// The cgroups the process joins.
    leaves: Vec<PathBuf>,
    /// Every directory created, in creation order.
    made: Vec<PathBuf>,
}

impl FcCgroup {
    /// Creates the cgroup and writes the files; `None` without `--cgroup` flags.
    pub fn create(
        parent: &str,
        id: &str,
        version: u8,
        files: &[(String, String)],
    ) -> Result<Option<FcCgroup>, String> {
        if files.is_empty() {
            return Ok(None);
        }
        let root = Path::new(CGROUP_ROOT);
        let mut cg = FcCgroup {
            leaves: Vec::new(),
            made: Vec::new(),
        };
        let made = cg.make(root, parent, id, version, files);
        match made {
            Ok(()) => Ok(Some(cg)),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn make(
        &mut self,
        root: &Path,
        parent: &str,
        id: &str,
        version: u8,
        files: &[(String, String)],
    ) -> Result<(), String> {
        let v2 = root.join("cgroup.controllers");
        match version {
            2 if !v2.exists() => {
                return Err(format!(
                    "--cgroup-version 2: no cgroup v2 hierarchy at {CGROUP_ROOT}"
                ))
            }
            2 => {
                let dir = self.leaf(root, parent, id)?;
                enable_controllers(root, parent, files)?;
                write_files(&dir, files.iter())?;
            }
            _ => {
                for controller in controllers(files) {
                    let hierarchy = root.join(controller);
                    if !hierarchy.join("cgroup.procs").exists() {
                        return Err(format!(
                            "--cgroup {controller}.*: no cgroup v1 {controller} hierarchy at {}",
                            hierarchy.display()
                        ));
                    }
                    let dir = self.leaf(&hierarchy, parent, id)?;
                    let prefix = format!("{controller}.");
                    write_files(&dir, files.iter().filter(|(f, _)| f.starts_with(&prefix)))?;
                }
            }
        }
        Ok(())
    }

    /// Creates `<hierarchy>/<parent>/<id>` (it must not exist: the id is unique).
    fn leaf(&mut self, hierarchy: &Path, parent: &str, id: &str) -> Result<PathBuf, String> {
        let dir = hierarchy.join(parent).join(id);
        if dir.exists() {
            return Err(format!(
                "Failed to create cgroup {}: it exists",
                dir.display()
            ));
        }
        let mut missing = Vec::new();
        let mut d = Some(dir.as_path());
        while let Some(p) = d.filter(|p| !p.exists()) {
            missing.push(p.to_owned());
            d = p.parent();
        }
        for m in missing.into_iter().rev() {
            fs::create_dir(&m)
                .map_err(|e| format!("Failed to create cgroup {}: {e}", m.display()))?;
            self.made.push(m);
        }
        self.leaves.push(dir.clone());
        Ok(dir)
    }

    /// The `cgroup.procs` files to join.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.leaves.iter().map(|l| l.join("cgroup.procs")).collect()
    }

    /// Removes every directory made (its processes have ended), deepest first.
    pub fn remove(&mut self) {
        for m in self.made.drain(..).rev() {
            let _ = fs::remove_dir(m);
        }
        self.leaves.clear();
    }
}

/// The controllers of the files (`pids` of `pids.max`), in order, once each.
fn controllers(files: &[(String, String)]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in files.iter().filter_map(|(f, _)| f.split('.').next()) {
        if c != "cgroup" && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn write_files<'a>(
    dir: &Path,
    files: impl Iterator<Item = &'a (String, String)>,
) -> Result<(), String> {
    for (file, value) in files {
        let path = dir.join(file);
        fs::write(&path, value)
            .map_err(|e| format!("Failed to write {value:?} to {}: {e}", path.display()))?;
    }
    Ok(())
}

/// v2: enables the files' controllers from the root down to `parent`.
fn enable_controllers(root: &Path, parent: &str, files: &[(String, String)]) -> Result<(), String> {
    let mut level = root.to_path_buf();
    let mut levels = vec![level.clone()];
    for c in Path::new(parent).components() {
        level.push(c);
        levels.push(level.clone());
    }
    for level in levels {
        for c in controllers(files) {
            let path = level.join("cgroup.subtree_control");
            fs::write(&path, format!("+{c}")).map_err(|e| {
                format!(
                    "Failed to enable the {c} controller in {}: {e}",
                    path.display()
                )
            })?;
        }
    }
    Ok(())
}
