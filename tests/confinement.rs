//! Every process of a VM is confined as promised, checked from outside while the VM runs:
//! seccomp on every thread, no_new_privs, no capabilities, the unprivileged uid and gid,
//! namespaces of its own, an empty root, no network interface but `lo` (net: and its
//! TAP), only the descriptors it was given, its cgroup and rlimits.

mod common;

use common::running::{assert_nothing_left, children, Running};

/// `/proc/<pid>/<what>`, or "" when gone.
fn proc(pid: u32, what: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_default()
}

/// The value of field `name` in a /proc status file.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or("")
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What a process may hold open: its sockets, eventfds, the memfd of guest memory (the vmm
/// made it; a backend got it with SET_MEM_TABLE and vm-memory keeps it with the mapping),
/// pipes (standard output and the stderr relay), /dev/null, and its own resource.
fn allowed_fd(program: &str, target: &str, image: &str, console: &str) -> bool {
    let common = target.starts_with("socket:[")
        || target.starts_with("anon_inode:")
        || target.starts_with("pipe:[")
        || target.starts_with("/memfd:bulkhead-guest-ram")
        || target == "/dev/null";
    common
        || match program {
            "bulkhead-vmm" => target == "/dev/kvm",
            "bulkhead-blk" => target == image,
            "bulkhead-net" => target == "/dev/net/tun",
            "bulkhead-console" => target == console,
            _ => false,
        }
}

#[test]
fn every_process_is_confined_as_promised() {
    require_kvm!();
    if let Some(why) = common::netns::unavailable() {
        common::skip::skip_or_fail(common::skip::SkipKind::NotPermitted, &why);
        return;
    }
    let vm = Running::start("confined");
    let pid = vm.pid();
    let kids = children(pid);
    assert_eq!(kids.len(), 4, "{kids:?}");
    let (image, console) = (vm.image(), vm.console());
    for (child, program) in &kids {
        let c = child.to_string();
        let status = proc(*child, "status");
        let what = format!("{program} (pid {child})");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{what}");
        assert_eq!(field(&status, "Seccomp"), "2", "{what}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, caps), "0000000000000000", "{what}: {caps}");
        }
        assert_eq!(
            field(&status, "Uid"),
            "65534\t65534\t65534\t65534",
            "{what}"
        );
        assert_eq!(
            field(&status, "Gid"),
            "65534\t65534\t65534\t65534",
            "{what}"
        );
        assert_eq!(field(&status, "Groups"), "", "{what}");
        for task in std::fs::read_dir(format!("/proc/{child}/task"))
            .unwrap()
            .flatten()
        {
            let t = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            assert_eq!(
                field(&t, "Seccomp"),
                "2",
                "{what}: thread {} unconfined",
                field(&t, "Name")
            );
        }
        for kind in ["mnt", "pid", "ipc", "uts", "net"] {
            assert_ne!(ns(&c, kind), ns("self", kind), "{what}: {kind} namespace");
        }
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{child}/root"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(root.is_empty(), "{what}: its root holds {root:?}");
        let interfaces: Vec<String> = proc(*child, "net/dev")
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
            .collect();
        let expected: &[&str] = if program == "bulkhead-net" {
            &["lo", "tap0"]
        } else {
            &["lo"]
        };
        let mut sorted = interfaces.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "{what}: interfaces");
        for fd in std::fs::read_dir(format!("/proc/{child}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(
                allowed_fd(program, &target, &image, &console),
                "{what}: fd {} is {target}",
                fd.file_name().to_string_lossy()
            );
        }
        let cgroup = proc(*child, "cgroup");
        let name = format!("bulkhead/bulkhead-{pid}-");
        assert!(
            cgroup.contains(&name),
            "{what}: not in its cgroup:\n{cgroup}"
        );
        let limits = proc(*child, "limits");
        let open_files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("");
        let expected = if program == "bulkhead-vmm" {
            "1024"
        } else {
            "256"
        };
        assert!(
            open_files.split_whitespace().nth(3) == Some(expected),
            "{what}: {open_files}"
        );
    }
    // SAFETY: SIGTERM to the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_nothing_left(pid, &kids);
}
