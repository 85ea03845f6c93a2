//! The layers every process of a VM must show in /proc, for tests whose VMs are started
//! some other way than `bulkhead run` (tests/confinement.rs checks the launcher's own VMs
//! in depth: fds, threads' filters, landlock, cgroup limits).

/// A field of /proc/<pid>/status.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What is wrong with the confinement of `pid` (empty when it is jailed as `bulkhead run`
/// jails a VM's process): no_new_privs, no capabilities, an unprivileged uid and gid,
/// seccomp filters on every thread, namespaces of its own, a cgroup of its own.
pub fn wrong(pid: u32, what: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut wrong = Vec::new();
    let mut check = |ok: bool, why: String| {
        if !ok {
            wrong.push(format!("{what} (pid {pid}): {why}"));
        }
    };
    check(
        field(&status, "NoNewPrivs") == "1",
        "no_new_privs unset".into(),
    );
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = field(&status, caps);
        check(v == "0000000000000000", format!("{caps} {v}"));
    }
    for id in ["Uid", "Gid"] {
        let v = field(&status, id);
        check(
            v.split_whitespace().all(|u| u != "0" && u != "65534") && !v.is_empty(),
            format!("{id} {v}"),
        );
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    check(tasks > 0, "no threads".into());
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let name = field(&s, "Name");
            check(
                field(&s, "Seccomp") == "2",
                format!("thread {name} not in seccomp filter mode"),
            );
        }
    }
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        check(
            ns(&pid.to_string(), kind) != ns("self", kind),
            format!("shares the host's {kind} namespace"),
        );
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    check(
        cgroup != own,
        format!("in the test's own cgroup {}", cgroup.trim()),
    );
    wrong
}
