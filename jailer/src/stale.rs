//! What a launcher that was killed (SIGKILL, a crash, the host's OOM killer) leaves behind:
//! its `--net auto` network namespaces (`/run/netns/bulkhead-<pid>-<device>`) and its
//! processes' cgroups (`bulkhead/bulkhead-<pid>-<name>`). Its processes died with it (the
//! parent-death signal), but these outlive them. Each `bulkhead run` removes those whose
//! launcher is no longer running, and says so.

use std::path::{Path, PathBuf};

use bulkhead::jail::cgroup::{CGROUP_ROOT, PARENT};

use crate::netns::{ip, NETNS_DIR};

/// The launcher pid in a `bulkhead-<pid>-<name>` name.
fn launcher_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("bulkhead-")?;
    let (pid, device) = rest.split_once('-')?;
    (!device.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Whether `pid` is a running `bulkhead` (its name, as the kernel keeps it).
fn is_running_launcher(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "bulkhead")
}

/// Entries of `dir` named `bulkhead-<pid>-...` whose launcher is gone.
fn stale_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            launcher_pid(&name.to_string_lossy()).is_some_and(|pid| !is_running_launcher(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// Removes what launchers that are gone left behind; returns what was removed.
pub fn reap() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in stale_in(Path::new(NETNS_DIR)) {
        let name = ns.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name {
            match ip(
                "removing a stale network namespace",
                &["netns", "delete", &name],
            ) {
                Ok(()) => removed.push(format!("network namespace {name}")),
                Err(e) => log::warn!("{e}"),
            }
        }
    }
    // The jails' parent cgroup: v2, then under each v1 controller.
    let mut parents = vec![PathBuf::from(CGROUP_ROOT).join(PARENT)];
    if let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) {
        parents.extend(controllers.flatten().map(|c| c.path().join(PARENT)));
    }
    for parent in parents {
        for cgroup in stale_in(&parent) {
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
        // This test's own process is running but is not a launcher named bulkhead; a pid
        // that cannot exist (above pid_max) is gone.
        let gone = dir.join("bulkhead-4294967295-disk0");
        let mine = dir.join(format!("bulkhead-{}-disk0", std::process::id()));
        let other = dir.join("unrelated");
        for d in [&gone, &mine, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let stale = stale_in(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(stale.contains(&gone), "{stale:?}");
        assert!(!stale.contains(&other), "{stale:?}");
        // Not named bulkhead: its pid runs, but no launcher of ours.
        assert!(stale.contains(&mine), "{stale:?}");
    }
}
