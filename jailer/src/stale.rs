//! What a launcher that was killed (SIGKILL, a crash, the host's OOM killer) leaves behind:
//! its `--net auto` network namespaces (`/run/netns/bulkhead-<pid>-<device>`), its
//! processes' cgroups (`bulkhead/bulkhead-<pid>-<name>`), the demo's scratch disk
//! directory (`$TMPDIR/bulkhead-<pid>-XXXXXX`, [`scratch`]) and a CPUID table it was
//! writing (`/run/bulkhead/bulkhead-<pid>-kvm-cpuid.new`). Its processes died with it (the
//! parent-death signal), but these outlive them. Each `bulkhead run` removes those whose
//! launcher is no longer running ([`crate::liveness`]: its lock is free), and says so.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bulkhead::jail::cgroup::{CGROUP_ROOT, PARENT};

use crate::netns::NETNS_DIR;

mod scratch;

/// The launcher pid in a `bulkhead-<pid>-<name>` name.
fn launcher_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("bulkhead-")?;
    let (pid, device) = rest.split_once('-')?;
    (!device.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// When a resource was made (its modification time), read only if asked.
type Made<'a> = &'a dyn Fn() -> Option<SystemTime>;

/// Entries of `dir` named `bulkhead-<pid>-...` whose launcher is gone, as `running` says.
fn stale_in(dir: &Path, running: impl Fn(u32, Made) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            launcher_pid(&name.to_string_lossy()).is_some_and(|pid| {
                let made = || e.metadata().and_then(|m| m.modified()).ok();
                !running(pid, &made)
            })
        })
        .map(|e| e.path())
        .collect()
}

/// Whether a launcher is running, its lock asked once per launcher in one sweep: a VM
/// leaves a network namespace and a dozen cgroups (one per v1 controller) named after its
/// launcher, so with 60 VMs running every start's sweep opened and tried some 3000 lock
/// files, 4.5 ms of CPU. A launcher without a lock file is judged resource by resource, by
/// the resource's time ([`crate::liveness::without_lock`]).
struct Liveness<L: Fn(u32) -> Option<bool>> {
    /// What a launcher's lock says ([`crate::liveness::lock_says`]).
    lock_says: L,
    said: std::cell::RefCell<std::collections::HashMap<u32, Option<bool>>>,
}

impl<L: Fn(u32) -> Option<bool>> Liveness<L> {
    fn new(lock_says: L) -> Self {
        Liveness {
            lock_says,
            said: Default::default(),
        }
    }

    fn running(&self, pid: u32, made: Made) -> bool {
        let said = *self
            .said
            .borrow_mut()
            .entry(pid)
            .or_insert_with(|| (self.lock_says)(pid));
        said.unwrap_or_else(|| crate::liveness::without_lock(pid, made()))
    }
}

/// Before this launcher makes anything: removes the namespaces and cgroups named after its
/// own pid (a dead launcher's that had it), which would be in its way. Cheap: directory
/// listings, no liveness checks.
pub fn reap_own() -> Vec<String> {
    let own = std::process::id();
    reap_names(&|pid, _| pid != own)
}

/// Removes what launchers that are gone left behind; returns what was removed. Safe to
/// run while this launcher starts its VM (from another thread, off the start's path): its
/// own are kept, since it holds its lock ([`crate::liveness`]).
pub fn reap() -> Vec<String> {
    let liveness = Liveness::new(crate::liveness::lock_says);
    let mut removed = reap_names(&|pid, made| liveness.running(pid, made));
    let owner = nix::unistd::geteuid().as_raw();
    for dir in scratch::reap_in(&std::env::temp_dir(), owner, crate::liveness::is_running) {
        removed.push(format!("scratch disk directory {}", dir.display()));
    }
    // A kept CPUID table's unfinished write (`launch::kvm_cpuid`); nothing else in the
    // run directory is named after a launcher.
    for file in stale_in(Path::new(crate::run_dir::RUN_DIR), |pid, made| {
        liveness.running(pid, made)
    }) {
        if std::fs::remove_file(&file).is_ok() {
            removed.push(format!("unfinished file {}", file.display()));
        }
    }
    let locks = crate::liveness::remove_dead_locks();
    if locks > 0 {
        log::info!("removed {locks} lock file(s) of launchers that are gone");
    }
    removed
}

/// Removes the network namespaces and cgroups named `bulkhead-<pid>-...` whose launcher
/// `running` says is gone.
fn reap_names(running: &dyn Fn(u32, Made) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in stale_in(Path::new(NETNS_DIR), running) {
        let name = ns.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name {
            match crate::netns::delete(&name) {
                Ok(()) => removed.push(format!("network namespace {name}")),
                Err(e) => log::warn!("removing stale network namespace {name}: {e}"),
            }
        }
    }
    // The jails' parent cgroup: v2, then under each v1 controller.
    let mut parents = vec![PathBuf::from(CGROUP_ROOT).join(PARENT)];
    if let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) {
        parents.extend(controllers.flatten().map(|c| c.path().join(PARENT)));
    }
    for parent in parents {
        for cgroup in stale_in(&parent, running) {
            // A cgroup with no process left is removed with rmdir.
            match std::fs::remove_dir(&cgroup) {
                Ok(()) => removed.push(format!("cgroup {}", cgroup.display())),
                Err(e) => log::warn!("removing stale cgroup {}: {e}", cgroup.display()),
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_the_launcher_pid() {
        assert_eq!(launcher_pid("bulkhead-4242-net0"), Some(4242));
        assert_eq!(launcher_pid("bulkhead-4242-"), None);
        assert_eq!(launcher_pid("bulkhead-x-net0"), None);
        assert_eq!(launcher_pid("other-4242-net0"), None);
        // An unfinished CPUID table file is a launcher's too.
        let unfinished = crate::launch::kvm_cpuid::temporary_name(4242);
        assert_eq!(launcher_pid(&unfinished), Some(4242), "{unfinished}");
    }

    #[test]
    fn a_launcher_s_lock_is_asked_once_per_sweep() {
        let asked = std::cell::Cell::new(0);
        let liveness = Liveness::new(|pid| {
            asked.set(asked.get() + 1);
            match pid {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            }
        });
        let never = || -> Option<SystemTime> { panic!("a lock answered: no time is read") };
        for _ in 0..12 {
            assert!(liveness.running(1, &never));
            assert!(!liveness.running(2, &never));
        }
        assert_eq!(asked.get(), 2);
        // No lock file: each resource by its own time (a pid above pid_max runs nothing).
        let now = || Some(SystemTime::now());
        assert!(!liveness.running(4294967295, &now));
        assert!(!liveness.running(4294967295, &now));
        assert_eq!(asked.get(), 3);
        // This test's own process has no lock file but runs, and started before now.
        assert!(liveness.running(std::process::id(), &now));
    }

    #[test]
    fn only_gone_launchers_are_stale() {
        let dir = std::env::temp_dir().join(format!("bulkhead-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A pid that cannot exist (above pid_max) is gone, with or without a lock file.
        let gone = dir.join("bulkhead-4294967295-disk0");
        let alive = dir.join("bulkhead-4242-net0");
        let other = dir.join("unrelated");
        for d in [&gone, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let stale = stale_in(&dir, |pid, made| {
            assert!(made().is_some(), "the resource's time can be read");
            pid == 4242
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(stale.contains(&gone), "{stale:?}");
        assert!(!stale.contains(&alive), "{stale:?}");
        assert!(!stale.contains(&other), "{stale:?}");
        assert!(!crate::liveness::is_running(4294967295, None));
    }
}
