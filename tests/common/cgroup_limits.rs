//! The cgroup limits a process runs under, read from outside: which controllers this host
//! offers (from the mounts, not from what the jailer made), the cgroup of each that the
//! process is in (`/proc/<pid>/cgroup`) and its limit files. A test compares them with
//! [`Limits::expected`], so a host without a controller expects no limit for it by name,
//! and a controller the host has must carry the exact limit.
//!
//! Included with `#[path]` by the tests that need it (it is no part of `common/mod.rs`).

use std::path::PathBuf;

/// The three limits bulkhead sets; `None` where this host has no such controller.
#[derive(Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (`memory.max`, v1 `memory.limit_in_bytes`).
    pub memory: Option<String>,
    /// Quota and period in µs (`cpu.max`, v1 `cpu.cfs_quota_us cpu.cfs_period_us`).
    pub cpu: Option<String>,
    /// Tasks (`pids.max`).
    pub pids: Option<String>,
}

/// How this host offers the controllers: the jailer's rule (v2 when the unified root lists
/// memory and cpu, else the v1 hierarchies), seen from the mounts.
#[derive(Debug, PartialEq, Eq)]
pub enum Host {
    /// cgroup v2 at this mount point, with these controllers.
    V2(PathBuf, Vec<String>),
    /// cgroup v1: (controller, mount point) for memory, cpu and pids where mounted.
    V1(Vec<(String, PathBuf)>),
}

/// The mounts of type `fstype`: (mount point, super options).
fn mounts(fstype: &str) -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let (kind, options) = (r.next()?, r.nth(1)?);
            (kind == fstype).then(|| (PathBuf::from(point), options.to_owned()))
        })
        .collect()
}

/// What this host offers.
pub fn host() -> Host {
    for (point, _) in mounts("cgroup2") {
        if point == std::path::Path::new("/sys/fs/cgroup") {
            let listed =
                std::fs::read_to_string(point.join("cgroup.controllers")).unwrap_or_default();
            let listed: Vec<String> = listed.split_whitespace().map(str::to_owned).collect();
            if listed.iter().any(|c| c == "memory") && listed.iter().any(|c| c == "cpu") {
                return Host::V2(point, listed);
            }
        }
    }
    let mut v1 = Vec::new();
    for (point, options) in mounts("cgroup") {
        for controller in ["memory", "cpu", "pids"] {
            if options.split(',').any(|o| o == controller) {
                v1.push((controller.to_owned(), point.clone()));
            }
        }
    }
    Host::V1(v1)
}

impl Limits {
    /// What a process given these limits must show on this host: each limit where the host
    /// has its controller, `None` where it has not.
    pub fn expected(host: &Host, memory: u64, cpu_quota_us: u64, pids: u64) -> Limits {
        let has = |c: &str| match host {
            Host::V2(_, listed) => listed.iter().any(|l| l == c),
            Host::V1(v1) => v1.iter().any(|(l, _)| l == c),
        };
        Limits {
            memory: has("memory").then(|| memory.to_string()),
            // Read back as "quota period" under either version.
            cpu: has("cpu").then(|| format!("{cpu_quota_us} 100000")),
            pids: has("pids").then(|| pids.to_string()),
        }
    }

    /// The limits process `pid` runs under, read through its cgroups on `host`.
    pub fn of(pid: u32, host: &Host) -> Limits {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        // (controllers, path) per line: `4:memory:/bulkhead/x`, v2's `0::/x`.
        let paths: Vec<(&str, &str)> = membership
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                Some((controllers, path.trim_start_matches('/')))
            })
            .collect();
        let read = |dir: PathBuf, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        match host {
            Host::V2(point, _) => {
                let dir = paths
                    .iter()
                    .find(|(c, _)| c.is_empty())
                    .map(|(_, p)| point.join(p));
                let file = |f: &str| dir.clone().and_then(|d| read(d, f));
                Limits {
                    memory: file("memory.max"),
                    cpu: file("cpu.max"),
                    pids: file("pids.max"),
                }
            }
            Host::V1(v1) => {
                let dir = |controller: &str| {
                    let point = v1.iter().find(|(c, _)| c == controller)?.1.clone();
                    let path = paths
                        .iter()
                        .find(|(c, _)| c.split(',').any(|c| c == controller))?
                        .1;
                    Some(point.join(path))
                };
                Limits {
                    memory: dir("memory").and_then(|d| read(d, "memory.limit_in_bytes")),
                    cpu: dir("cpu").and_then(|d| {
                        Some(format!(
                            "{} {}",
                            read(d.clone(), "cpu.cfs_quota_us")?,
                            read(d, "cpu.cfs_period_us")?
                        ))
                    }),
                    pids: dir("pids").and_then(|d| read(d, "pids.max")),
                }
            }
        }
    }
}
