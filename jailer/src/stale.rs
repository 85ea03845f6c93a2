//! What a launcher that was killed (SIGKILL, a crash, the host's OOM killer) leaves behind:
//! its `--net auto` network namespaces (`/run/netns/bulkhead-<pid>-<device>`), its
//! processes' cgroups (`bulkhead/bulkhead-<pid>-<name>`) and the demo's scratch disk
//! directory (`$TMPDIR/bulkhead-<pid>-XXXXXX`, [`scratch`]). Its processes died with it (the
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

/// Entries of `dir` named `bulkhead-<pid>-...` whose launcher is gone, as `running` says.
fn stale_in(dir: &Path, running: impl Fn(u32, Option<SystemTime>) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            launcher_pid(&name.to_string_lossy()).is_some_and(|pid| {
                let made = e.metadata().and_then(|m| m.modified()).ok();
                !running(pid, made)
            })
        })
        .map(|e| e.path())
        .collect()
}

/// Before this launcher makes anything: removes the namespaces and cgroups named after its
/// own pid (a dead launcher's that had it), which would be in its way. Cheap: directory
/// listings, no liveness checks.
pub fn reap_own() -> Vec<String> {
    let own = std::process::id();
    reap_names(|pid, _| pid != own)
}

/// Removes what launchers that are gone left behind; returns what was removed. Safe to
/// run while this launcher starts its VM (from another thread, off the start's path): its
/// own are kept, since it holds its lock ([`crate::liveness`]).
pub fn reap() -> Vec<String> {
    let mut removed = reap_names(crate::liveness::is_running);
    let owner = nix::unistd::geteuid().as_raw();
    for dir in scratch::reap_in(&std::env::temp_dir(), owner, crate::liveness::is_running) {
        removed.push(format!("scratch disk directory {}", dir.display()));
    }
    let locks = crate::liveness::remove_dead_locks();
    if locks > 0 {
        log::info!("removed {locks} lock file(s) of launchers that are gone");
    }
    removed
}

/// Removes the network namespaces and cgroups named `bulkhead-<pid>-...` whose launcher
/// `running` says is gone.
fn reap_names(running: impl Fn(u32, Option<SystemTime>) -> bool + Copy) -> Vec<String> {
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
            assert!(made.is_some(), "the resource's time is read");
            pid == 4242
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(stale.contains(&gone), "{stale:?}");
        assert!(!stale.contains(&alive), "{stale:?}");
        assert!(!stale.contains(&other), "{stale:?}");
        assert!(!crate::liveness::is_running(4294967295, None));
    }
}
