//! Every process of a VM is confined as promised, checked from outside while the VM runs:
//! seccomp on every thread, no_new_privs, no capabilities, the VM's own uid and gid (two
//! VMs never share one; `--uid` forces one),
//! namespaces of its own, an empty root, no network interface but `lo` (net: and its
//! TAP), only the descriptors it was given, its cgroup and rlimits.

mod common;

use common::running::{assert_nothing_left, children, Running};

/// `/proc/<pid>/<what>`, or "" when gone.
fn proc(pid: u32, what: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_default()
}

/// The uid process `pid` runs as, checked to be its real, effective, saved and filesystem
/// uid and each of its gids too (a VM's identity is one number).
fn identity(pid: u32) -> u32 {
    let status = proc(pid, "status");
    let ids: Vec<&str> = ["Uid", "Gid"]
        .iter()
        .flat_map(|f| field(&status, f).split_whitespace())
        .collect();
    assert_eq!(ids.len(), 8, "pid {pid}: {status}");
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "pid {pid} has several identities: {ids:?}"
    );
    ids[0].parse().expect("a uid")
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
        // The VM's own identity, the same for all its processes, gid = uid.
        let id = identity(*child);
        assert_eq!(id, identity(kids[0].0), "{what}: not the VM's identity");
        assert!(id != 0 && id != 65534, "{what}: runs as {id}");
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
        // RLIMIT_NPROC counts the VM's own uid: the VM's tasks together, 13 for each of
        // its four processes (one worker each, twelve spare threads).
        let processes = limits
            .lines()
            .find(|l| l.starts_with("Max processes"))
            .unwrap_or("");
        assert_eq!(
            processes.split_whitespace().nth(2),
            Some("52"),
            "{what}: {processes}"
        );
    }
    // SAFETY: SIGTERM to the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_nothing_left(pid, &kids);
}

/// Stops `vm` (SIGTERM) and checks it ended in order with nothing left.
fn stop(vm: Running, kids: &[(u32, String)]) {
    let pid = vm.pid();
    // SAFETY: SIGTERM to the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_nothing_left(pid, kids);
}

#[test]
fn two_vms_run_under_different_uids() {
    require_kvm!();
    if let Some(why) = common::netns::unavailable() {
        common::skip::skip_or_fail(common::skip::SkipKind::NotPermitted, &why);
        return;
    }
    let a = Running::start("uid-a");
    let b = Running::start("uid-b");
    let (kids_a, kids_b) = (children(a.pid()), children(b.pid()));
    assert_eq!(
        (kids_a.len(), kids_b.len()),
        (4, 4),
        "{kids_a:?} {kids_b:?}"
    );
    let of = |kids: &[(u32, String)]| {
        let ids: std::collections::BTreeSet<u32> = kids.iter().map(|(k, _)| identity(*k)).collect();
        assert_eq!(ids.len(), 1, "one VM, several uids: {kids:?} {ids:?}");
        ids.into_iter().next().unwrap_or_default()
    };
    let (uid_a, uid_b) = (of(&kids_a), of(&kids_b));
    assert_ne!(uid_a, uid_b, "two VMs share uid {uid_a}");
    for (uid, kids) in [(uid_a, &kids_a), (uid_b, &kids_b)] {
        assert!(uid != 0 && uid != 65534, "a VM runs as {uid}");
        // Nothing else on the host runs as it, so RLIMIT_NPROC counts this VM alone.
        let others: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| !kids.iter().any(|(k, _)| k == p))
            .filter(|p| {
                let status = proc(*p, "status");
                field(&status, "Uid")
                    .split_whitespace()
                    .any(|u| u == uid.to_string())
            })
            .collect();
        assert!(
            others.is_empty(),
            "processes of no VM run as {uid}: {others:?}"
        );
        let lock = format!("/run/bulkhead/uids/{uid}.lock");
        assert!(std::path::Path::new(&lock).exists(), "{lock}");
    }
    // What a compromised process of VM a could do: signal its own VM's processes, not b's
    // (with a shared uid, any of them could stop or kill every VM on the host).
    let may_signal = |uid: u32, pid: u32| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -0 {pid}")])
            .uid(uid)
            .gid(uid)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running sh")
            .success()
    };
    for (kid, program) in &kids_a {
        assert!(may_signal(uid_a, *kid), "a cannot signal its own {program}");
    }
    for (kid, program) in &kids_b {
        assert!(!may_signal(uid_a, *kid), "a can signal b's {program}");
    }
    stop(a, &kids_a);
    stop(b, &kids_b);
}

#[test]
fn uid_forces_the_shared_identity() {
    require_kvm!();
    if let Some(why) = common::netns::unavailable() {
        common::skip::skip_or_fail(common::skip::SkipKind::NotPermitted, &why);
        return;
    }
    let vm = Running::start_with("uid-forced", &["--uid", "65534", "--gid", "65534"]);
    let kids = children(vm.pid());
    assert_eq!(kids.len(), 4, "{kids:?}");
    for (kid, program) in &kids {
        assert_eq!(identity(*kid), 65534, "{program} (pid {kid})");
        // A shared uid: NPROC only stops a fork bomb (the host's other users of it count).
        let limits = proc(*kid, "limits");
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max processes") && l.contains(" 4096 ")),
            "{program}: {limits}"
        );
    }
    stop(vm, &kids);
}
