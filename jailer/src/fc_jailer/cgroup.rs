//! `--cgroup FILE=VALUE` and `--parent-cgroup`: a cgroup v2
//! `<parent-cgroup or exec-file name>/<id>` with those files written, holding
//! `bulkhead-firecracker` and its launcher. The VM's own processes (vmm, devices) are moved
//! by the launcher into bulkhead's per-process cgroups, `bulkhead/<id>` with their own
//! limits (see the README): these limits bound the API process and the launcher.

use std::fs;
use std::path::{Path, PathBuf};

use bulkhead::jail::cgroup::{detect, CgroupVersion, CGROUP_ROOT};

/// The created cgroup.
#[derive(Debug)]
pub struct FcCgroup {
    leaf: PathBuf,
    /// The parent, if this jailer created it (removed when empty).
    parent_made: Option<PathBuf>,
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
        if detect(root) != Some(CgroupVersion::V2) {
            return Err(format!(
                "--cgroup: this jailer needs cgroup v2 at {CGROUP_ROOT} (the host has none)"
            ));
        }
        if version != 2 {
            log::warn!("--cgroup-version {version}: the host's cgroup v2 is used");
        }
        let parent_dir = root.join(parent);
        let parent_made = if parent_dir.exists() {
            None
        } else {
            fs::create_dir_all(&parent_dir)
                .map_err(|e| format!("Failed to create cgroup {}: {e}", parent_dir.display()))?;
            Some(parent_dir.clone())
        };
        let leaf = parent_dir.join(id);
        let mut cg = FcCgroup {
            leaf: leaf.clone(),
            parent_made,
        };
        if let Err(e) = fs::create_dir(&leaf) {
            cg.leaf = PathBuf::new();
            cg.remove();
            return Err(format!("Failed to create cgroup {}: {e}", leaf.display()));
        }
        let written = enable_controllers(root, &parent_dir, files).and_then(|()| {
            files.iter().try_for_each(|(file, value)| {
                let path = leaf.join(file);
                fs::write(&path, value)
                    .map_err(|e| format!("Failed to write {value:?} to {}: {e}", path.display()))
            })
        });
        if let Err(e) = written {
            cg.remove();
            return Err(e);
        }
        Ok(Some(cg))
    }

    /// Its `cgroup.procs`.
    pub fn procs(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }

    /// Removes the cgroup (its processes have ended) and the parent if this jailer made it.
    pub fn remove(&mut self) {
        if !self.leaf.as_os_str().is_empty() {
            let _ = fs::remove_dir(&self.leaf);
        }
        if let Some(p) = self.parent_made.take() {
            let _ = fs::remove_dir(p);
        }
    }
}

/// Enables each file's controller (`memory` of `memory.max`) from the root down to `parent`.
fn enable_controllers(
    root: &Path,
    parent: &Path,
    files: &[(String, String)],
) -> Result<(), String> {
    let mut controllers: Vec<&str> = files
        .iter()
        .filter_map(|(f, _)| f.split('.').next())
        .filter(|c| *c != "cgroup")
        .collect();
    controllers.dedup();
    let mut dir = root.to_path_buf();
    let rel = parent.strip_prefix(root).unwrap_or(parent);
    let mut levels = vec![dir.clone()];
    for c in rel.components() {
        dir.push(c);
        levels.push(dir.clone());
    }
    for level in levels {
        for c in &controllers {
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
