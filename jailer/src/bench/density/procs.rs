//! What `/proc` tells about the processes of a VM: the tree under a launcher, each
//! process's CPU time (every thread's, in nanoseconds, from `schedstat`), its proportional
//! memory (`smaps_rollup`: PSS, and the part of it that is shared memory, i.e. guest
//! memory), the host's MemAvailable, and whether a process seen earlier still runs (its
//! start time tells a reused pid apart).

use std::collections::HashSet;

/// A process seen once, named by its pid and start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// `/proc/PID/comm` (at most 15 bytes: `bulkhead-consol`).
    pub comm: String,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start: u64,
}

/// The fields of `/proc/PID/stat` after the command name, which may hold spaces and
/// parentheses (so the text is cut at the last `)`); index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process `pid` as it is now, if it runs.
pub fn proc_of(pid: u32) -> Option<Proc> {
    let start = stat_fields(pid)?.get(19)?.parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(Proc {
        pid,
        comm: comm.trim_end().to_string(),
        start,
    })
}

/// Whether `p` still exists (a zombie counts: it is not reaped yet).
pub fn alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start == p.start)
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// `root` and every process under it, `root` first.
pub fn tree(root: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    let mut seen = HashSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(p) = proc_of(pid) {
            out.push(p);
            todo.extend(children(pid));
        }
    }
    out
}

/// CPU time of every live thread of `pid` in nanoseconds (first field of each thread's
/// `schedstat`: time on a CPU); 0 when it is gone.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `Pss` and `Pss_Shmem` of `pid` in KiB, from `/proc/PID/smaps_rollup`.
pub fn pss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((kib_field(&text, "Pss:")?, kib_field(&text, "Pss_Shmem:")?))
}

/// The KiB value of `name` in a `/proc` file of `Name: value kB` lines.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The host's MemAvailable in KiB.
pub fn mem_available_kib() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    kib_field(&text, "MemAvailable:").ok_or_else(|| "/proc/meminfo has no MemAvailable".into())
}

/// The real uid of `pid`.
pub fn uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every process whose real uid is one of `uids`.
pub fn with_uids(uids: &HashSet<u32>) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, uid(pid)?)))
        .filter(|(_, u)| uids.contains(u))
        .collect()
}

/// CPU time of this process's waited-for children (and theirs), in nanoseconds.
pub fn children_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(ru) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return 0;
    };
    let ns =
        |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000;
    ns(ru.user_time()) + ns(ru.system_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_with_its_cpu_and_memory() {
        let me = std::process::id();
        let p = proc_of(me).unwrap();
        assert!(alive(&p));
        assert!(!alive(&Proc {
            start: p.start + 1,
            ..p.clone()
        }));
        assert_eq!(tree(me)[0], p);
        assert!(cpu_ns(me) > 0);
        let (pss, shmem) = pss_kib(me).unwrap();
        assert!(pss > 0 && shmem <= pss, "{pss} {shmem}");
        assert!(mem_available_kib().unwrap() > 0);
        let real = nix::unistd::getuid().as_raw();
        assert_eq!(uid(me), Some(real));
    }

    #[test]
    fn kib_fields_are_read_by_name() {
        let t = "Pss:                 236 kB\nPss_Shmem:             7 kB\n";
        assert_eq!(kib_field(t, "Pss:"), Some(236));
        assert_eq!(kib_field(t, "Pss_Shmem:"), Some(7));
        assert_eq!(kib_field(t, "Rss:"), None);
    }

    #[test]
    fn a_child_is_in_the_tree_and_gone_once_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for the exec so that its name is the program's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while proc_of(pid).is_none_or(|p| p.comm != "sleep") && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let p = tree(std::process::id())
            .into_iter()
            .find(|p| p.pid == pid)
            .unwrap();
        assert_eq!(p.comm, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(&p));
    }
}
