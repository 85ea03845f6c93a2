//! What a stopped VM must not leave behind, looked for from outside: its processes (by
//! pid and start time), any process still running as the VM's own uid, its network
//! namespaces (`/run/netns/bulkhead-<launcher pid>-*`, which held its TAPs), its cgroups
//! (`bulkhead-<launcher pid>-*` under each hierarchy's `bulkhead/`), its launcher's lock in
//! `/run/bulkhead`, and a scratch directory of its in the temporary directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::procs::{self, Proc};

/// A VM as the check knows it.
pub struct Owner {
    pub vm: usize,
    pub launcher: u32,
    /// Its processes, seen while it ran.
    pub procs: Vec<Proc>,
    /// Its own uid, when it ran confined (0 or none otherwise).
    pub uid: Option<u32>,
}

/// Where to look (the real places, or a test's scratch copies).
pub struct Places {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub run_dir: PathBuf,
    pub tmp: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places {
            netns: PathBuf::from("/run/netns"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
            run_dir: PathBuf::from(crate::run_dir::RUN_DIR),
            tmp: std::env::temp_dir(),
        }
    }
}

/// Every leftover of `owners`, each named with its VM; empty when nothing is left.
pub fn find(owners: &[Owner], at: &Places) -> Vec<String> {
    let mut left = Vec::new();
    for o in owners {
        let who = format!("VM {} (launcher pid {})", o.vm, o.launcher);
        for p in o.procs.iter().filter(|p| procs::alive(p)) {
            left.push(format!("{who}: process {} ({}) still runs", p.pid, p.comm));
        }
        let prefix = format!("bulkhead-{}-", o.launcher);
        for ns in named(&at.netns, &prefix) {
            left.push(format!("{who}: network namespace {}", ns.display()));
        }
        for cg in cgroups(&at.cgroup, &prefix) {
            left.push(format!("{who}: cgroup {}", cg.display()));
        }
        let lock = at.run_dir.join(format!("launcher-{}.lock", o.launcher));
        if lock.exists() {
            left.push(format!("{who}: launcher lock {}", lock.display()));
        }
        for d in named(&at.tmp, &prefix) {
            left.push(format!("{who}: scratch {}", d.display()));
        }
    }
    let uids: HashSet<u32> = owners
        .iter()
        .filter_map(|o| o.uid)
        .filter(|&u| u != 0)
        .collect();
    for (pid, uid) in procs::with_uids(&uids) {
        left.push(format!("process {pid} still runs as VM uid {uid}"));
    }
    left
}

/// The entries of `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// `prefix`ed cgroups under `root/bulkhead` (cgroup v2 alone) and `root/*/bulkhead` (each
/// v1 hierarchy, and v2 mounted at `unified`).
fn cgroups(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let parent = bulkhead::jail::cgroup::PARENT;
    let mut out = named(&root.join(parent), prefix);
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            out.extend(named(&e.path().join(parent), prefix));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_leftover_is_named_and_others_are_not() {
        let base =
            std::env::temp_dir().join(format!("bulkhead-density-left-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let at = Places {
            netns: base.join("netns"),
            cgroup: base.join("cg"),
            run_dir: base.join("run"),
            tmp: base.join("tmp"),
        };
        for d in [
            at.netns.clone(),
            at.cgroup.join("memory/bulkhead/bulkhead-77-vmm"),
            at.cgroup.join("pids/bulkhead/bulkhead-78-vmm"),
            at.run_dir.clone(),
            at.tmp.join("bulkhead-77-abcdef"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(at.netns.join("bulkhead-77-net0"), "").unwrap();
        std::fs::write(at.netns.join("bulkhead-770-net0"), "").unwrap();
        std::fs::write(at.run_dir.join("launcher-77.lock"), "").unwrap();
        let me = procs::proc_of(std::process::id()).unwrap();
        let owner = |vm, launcher, procs| Owner {
            vm,
            launcher,
            procs,
            uid: None,
        };
        let left = find(&[owner(0, 77, vec![me.clone()]), owner(1, 79, vec![])], &at);
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(left.len(), 5, "{left:#?}");
        assert!(
            left[0].contains(&format!("process {} ", me.pid)),
            "{left:#?}"
        );
        assert!(left.iter().any(|l| l.ends_with("netns/bulkhead-77-net0")));
        assert!(left
            .iter()
            .any(|l| l.ends_with("memory/bulkhead/bulkhead-77-vmm")));
        assert!(left.iter().any(|l| l.contains("launcher-77.lock")));
        assert!(left.iter().any(|l| l.ends_with("tmp/bulkhead-77-abcdef")));
        assert!(left.iter().all(|l| l.starts_with("VM 0 (launcher pid 77)")));
    }
}
