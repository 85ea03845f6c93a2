//! `bulkhead check`: the `kvm-ok` of this project.
//!
//! Reports, one line per fact and each with its evidence, whether this host can run a
//! bulkhead microVM: whether `/dev/kvm` is usable (API version, the capabilities the vmm
//! needs), whether the virtualisation is hardware or software, and which confinement layers
//! the kernel offers (seccomp, landlock, namespaces, TAP, cgroups, memfd).
//!
//! Each check is a function returning a [`Fact`]; this module only runs them, prints them and
//! draws the verdict. A fact's status is one of four words:
//! - `ok`: present and usable;
//! - `warn`: missing or limited, but a VM can still run (a confinement layer that is missing
//!   makes the launcher refuse to start unless the user opts out of that layer);
//! - `FAIL`: bulkhead cannot run a VM on this host (KVM unusable, no memfd); the exit code
//!   is then 1;
//! - `info`: a fact worth knowing that needs no action.

mod confinement;
mod kvm;
mod resources;

use std::fmt;
use std::io;
use std::path::Path;

/// How a fact bears on running a microVM here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Missing or limited; a VM can still run.
    Warn,
    /// A VM cannot run on this host.
    Fail,
    /// Worth knowing; no action needed.
    Info,
}

impl Status {
    /// The word printed in the first column.
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Info => "info",
        }
    }
}

/// One checked fact: what was checked, how it came out, and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// How the fact bears on running a VM.
    pub status: Status,
    /// What was checked, e.g. `kvm caps`.
    pub name: &'static str,
    /// What was seen, e.g. `/dev/kvm opened, KVM API version 12`.
    pub evidence: String,
}

impl Fact {
    fn new(status: Status, name: &'static str, evidence: impl Into<String>) -> Self {
        Fact {
            status,
            name,
            evidence: evidence.into(),
        }
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6}{}: {}",
            self.status.word(),
            self.name,
            self.evidence
        )
    }
}

/// The summary of all facts: the last line printed and the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The one-line verdict, formatted like a fact.
    pub line: Fact,
    /// 1 when a VM cannot run here (any `FAIL`), else 0.
    pub exit_code: i32,
}

/// Draws the verdict: any `FAIL` makes the host unusable; warnings are counted.
pub fn verdict(facts: &[Fact]) -> Verdict {
    let fails: Vec<&Fact> = facts.iter().filter(|f| f.status == Status::Fail).collect();
    let warnings = facts.iter().filter(|f| f.status == Status::Warn).count();
    if let Some(first) = fails.first() {
        let more = match fails.len() {
            1 => String::new(),
            n => format!(" (and {} more FAIL lines)", n - 1),
        };
        return Verdict {
            line: Fact::new(
                Status::Fail,
                "verdict",
                format!(
                    "bulkhead cannot run microVMs here: {}: {}{more}",
                    first.name, first.evidence
                ),
            ),
            exit_code: 1,
        };
    }
    let (status, tail) = match warnings {
        0 => (Status::Ok, "all checks passed".to_string()),
        1 => (Status::Warn, "1 warning above".to_string()),
        n => (Status::Warn, format!("{n} warnings above")),
    };
    Verdict {
        line: Fact::new(
            status,
            "verdict",
            format!("bulkhead can run microVMs here (KVM usable; {tail})"),
        ),
        exit_code: 0,
    }
}

/// Runs every check in the order they are printed.
fn all_facts() -> Vec<Fact> {
    let mut facts = kvm::checks();
    facts.extend([
        kvm::virtualisation(),
        confinement::seccomp(),
        confinement::seccomp_roles(),
        confinement::landlock(),
        confinement::namespaces(),
        confinement::user_namespaces(),
        resources::tap(),
        resources::vhost_net(),
        confinement::cgroups(),
        resources::hugepages(),
        resources::memfd(),
    ]);
    facts
}

/// Prints one line per host capability and returns the process exit code
/// (non-zero when KVM is unusable).
pub fn main() -> i32 {
    let facts = all_facts();
    for fact in &facts {
        println!("{fact}");
    }
    let verdict = verdict(&facts);
    println!("{}", verdict.line);
    verdict.exit_code
}

/// Reads a small text file (sysfs, procfs) and trims surrounding white space.
fn read_trimmed(path: impl AsRef<Path>) -> io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}

/// Describes an OS error as `ENAME (message)`, e.g. `EACCES (Permission denied)`.
fn describe_errno(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return err.to_string();
    };
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::ENOTTY => "ENOTTY",
        _ => return format!("errno {code} ({})", strip_os_error(err)),
    };
    format!("{name} ({})", strip_os_error(err))
}

/// `Permission denied (os error 13)` -> `Permission denied`.
fn strip_os_error(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_aligned_in_columns() {
        let ok = Fact::new(Status::Ok, "kvm", "/dev/kvm opened, KVM API version 12");
        assert_eq!(
            ok.to_string(),
            "ok    kvm: /dev/kvm opened, KVM API version 12"
        );
        let info = Fact::new(Status::Info, "vhost-net", "absent");
        assert_eq!(info.to_string(), "info  vhost-net: absent");
        let warn = Fact::new(Status::Warn, "landlock", "unavailable");
        assert_eq!(warn.to_string(), "warn  landlock: unavailable");
        let fail = Fact::new(Status::Fail, "kvm", "cannot open /dev/kvm");
        assert_eq!(fail.to_string(), "FAIL  kvm: cannot open /dev/kvm");
    }

    #[test]
    fn verdict_all_ok_exits_zero() {
        let facts = [
            Fact::new(Status::Ok, "kvm", "fine"),
            Fact::new(Status::Info, "hugepages", "0 reserved"),
        ];
        let v = verdict(&facts);
        assert_eq!(v.exit_code, 0);
        assert_eq!(v.line.status, Status::Ok);
        assert_eq!(
            v.line.to_string(),
            "ok    verdict: bulkhead can run microVMs here (KVM usable; all checks passed)"
        );
    }

    #[test]
    fn verdict_counts_warnings_but_still_exits_zero() {
        let facts = [
            Fact::new(Status::Ok, "kvm", "fine"),
            Fact::new(Status::Warn, "landlock", "unavailable"),
            Fact::new(Status::Warn, "tap", "cannot open"),
        ];
        let v = verdict(&facts);
        assert_eq!(v.exit_code, 0);
        assert_eq!(v.line.status, Status::Warn);
        assert!(v.line.evidence.ends_with("(KVM usable; 2 warnings above)"));
    }

    #[test]
    fn verdict_fails_on_any_fail_and_names_the_first() {
        let facts = [
            Fact::new(Status::Fail, "kvm", "cannot open /dev/kvm: ENOENT"),
            Fact::new(Status::Warn, "landlock", "unavailable"),
            Fact::new(Status::Fail, "memfd", "memfd_create: ENOSYS"),
        ];
        let v = verdict(&facts);
        assert_eq!(v.exit_code, 1);
        assert_eq!(
            v.line.to_string(),
            "FAIL  verdict: bulkhead cannot run microVMs here: kvm: cannot open /dev/kvm: \
             ENOENT (and 1 more FAIL lines)"
        );
    }

    #[test]
    fn errno_names_are_short_and_carry_the_message() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(describe_errno(&e), "EACCES (Permission denied)");
        let e = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        assert!(describe_errno(&e).starts_with("EOPNOTSUPP ("));
        let e = io::Error::from_raw_os_error(libc::EXDEV);
        assert!(describe_errno(&e).starts_with("errno 18 ("));
    }
}
