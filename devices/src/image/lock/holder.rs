//! Who holds a lock on an image, from `/proc/PID/fdinfo/FD`: the kernel lists there, as
//! `lock:` lines, the locks held through that descriptor's open file description, in
//! `/proc/locks`' format (`lock:\t1: OFDLCK ADVISORY READ -1 08:01:1234 100 100`, the
//! device as hex major:minor of the file system, then the inode, the first and the last
//! byte or `EOF`). `/proc/locks` itself shows pid -1 for OFD locks, so it cannot name one.
//!
//! Best effort: processes whose `fdinfo` cannot be read are skipped, and this process's
//! own descriptor of the file is left out (its locks are the ones being refused).

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Most holders named in one message.
const MAX_HOLDERS: usize = 4;
/// Longest program name shown.
const MAX_NAME: usize = 64;

/// A process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid (in this process's pid namespace).
    pub pid: u32,
    /// Its program's name (printable characters only).
    pub program: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.program, self.pid)
    }
}

/// Where a lock sits: file system device (major, minor), inode, byte.
#[derive(Clone, Copy, Debug)]
struct Target {
    major: u64,
    minor: u64,
    ino: u64,
    byte: u64,
}

/// The processes holding a lock on `byte` of `file`, as far as `/proc` tells: an exact
/// device and inode match first; failing any, an inode match alone (on file systems whose
/// `stat` reports another device number than their locks do, such as btrfs subvolumes).
pub fn holders(file: &File, byte: u64) -> Vec<Holder> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let target = Target {
        major: nix::sys::stat::major(meta.dev()),
        minor: nix::sys::stat::minor(meta.dev()),
        ino: meta.ino(),
        byte,
    };
    let own = (std::process::id(), file.as_raw_fd());
    let (mut exact, mut by_inode) = (Vec::new(), Vec::new());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        match process_holds(pid, own, &target) {
            Some(Match::Exact) if exact.len() < MAX_HOLDERS => exact.push(pid),
            Some(Match::Inode) if by_inode.len() < MAX_HOLDERS => by_inode.push(pid),
            _ => {}
        }
        if exact.len() >= MAX_HOLDERS {
            break;
        }
    }
    let pids = if exact.is_empty() { by_inode } else { exact };
    pids.into_iter()
        .map(|pid| Holder {
            pid,
            program: program_name(pid),
        })
        .collect()
}

/// How a lock line matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Exact,
    Inode,
}

/// Whether process `pid` holds, through one of its descriptors (not `own`), a lock on
/// `target`.
fn process_holds(pid: u32, own: (u32, i32), target: &Target) -> Option<Match> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut best = None;
    for fd in fds.flatten() {
        let name = fd.file_name();
        let Some(fd_num) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if (pid, fd_num) == own {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            match lock_line_matches(line, target) {
                Some(Match::Exact) => return Some(Match::Exact),
                Some(Match::Inode) => best = Some(Match::Inode),
                None => {}
            }
        }
    }
    best
}

/// Whether one `fdinfo` line is a lock on `target`'s byte.
fn lock_line_matches(line: &str, target: &Target) -> Option<Match> {
    let rest = line.strip_prefix("lock:")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // ... DEV:INO START END, the last three fields.
    let [dev_ino, start, end] = fields.get(fields.len().checked_sub(3)?..)? else {
        return None;
    };
    let mut parts = dev_ino.split(':');
    let major = u64::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
    let ino: u64 = parts.next()?.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = match *end {
        "EOF" => u64::MAX,
        n => n.parse().ok()?,
    };
    if ino != target.ino || !(start..=end).contains(&target.byte) {
        return None;
    }
    Some(if (major, minor) == (target.major, target.minor) {
        Match::Exact
    } else {
        Match::Inode
    })
}

/// The name of process `pid`'s program: the last part of its `argv[0]`, else its `comm`;
/// non-printable characters dropped, at most [`MAX_NAME`] characters.
fn program_name(pid: u32) -> String {
    let from_cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let argv0 = cmdline.split(|&b| b == 0).next()?.to_vec();
            let argv0 = String::from_utf8_lossy(&argv0).into_owned();
            let base = argv0.rsplit('/').next()?.to_owned();
            (!base.is_empty()).then_some(base)
        });
    let name = from_cmdline
        .or_else(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if clean.is_empty() {
        "a process".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            major: 8,
            minor: 1,
            ino: 1234,
            byte: 101,
        }
    }

    #[test]
    fn lock_lines_are_matched_by_device_inode_and_range() {
        let t = target();
        let line = "lock:\t1: OFDLCK  ADVISORY  READ  -1 08:01:1234 101 101";
        assert_eq!(lock_line_matches(line, &t), Some(Match::Exact));
        let range = "lock:\t2: OFDLCK ADVISORY READ -1 08:01:1234 100 EOF";
        assert_eq!(lock_line_matches(range, &t), Some(Match::Exact));
        let other_dev = "lock:\t1: OFDLCK ADVISORY READ -1 00:2f:1234 101 101";
        assert_eq!(lock_line_matches(other_dev, &t), Some(Match::Inode));
        for miss in [
            "lock:\t1: OFDLCK ADVISORY READ -1 08:01:1234 100 100",
            "lock:\t1: OFDLCK ADVISORY READ -1 08:01:999 101 101",
            "pos:\t0",
            "lock:",
            "lock:\t1: OFDLCK ADVISORY READ -1 zz:01:1234 101 101",
            "lock:\t1: OFDLCK ADVISORY READ -1 08:01:1234 x 101",
        ] {
            assert_eq!(lock_line_matches(miss, &t), None, "{miss}");
        }
    }

    #[test]
    fn this_processes_name_is_found() {
        let name = program_name(std::process::id());
        assert!(!name.is_empty() && !name.contains('/'), "{name}");
        let exe = std::env::current_exe().unwrap();
        let base = exe.file_name().unwrap().to_string_lossy();
        assert!(
            base.starts_with(&name[..name.len().min(15)]),
            "{name} vs {base}"
        );
    }
}
