//! Confinement checks: the kernel features the jailer confines each process with — seccomp
//! filters, landlock, namespaces (and whether unprivileged users may create them), cgroups.
//!
//! A missing layer is a warning, not a failure: a VM can still run, but the launcher refuses
//! to start without a layer unless the user opts out of it.

use std::io;
use std::path::Path;

use super::{describe_errno, read_trimmed, Fact, Status};

/// The seccomp return actions the filters may use, with the names they are printed under.
const SECCOMP_ACTIONS: &[(&str, libc::c_uint)] = &[
    ("kill_process", libc::SECCOMP_RET_KILL_PROCESS),
    ("trap", libc::SECCOMP_RET_TRAP),
    ("errno", libc::SECCOMP_RET_ERRNO),
    ("log", libc::SECCOMP_RET_LOG),
];

/// The `Seccomp:` field of `/proc/self/status`, if the kernel has one.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim())
    })
}

/// How many system calls each role's allowlist lets through (fewer is better).
pub fn seccomp_roles() -> Fact {
    let counts: Vec<String> = bulkhead_seccomp::Role::ALL
        .iter()
        .map(|r| format!("{r} {}", bulkhead_seccomp::rules::syscalls(*r).len()))
        .collect();
    Fact::new(
        Status::Info,
        "seccomp allowlists",
        format!(
            "system calls allowed per thread role: {}",
            counts.join(", ")
        ),
    )
}

/// Whether seccomp filter mode is available, from `/proc/self/status` and
/// `seccomp(SECCOMP_GET_ACTION_AVAIL)`.
pub fn seccomp() -> Fact {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mode = status_field(&status, "Seccomp").map(str::to_string);
    let actions: Vec<(&str, Result<(), String>)> = SECCOMP_ACTIONS
        .iter()
        .map(|(name, action)| {
            (
                *name,
                bulkhead::sys::seccomp_action_available(*action).map_err(|e| describe_errno(&e)),
            )
        })
        .collect();
    seccomp_fact(mode.as_deref(), &actions)
}

fn seccomp_fact(mode: Option<&str>, actions: &[(&str, Result<(), String>)]) -> Fact {
    let Some(mode) = mode else {
        return Fact::new(
            Status::Warn,
            "seccomp",
            "unavailable: no Seccomp field in /proc/self/status (kernel without CONFIG_SECCOMP)",
        );
    };
    let now = match mode {
        "0" => "0, not filtered now".to_string(),
        "2" => "2, already filtered (filters stack)".to_string(),
        other => other.to_string(),
    };
    let available: Vec<&str> = actions
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| *n)
        .collect();
    let missing: Vec<String> = actions
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    let kill_ok = actions
        .iter()
        .any(|(n, r)| *n == "kill_process" && r.is_ok());
    let mut evidence = format!(
        "filter actions {} (SECCOMP_GET_ACTION_AVAIL); /proc/self/status Seccomp: {now}",
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    );
    if !missing.is_empty() {
        evidence.push_str(&format!("; unavailable: {}", missing.join(", ")));
    }
    if kill_ok {
        Fact::new(
            Status::Ok,
            "seccomp",
            format!("filter mode available, {evidence}"),
        )
    } else {
        Fact::new(
            Status::Warn,
            "seccomp",
            format!("filters cannot kill the process (default action), {evidence}"),
        )
    }
}

/// The landlock ABI version, from `landlock_create_ruleset(NULL, 0, VERSION)` (the query
/// the jail itself makes, `bulkhead_seccomp::landlock::abi`).
pub fn landlock() -> Fact {
    let abi = bulkhead_seccomp::landlock::abi()
        .map(i64::from)
        .map_err(|f| io::Error::from_raw_os_error(f.errno));
    landlock_fact(abi)
}

fn landlock_fact(abi: io::Result<i64>) -> Fact {
    match abi {
        Ok(abi) if abi >= 1 => {
            let extras = match abi {
                1..=3 => "filesystem rules",
                4..=5 => "filesystem and TCP rules",
                _ => "filesystem and TCP rules, IPC scoping",
            };
            Fact::new(
                Status::Ok,
                "landlock",
                format!("ABI {abi} (landlock_create_ruleset VERSION): {extras}"),
            )
        }
        Ok(abi) => Fact::new(
            Status::Warn,
            "landlock",
            format!("unavailable: landlock_create_ruleset returned ABI {abi}"),
        ),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => "; kernel without CONFIG_SECURITY_LANDLOCK",
                Some(libc::EOPNOTSUPP) => "; built in but not enabled (add landlock to lsm=)",
                _ => "",
            };
            Fact::new(
                Status::Warn,
                "landlock",
                format!(
                    "unavailable: landlock_create_ruleset: {}{why}",
                    describe_errno(&e)
                ),
            )
        }
    }
}

/// The namespaces the jailer uses, by their `/proc/self/ns` names.
const NAMESPACES: &[&str] = &["user", "mnt", "pid", "net", "ipc", "uts"];

/// Which namespace types exist, from `/proc/self/ns/*`.
pub fn namespaces() -> Fact {
    let present: Vec<(&str, bool)> = NAMESPACES
        .iter()
        .map(|ns| {
            (
                *ns,
                Path::new("/proc/self/ns")
                    .join(ns)
                    .symlink_metadata()
                    .is_ok(),
            )
        })
        .collect();
    namespaces_fact(&present)
}

fn namespaces_fact(present: &[(&str, bool)]) -> Fact {
    let have: Vec<&str> = present
        .iter()
        .filter(|(_, p)| *p)
        .map(|(n, _)| *n)
        .collect();
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, p)| !*p)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Fact::new(
            Status::Ok,
            "namespaces",
            format!("{} (/proc/self/ns/*)", have.join(", ")),
        )
    } else {
        Fact::new(
            Status::Warn,
            "namespaces",
            format!(
                "missing {} (no /proc/self/ns entry); present: {}",
                missing.join(", "),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        )
    }
}

/// The sysctls that decide whether an unprivileged user may create a user namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct UsernsSysctls {
    /// `/proc/sys/user/max_user_namespaces`.
    max_user_namespaces: Option<String>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (a Debian/Ubuntu patch; often absent).
    unprivileged_userns_clone: Option<String>,
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (Ubuntu).
    apparmor_restrict: Option<String>,
    /// The effective uid this check runs as.
    euid: u32,
}

/// Whether unprivileged user namespaces are allowed, from the sysctls that govern them.
pub fn user_namespaces() -> Fact {
    let sysctls = UsernsSysctls {
        max_user_namespaces: read_trimmed("/proc/sys/user/max_user_namespaces").ok(),
        unprivileged_userns_clone: read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").ok(),
        apparmor_restrict: read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
            .ok(),
        euid: nix::unistd::geteuid().as_raw(),
    };
    user_namespaces_fact(&sysctls)
}

fn user_namespaces_fact(s: &UsernsSysctls) -> Fact {
    let mut evidence = vec![format!(
        "max_user_namespaces={}",
        s.max_user_namespaces.as_deref().unwrap_or("absent")
    )];
    evidence.push(match &s.unprivileged_userns_clone {
        Some(v) => format!("unprivileged_userns_clone={v}"),
        None => "no kernel.unprivileged_userns_clone knob".to_string(),
    });
    if let Some(v) = &s.apparmor_restrict {
        evidence.push(format!("apparmor_restrict_unprivileged_userns={v}"));
    }
    evidence.push(format!("running as uid {}", s.euid));
    let evidence = evidence.join(", ");

    let disabled = if s.max_user_namespaces.as_deref() == Some("0") {
        Some("user namespaces disabled")
    } else if s.unprivileged_userns_clone.as_deref() == Some("0") {
        Some("unprivileged user namespaces disabled")
    } else if s.apparmor_restrict.as_deref() == Some("1") {
        Some("unprivileged user namespaces restricted by AppArmor")
    } else if s.max_user_namespaces.is_none() {
        Some("no user namespace support (no max_user_namespaces)")
    } else {
        None
    };
    match disabled {
        Some(why) => Fact::new(
            Status::Warn,
            "user namespaces",
            format!("{why}: confining needs root ({evidence})"),
        ),
        None => Fact::new(
            Status::Ok,
            "user namespaces",
            format!("unprivileged allowed ({evidence})"),
        ),
    }
}

/// cgroup v1 controller names (anything else in a v1 mount's options is an option).
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "io",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The controllers the launcher limits each process with.
const NEEDED_CONTROLLERS: &[&str] = &["memory", "cpu"];

/// Where cgroups are mounted, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CgroupMounts {
    /// The cgroup2 mount point, if any.
    v2: Option<String>,
    /// Each v1 hierarchy: its controllers and its mount point.
    v1: Vec<(Vec<String>, String)>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4) {
            if [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d)) && a <= b'3' {
                out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_cgroup_mounts(mountinfo: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let super_opts = right.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" if mounts.v2.is_none() => {
                mounts.v2 = Some(unescape_mountinfo(mount_point));
            }
            "cgroup" => {
                let controllers: Vec<String> = super_opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty() {
                    mounts
                        .v1
                        .push((controllers, unescape_mountinfo(mount_point)));
                }
            }
            _ => {}
        }
    }
    mounts
}

/// cgroup v2 and v1 mounts and the controllers they offer.
pub fn cgroups() -> Fact {
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(m) => m,
        Err(e) => {
            return Fact::new(
                Status::Warn,
                "cgroups",
                format!("cannot read /proc/self/mountinfo: {}", describe_errno(&e)),
            )
        }
    };
    let mounts = parse_cgroup_mounts(&mountinfo);
    let v2_controllers = mounts
        .v2
        .as_ref()
        .map(|m| read_trimmed(Path::new(m).join("cgroup.controllers")));
    cgroups_fact(&mounts, v2_controllers)
}

fn cgroups_fact(mounts: &CgroupMounts, v2_controllers: Option<io::Result<String>>) -> Fact {
    let mut parts = Vec::new();
    let mut v2_list: Vec<String> = Vec::new();
    match (&mounts.v2, v2_controllers) {
        (Some(at), Some(Ok(list))) => {
            v2_list = list.split_whitespace().map(str::to_string).collect();
            let shown = if v2_list.is_empty() {
                "no controllers".to_string()
            } else {
                format!("controllers: {}", v2_list.join(" "))
            };
            parts.push(format!("v2 at {at} ({shown})"));
        }
        (Some(at), Some(Err(e))) => parts.push(format!(
            "v2 at {at} (cgroup.controllers unreadable: {})",
            describe_errno(&e)
        )),
        _ => parts.push("no v2 mount".to_string()),
    }
    if mounts.v1.is_empty() {
        parts.push("no v1 hierarchies".to_string());
    } else {
        // Mount points of the hierarchies holding a needed controller; names of the rest.
        let (needed, others): (Vec<_>, Vec<_>) = mounts
            .v1
            .iter()
            .partition(|(c, _)| c.iter().any(|c| NEEDED_CONTROLLERS.contains(&c.as_str())));
        let mut v1: Vec<String> = needed
            .iter()
            .map(|(c, at)| format!("{} at {at}", c.join(",")))
            .collect();
        if !others.is_empty() {
            let names: Vec<String> = others.iter().map(|(c, _)| c.join(",")).collect();
            v1.push(format!("also {}", names.join(" ")));
        }
        parts.push(format!("v1: {}", v1.join(", ")));
    }

    let mut via = Vec::new();
    let mut missing = Vec::new();
    for needed in NEEDED_CONTROLLERS {
        if v2_list.iter().any(|c| c == needed) {
            via.push(format!("{needed} via v2"));
        } else if mounts.v1.iter().any(|(c, _)| c.iter().any(|c| c == needed)) {
            via.push(format!("{needed} via v1"));
        } else {
            missing.push(*needed);
        }
    }
    let evidence = parts.join("; ");
    if missing.is_empty() {
        Fact::new(
            Status::Ok,
            "cgroups",
            format!("{} ({evidence})", via.join(", ")),
        )
    } else {
        Fact::new(
            Status::Warn,
            "cgroups",
            format!(
                "no {} controller: no cgroup limits ({evidence})",
                missing.join(" or ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_found() {
        let status = "Name:\tcat\nSeccomp:\t0\nSeccomp_filters:\t0\n";
        assert_eq!(status_field(status, "Seccomp"), Some("0"));
        assert_eq!(status_field(status, "Seccomp_filters"), Some("0"));
        assert_eq!(status_field("Name:\tcat\n", "Seccomp"), None);
    }

    #[test]
    fn seccomp_with_kill_process_is_ok() {
        let actions = [
            ("kill_process", Ok(())),
            (
                "log",
                Err("EOPNOTSUPP (Operation not supported)".to_string()),
            ),
        ];
        let f = seccomp_fact(Some("0"), &actions);
        assert_eq!(f.status, Status::Ok);
        assert_eq!(
            f.evidence,
            "filter mode available, filter actions kill_process (SECCOMP_GET_ACTION_AVAIL); \
             /proc/self/status Seccomp: 0, not filtered now; \
             unavailable: log: EOPNOTSUPP (Operation not supported)"
        );
    }

    #[test]
    fn seccomp_without_kill_process_or_field_warns() {
        let actions = [("kill_process", Err("EINVAL (Invalid argument)".to_string()))];
        assert_eq!(seccomp_fact(Some("0"), &actions).status, Status::Warn);
        let f = seccomp_fact(None, &[]);
        assert_eq!(f.status, Status::Warn);
        assert!(f.evidence.contains("CONFIG_SECCOMP"));
    }

    #[test]
    fn landlock_abi_is_reported() {
        let f = landlock_fact(Ok(7));
        assert_eq!(f.status, Status::Ok);
        assert!(f
            .evidence
            .starts_with("ABI 7 (landlock_create_ruleset VERSION)"));
    }

    #[test]
    fn landlock_errors_say_unavailable_with_errno() {
        let f = landlock_fact(Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        assert_eq!(f.status, Status::Warn);
        assert!(f
            .evidence
            .starts_with("unavailable: landlock_create_ruleset: EOPNOTSUPP"));
        assert!(f.evidence.ends_with("(add landlock to lsm=)"));
        let f = landlock_fact(Err(io::Error::from_raw_os_error(libc::ENOSYS)));
        assert!(f.evidence.contains("ENOSYS"));
    }

    #[test]
    fn namespaces_list_missing_ones() {
        let f = namespaces_fact(&[("user", true), ("mnt", true)]);
        assert_eq!(
            f.to_string(),
            "ok    namespaces: user, mnt (/proc/self/ns/*)"
        );
        let f = namespaces_fact(&[("user", false), ("mnt", true)]);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(
            f.evidence,
            "missing user (no /proc/self/ns entry); present: mnt"
        );
    }

    #[test]
    fn user_namespaces_follow_the_sysctls() {
        let mut s = UsernsSysctls {
            max_user_namespaces: Some("96365".into()),
            unprivileged_userns_clone: None,
            apparmor_restrict: None,
            euid: 1000,
        };
        let f = user_namespaces_fact(&s);
        assert_eq!(
            f.to_string(),
            "ok    user namespaces: unprivileged allowed (max_user_namespaces=96365, \
             no kernel.unprivileged_userns_clone knob, running as uid 1000)"
        );
        s.unprivileged_userns_clone = Some("0".into());
        let f = user_namespaces_fact(&s);
        assert_eq!(f.status, Status::Warn);
        assert!(f
            .evidence
            .starts_with("unprivileged user namespaces disabled"));
        s.unprivileged_userns_clone = Some("1".into());
        s.max_user_namespaces = Some("0".into());
        assert!(user_namespaces_fact(&s)
            .evidence
            .starts_with("user namespaces disabled"));
        s.max_user_namespaces = Some("10".into());
        s.apparmor_restrict = Some("1".into());
        assert_eq!(user_namespaces_fact(&s).status, Status::Warn);
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu\\040acct rw,relatime shared:5 - cgroup cgroup rw,cpuacct,xattr
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_gives_v1_hierarchies_and_the_v2_mount() {
        let m = parse_cgroup_mounts(MOUNTINFO);
        assert_eq!(m.v2.as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(
            m.v1,
            vec![
                (vec!["cpu".to_string()], "/sys/fs/cgroup/cpu".to_string()),
                (
                    vec!["memory".to_string()],
                    "/sys/fs/cgroup/memory".to_string()
                ),
                (
                    vec!["cpuacct".to_string()],
                    "/sys/fs/cgroup/cpu acct".to_string()
                ),
            ]
        );
    }

    #[test]
    fn cgroups_found_through_v1_when_v2_has_no_controllers() {
        let m = parse_cgroup_mounts(MOUNTINFO);
        let f = cgroups_fact(&m, Some(Ok("hugetlb".to_string())));
        assert_eq!(f.status, Status::Ok);
        assert!(f.evidence.starts_with(
            "memory via v1, cpu via v1 (v2 at /sys/fs/cgroup/unified (controllers: hugetlb); v1: "
        ));
    }

    #[test]
    fn cgroups_found_through_v2() {
        let m = CgroupMounts {
            v2: Some("/sys/fs/cgroup".into()),
            v1: vec![],
        };
        let f = cgroups_fact(&m, Some(Ok("cpuset cpu io memory pids".to_string())));
        assert_eq!(
            f.to_string(),
            "ok    cgroups: memory via v2, cpu via v2 (v2 at /sys/fs/cgroup (controllers: \
             cpuset cpu io memory pids); no v1 hierarchies)"
        );
    }

    #[test]
    fn cgroups_without_memory_warn() {
        let m = CgroupMounts {
            v2: Some("/sys/fs/cgroup".into()),
            v1: vec![],
        };
        let f = cgroups_fact(&m, Some(Ok(String::new())));
        assert_eq!(f.status, Status::Warn);
        assert!(f.evidence.starts_with("no memory or cpu controller"));
        assert!(f.evidence.contains("(no controllers)"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trailing\\04"), "/trailing\\04");
    }
}
