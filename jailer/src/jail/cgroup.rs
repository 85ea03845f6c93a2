//! A cgroup per jailed process, with memory, CPU and pids limits where the host offers the
//! controllers: cgroup v2 when the unified root lists `memory` and `cpu`, otherwise the v1
//! hierarchies that exist (`memory`, `cpu`, `pids`). Which one is used is logged and
//! queryable ([`Cgroup::version`]). The cgroup is `bulkhead/<id>` in each hierarchy and is
//! removed (with `bulkhead/` when empty) once the process has been reaped.
//!
//! **A process is born in its cgroup** ([`Cgroup::entry`]): it never runs a line of its
//! program outside it, and the costly way in is avoided.
//! - v2: `clone3` with `CLONE_INTO_CGROUP` and the leaf's directory fd.
//! - v1 (no such flag): the child, between clone and exec and still single-threaded,
//!   writes "0" to each hierarchy's `tasks` file. Moving a process from outside (its pid
//!   into `cgroup.procs` or `tasks`) takes the kernel's `cgroup_threadgroup_rwsem` for
//!   writing, which waits for an RCU grace period whenever no migration happened in the
//!   last one; a thread moving itself ("0" into `tasks`) skips that lock, the kernel's own
//!   exception for a task that cannot exit or exec under it. Measured on the CI host (kernel
//!   6.18, v1 memory hierarchy, 9 moves each 0.3 s apart so that every one comes after an
//!   idle period): pid into `cgroup.procs` from the parent 11.1 ms median (5.6 to 33.8),
//!   pid into `tasks` 14.3 ms (6.3 to 14.7), the child's own "0" into `tasks` 0.31 ms (0.29
//!   to 0.40). Back-to-back moves all but the first are fast (0.2 ms), which is why one
//!   launcher starting four processes paid about one grace period per VM. Every limit
//!   stays: the same cgroups, the same controllers, entered before exec.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The usual mount point of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory, in each hierarchy, that holds one cgroup per jailed process.
pub const PARENT: &str = "bulkhead";
/// The CPU bandwidth period for `cpus` limits, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits of a jailed process's cgroup; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory, in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_max: Option<u64>,
    /// CPU time as a number of CPUs, e.g. 0.5 (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
    pub cpus: Option<f64>,
    /// Processes and threads (`pids.max`).
    pub pids_max: Option<u64>,
}

/// Which cgroup interface is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy.
    V2,
    /// Per-controller hierarchies.
    V1,
}

/// Why a cgroup could not be set up or removed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct CgroupError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// How a jailed process gets into its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupEntry {
    /// Born there ([`Cgroup::entry`]): the default.
    #[default]
    Born,
    /// Moved there by the parent between clone and exec (its pid into `cgroup.procs`), as
    /// earlier versions did: slower on v1, kept to measure the difference
    /// (`BULKHEAD_START=serial`).
    Moved,
}

/// How a child enters its cgroup, opened by the parent before clone (see [`Cgroup::entry`]).
#[derive(Debug)]
pub enum Entry {
    /// v2: the leaf directory, for `clone3(CLONE_INTO_CGROUP)`.
    Clone(OwnedFd),
    /// v1: the `tasks` file of each hierarchy, written "0" by the child itself.
    Tasks(Vec<OwnedFd>),
}

/// A created cgroup (in one or several hierarchies).
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    /// The per-process directories (one for v2, one per controller for v1).
    leaves: Vec<PathBuf>,
}

/// Which interface `root` offers for memory and CPU limits, if any.
pub fn detect(root: &Path) -> Option<CgroupVersion> {
    let v2 = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let listed: Vec<&str> = v2.split_whitespace().collect();
    if listed.contains(&"memory") && listed.contains(&"cpu") {
        return Some(CgroupVersion::V2);
    }
    if v1_controllers(root).is_empty() {
        None
    } else {
        Some(CgroupVersion::V1)
    }
}

/// The v1 hierarchies of interest that exist under `root`.
fn v1_controllers(root: &Path) -> Vec<&'static str> {
    ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| root.join(c).join("cgroup.procs").is_file())
        .collect()
}

impl Cgroup {
    /// Creates `bulkhead/<id>` with `limits` under `root`; `Ok(None)` where the host offers
    /// no controllers (logged). Fails if the cgroup already exists (ids must be unique).
    pub fn create(
        root: &Path,
        id: &str,
        limits: &CgroupLimits,
    ) -> Result<Option<Cgroup>, CgroupError> {
        let Some(version) = detect(root) else {
            log::warn!(
                "jail {id}: no cgroup controllers under {}; no memory or CPU limits",
                root.display()
            );
            return Ok(None);
        };
        let mut cgroup = Cgroup {
            version,
            leaves: Vec::new(),
        };
        let mut enable = String::new();
        if version == CgroupVersion::V2 {
            match enable_v2(root) {
                Ok(line) => enable = line,
                Err(e) => {
                    // E.g. a container whose cgroup holds processes (the "no internal
                    // processes" rule): the host does not offer the controllers to us.
                    log::warn!("jail {id}: cgroup v2 controllers cannot be enabled ({e}); no memory or CPU limits");
                    return Ok(None);
                }
            }
        }
        let made = match version {
            CgroupVersion::V2 => cgroup.create_v2(root, id, &enable, limits),
            CgroupVersion::V1 => cgroup.create_v1(root, id, limits),
        };
        if let Err(e) = made {
            // Nothing is in it yet: undo what was made.
            let _ = cgroup.remove();
            return Err(e);
        }
        log::info!("jail {id}: cgroup {version:?} at {:?}", cgroup.leaves);
        Ok(Some(cgroup))
    }

    fn create_v2(
        &mut self,
        root: &Path,
        id: &str,
        enable: &str,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        let leaf = mkdir_leaf(&root.join(PARENT), id, |parent| {
            write(&parent.join("cgroup.subtree_control"), enable)
        })?;
        self.leaves.push(leaf.clone());
        if let Some(bytes) = limits.memory_max {
            write(&leaf.join("memory.max"), &bytes.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            write(
                &leaf.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", quota_us(cpus)),
            )?;
        }
        if let Some(pids) = limits.pids_max {
            write(&leaf.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn create_v1(
        &mut self,
        root: &Path,
        id: &str,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        for controller in v1_controllers(root) {
            let leaf = mkdir_leaf(&root.join(controller).join(PARENT), id, |_| Ok(()))?;
            self.leaves.push(leaf.clone());
            match controller {
                "memory" => {
                    if let Some(bytes) = limits.memory_max {
                        write(&leaf.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                }
                "cpu" => {
                    if let Some(cpus) = limits.cpus {
                        write(&leaf.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&leaf.join("cpu.cfs_quota_us"), &quota_us(cpus).to_string())?;
                    }
                }
                _ => {
                    if let Some(pids) = limits.pids_max {
                        write(&leaf.join("pids.max"), &pids.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A cgroup v2 leaf made elsewhere (tests of `CLONE_INTO_CGROUP` on a unified
    /// hierarchy that offers no controllers).
    #[cfg(test)]
    pub(crate) fn v2_at(leaf: PathBuf) -> Cgroup {
        Cgroup {
            version: CgroupVersion::V2,
            leaves: vec![leaf],
        }
    }

    /// Which interface this cgroup uses.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The per-process directories.
    pub fn paths(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// Moves process `pid` into the cgroup (every hierarchy) from outside. Slow on v1 (see
    /// the module doc): the jailer has its child enter by itself ([`Cgroup::entry`]).
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for leaf in &self.leaves {
            write(&leaf.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// What a child needs to be born in the cgroup, opened before clone: on v2 the leaf
    /// directory, for `clone3(CLONE_INTO_CGROUP)`; on v1 each hierarchy's `tasks` file, to
    /// which the child, still single-threaded, writes "0" (itself) before it executes.
    pub fn entry(&self) -> Result<Entry, CgroupError> {
        let open = |path: PathBuf, directory: bool| {
            let mut options = fs::OpenOptions::new();
            if directory {
                options.read(true).custom_flags(libc::O_DIRECTORY);
            } else {
                options.write(true);
            }
            options
                .open(&path)
                .map(OwnedFd::from)
                .map_err(|source| error("opening cgroup", &path, source))
        };
        Ok(match self.version {
            CgroupVersion::V2 => Entry::Clone(open(self.leaves[0].clone(), true)?),
            CgroupVersion::V1 => Entry::Tasks(
                self.leaves
                    .iter()
                    .map(|leaf| open(leaf.join("tasks"), false))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Removes the per-process directories (once their processes have been reaped; a
    /// cgroup empties a moment after, so a busy one is retried for up to a second), and the
    /// `bulkhead/` parents that are left empty.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for leaf in self.leaves.drain(..) {
            if let Err(e) = rmdir_retrying(&leaf) {
                first_error.get_or_insert(e);
            }
            if let Some(parent) = leaf.parent() {
                // Other jails may still use it: only an empty parent goes.
                let _ = fs::remove_dir(parent);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Enables memory, cpu and pids (those the root lists) for the children of `root`, unless
/// they already are; returns them as a `subtree_control` line.
fn enable_v2(root: &Path) -> Result<String, CgroupError> {
    let listed = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let control = root.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    let has = |list: &str, c: &str| list.split_whitespace().any(|l| l == c);
    let wanted: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| has(&listed, c))
        .collect();
    let line = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if !wanted.iter().all(|c| has(&enabled, c)) {
        write(&control, &line)?;
    }
    Ok(line)
}

/// CPUs as a quota per period, at least 1 ms (the kernel's minimum).
fn quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

fn rmdir_retrying(dir: &Path) -> Result<(), CgroupError> {
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => return other.map_err(|source| error("removing cgroup", dir, source)),
        }
    }
    Err(error(
        "removing cgroup",
        dir,
        io::Error::from_raw_os_error(libc::EBUSY),
    ))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| error("writing cgroup file", path, source))
}

/// Makes `parent/id`, and `parent` (then `prepare`s it) if need be. Another launcher
/// removes `parent` when its own last jail under it goes (`remove`), which can land between
/// making `parent` and making `id` in it: then `parent` is made and prepared again, a few
/// times at most.
fn mkdir_leaf(
    parent: &Path,
    id: &str,
    prepare: impl Fn(&Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    let leaf = parent.join(id);
    let mut attempts = 0;
    loop {
        mkdir_all(parent)?;
        prepare(parent)?;
        match fs::create_dir(&leaf) {
            Ok(()) => return Ok(leaf),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(source) => return Err(error("creating cgroup", &leaf, source)),
        }
    }
}

fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| error("creating cgroup", path, source))
}

fn error(action: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup root in a temporary directory (plain files stand for the kernel's).
    fn fake_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "bulkhead-cgroup-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn v2_is_preferred_when_it_has_memory_and_cpu() {
        let root = fake_root("v2");
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("memory")).unwrap();
        fs::write(root.join("memory/cgroup.procs"), "").unwrap();
        assert_eq!(detect(&root), Some(CgroupVersion::V2));
        let limits = CgroupLimits {
            memory_max: Some(64 << 20),
            cpus: Some(0.5),
            pids_max: Some(16),
        };
        let cgroup = Cgroup::create(&root, "vm1-blk", &limits).unwrap().unwrap();
        let leaf = root.join("bulkhead/vm1-blk");
        assert_eq!(cgroup.paths(), std::slice::from_ref(&leaf));
        assert_eq!(
            fs::read_to_string(leaf.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(leaf.join("pids.max")).unwrap(), "16");
        assert_eq!(
            fs::read_to_string(root.join("bulkhead/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        // A second jail with the same id is refused.
        assert!(Cgroup::create(&root, "vm1-blk", &limits).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_uses_the_hierarchies_that_exist() {
        let root = fake_root("v1");
        fs::write(root.join("cgroup.controllers"), "").unwrap();
        for c in ["memory", "cpu"] {
            fs::create_dir_all(root.join(c)).unwrap();
            fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(detect(&root), Some(CgroupVersion::V1));
        let limits = CgroupLimits {
            memory_max: Some(1 << 20),
            cpus: Some(2.0),
            pids_max: Some(4),
        };
        let cgroup = Cgroup::create(&root, "x", &limits).unwrap().unwrap();
        assert_eq!(cgroup.version(), CgroupVersion::V1);
        assert_eq!(cgroup.paths().len(), 2, "no pids hierarchy, no pids cgroup");
        let mem = root.join("memory/bulkhead/x/memory.limit_in_bytes");
        assert_eq!(fs::read_to_string(mem).unwrap(), "1048576");
        let quota = root.join("cpu/bulkhead/x/cpu.cfs_quota_us");
        assert_eq!(fs::read_to_string(quota).unwrap(), "200000");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn no_controllers_no_cgroup() {
        let root = fake_root("none");
        assert_eq!(detect(&root), None);
        assert!(Cgroup::create(&root, "x", &CgroupLimits::default())
            .unwrap()
            .is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn tiny_cpu_shares_get_the_minimum_quota() {
        assert_eq!(quota_us(0.001), 1000);
        assert_eq!(quota_us(1.5), 150_000);
    }
}
