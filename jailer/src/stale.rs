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

/// Whether launcher `pid`, which made a resource at time `made`, is running. Our own pid
/// counts as gone: the reaper runs before this launcher makes anything, so what carries
/// its pid was left by a dead launcher that had the same pid.
fn is_running_launcher(pid: u32, made: Option<SystemTime>) -> bool {
    pid != std::process::id() && crate::liveness::is_running(pid, made)
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

/// Removes what launchers that are gone left behind; returns what was removed.
pub fn reap() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in stale_in(Path::new(NETNS_DIR), is_running_launcher) {
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
        for cgroup in stale_in(&parent, is_running_launcher) {
            // A cgroup with no process left is removed with rmdir.
            match std::fs::remove_dir(&cgroup) {
                Ok(()) => removed.push(format!("cgroup {}", cgroup.display())),
                Err(e) => log::warn!("removing stale cgroup {}: {e}", cgroup.display()),
            }
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owner = unsafe { libc::geteuid() };
    for dir in scratch::reap_in(&std::env::temp_dir(), owner, crate::liveness::is_running) {
        removed.push(format!("scratch disk directory {}", dir.display()));
    }
    let locks = crate::liveness::remove_dead_locks();
    if locks > 0 {
        log::info!("removed {locks} lock file(s) of launchers that are gone");
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
        assert!(!is_running_launcher(4294967295, None));
        // Ours: reaping runs before this launcher makes anything.
        assert!(!is_running_launcher(std::process::id(), None));
    }
}
