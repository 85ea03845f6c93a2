//! Every process of a VM is confined as promised, checked from outside while the VM runs,
//! layer by layer from /proc and the cgroup files: seccomp on every thread with its role's
//! filters (counted per thread), no_new_privs, no capabilities, the VM's own uid and gid
//! (two VMs never share one; `--uid` forces one), namespaces of its own, an empty read-only
//! root, landlock (each process lists its root once jailed, through the hidden self-test,
//! and must be refused), no network interface but `lo` (net: and its TAP), exactly the
//! descriptors it needs, no environment but `RUST_LOG`, its cgroup limits and rlimits.

#[path = "common/cgroup_limits.rs"]
mod cgroup_limits;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// What a process holds open, by kind: its resource by path, `/dev/null`, `pipe`,
/// `socket`, `eventfd`, `eventpoll`, `memfd` (guest memory), other anonymous inodes by name.
fn fd_kinds(pid: u32, image: &str, console: &str) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        let kind = if target == image {
            "image".to_owned()
        } else if target == console {
            "console file".to_owned()
        } else if target.starts_with("/memfd:bulkhead-guest-ram") {
            "memfd".to_owned()
        } else if target.starts_with("/memfd:bulkhead-inflight") {
            "inflight memfd".to_owned()
        } else if let Some(k) = ["socket", "pipe"]
            .into_iter()
            .find(|k| target.starts_with(&format!("{k}:[")))
        {
            k.to_owned()
        } else if let Some(anon) = target.strip_prefix("anon_inode:") {
            anon.trim_matches(|c| c == '[' || c == ']').to_owned()
        } else {
            target.into_owned()
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Exactly the descriptors each process of `Running`'s VM holds once the guest serves the
/// network (only the net device is activated, so only it and the vmm hold guest memory):
/// standard input `/dev/null`, standard output and the stderr relay (pipes), the control
/// and vhost-user sockets and their copies, eventfds (kicks, calls, queue-thread exits),
/// the vhost-user event loop's epoll, and the resource it serves; the vmm also its VM
/// and vCPU (`kvm-vm`, `kvm-vcpu:0`), no `/dev/kvm` (closed once the VM exists).
fn expected_fds(program: &str) -> BTreeMap<String, usize> {
    let list: &[(&str, usize)] = match program {
        // With the vsock device's socket (and its copy) and its eventfds, the i8042's
        // IRQ 1 irqfd (Ctrl+Alt+Del), and one per device by which the vhost-monitor
        // learns of a reconnected backend (4).
        "bulkhead-vmm" => &[
            ("/dev/null", 1),
            ("pipe", 2),
            ("socket", 11),
            ("eventfd", 20),
            ("memfd", 2),
            ("kvm-vm", 1),
            ("kvm-vcpu:0", 1),
        ],
        // Every backend holds the control thread's copy of the launcher's socket, on which
        // Shutdown (and bulkhead-blk's image swaps) arrive; bulkhead-blk also the inflight
        // region's memfd, made before the jail and handed out on GET_INFLIGHT_FD (a
        // restarted process resubmits from it).
        "bulkhead-blk" => &[
            ("/dev/null", 1),
            ("pipe", 2),
            ("socket", 10),
            ("eventfd", 4),
            ("eventpoll", 1),
            ("image", 1),
            ("inflight memfd", 1),
        ],
        "bulkhead-net" => &[
            ("/dev/null", 1),
            ("pipe", 2),
            ("socket", 10),
            ("eventfd", 9),
            ("eventpoll", 1),
            ("memfd", 1),
            ("/dev/net/tun", 1),
        ],
        "bulkhead-console" => &[
            ("/dev/null", 1),
            ("pipe", 2),
            ("socket", 10),
            ("eventfd", 5),
            ("eventpoll", 1),
            ("console file", 1),
        ],
        // Beyond the console's kinds: the hybrid listener, the broker socket, the I/O
        // thread's epoll; no file at all.
        "bulkhead-vsock" => &[
            ("/dev/null", 1),
            ("pipe", 2),
            ("socket", 12),
            ("eventfd", 5),
            ("eventpoll", 2),
        ],
        _ => &[],
    };
    list.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// The threads of each process of `Running`'s VM (by name) and how many seccomp filters
/// each carries: a role is four filters (its allowlist, `clone3` and `openat` answered
/// with an errno, the kill on the SIGSYS handler's `tgkill`). In the vmm each thread runs
/// one role (vmm-main, vcpu on `vcpu0`; the kernel's `kvm-nx-lpage-recovery` worker, where
/// the kernel has one, is made by a vCPU and inherits it; `vhost-watchdog` ends a
/// vhost-user exchange that passed its deadline). A backend runs its process role
/// from birth and its main thread narrows to the vhost-user (console-main) role: 8; a
/// queue thread narrows at its first event (`net-q0` and the RX thread it starts: 8),
/// while one the guest never used still waits, unnamed (`vring_worker`), under the
/// process role alone: 4; the threads started confined before the process filter
/// (`signals`: vhost-user, `console-io`: console-worker) run that role alone: 4, as does
/// each backend's `control` thread (the launcher's Shutdown; bulkhead-blk's image swaps),
/// started under the process filter.
fn expected_threads(program: &str) -> Vec<(&'static str, &'static str)> {
    match program {
        "bulkhead-vmm" => vec![
            ("vcpu0", "4"),
            ("vhost-monitor", "4"),
            ("vhost-watchdog", "4"),
            ("vmm", "4"),
            ("vmm-control", "4"),
            ("vmm-signals", "4"),
        ],
        "bulkhead-blk" => vec![
            ("bulkhead-blk", "8"),
            ("bulkhead-blk", "8"),
            ("control", "4"),
            ("signals", "4"),
            ("vring_worker", "4"),
            ("vu-relay-in", "8"),
            ("vu-relay-out", "8"),
        ],
        "bulkhead-net" => vec![
            ("bulkhead-net", "8"),
            ("bulkhead-net", "8"),
            ("control", "4"),
            ("net-q0", "8"),
            ("net-rx0", "8"),
            ("signals", "4"),
            ("vu-relay-in", "8"),
            ("vu-relay-out", "8"),
        ],
        "bulkhead-console" => vec![
            ("bulkhead-consol", "8"),
            ("bulkhead-consol", "8"),
            ("console-io", "4"),
            ("control", "4"),
            ("signals", "4"),
            ("vring_worker", "4"),
            ("vu-relay-in", "8"),
            ("vu-relay-out", "8"),
        ],
        "bulkhead-vsock" => vec![
            ("bulkhead-vsock", "8"),
            ("bulkhead-vsock", "8"),
            ("control", "4"),
            ("signals", "4"),
            ("vring_worker", "4"),
            ("vsock-io", "4"),
            ("vu-relay-in", "8"),
            ("vu-relay-out", "8"),
        ],
        _ => vec![],
    }
}

/// Each thread of `pid`: (name, Seccomp, Seccomp_filters), sorted (the kernel's own KVM
/// worker, `kvm-nx-lpage-re`, included: the caller checks it apart).
fn threads(pid: u32) -> Vec<(String, String, String)> {
    let mut threads: Vec<(String, String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            (
                name.trim().to_owned(),
                field(&status, "Seccomp").to_owned(),
                field(&status, "Seccomp_filters").to_owned(),
            )
        })
        .collect();
    threads.sort();
    threads
}

/// The line of `/proc/<pid>/limits` for `name`: (soft, hard).
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or("");
    let values: Vec<&str> = line[name.len().min(line.len())..]
        .split_whitespace()
        .collect();
    (
        values.first().copied().unwrap_or("").to_owned(),
        values.get(1).copied().unwrap_or("").to_owned(),
    )
}

#[test]
fn every_process_is_confined_as_promised() {
    require_kvm!();
    require_netns!();
    let mut cmd = common::bulkhead();
    // The landlock probe (each process lists its root once jailed, before any filter), and
    // variables that must not reach the processes.
    cmd.env("RUST_LOG", "warn")
        .env(bulkhead_seccomp::thread::SELF_TEST_ENV, "landlock")
        .env("BULKHEAD_TEST_SECRET", "must not pass");
    let uds = std::env::temp_dir().join(format!("bulkhead-confined-{}.vsock", std::process::id()));
    let vsock = format!("cid=3,uds={}", uds.display());
    let vm = Running::start_via(cmd, "confined", &["--vsock", &vsock], 60_000);
    let pid = vm.pid();
    let kids = children(pid);
    assert_eq!(kids.len(), 5, "{kids:?}");
    let (image, console) = (vm.image(), vm.console());
    let host_cgroups = cgroup_limits::host();
    // Every layer of every process is checked; what fails is listed at the end.
    let mut wrong: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    for (child, program) in &kids {
        let c = child.to_string();
        let status = proc(*child, "status");
        let what = format!("{program} (pid {child})");
        check(
            field(&status, "NoNewPrivs") == "1",
            format!("{what}: no_new_privs unset"),
        );
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let v = field(&status, caps);
            check(v == "0000000000000000", format!("{what}: {caps} {v}"));
        }
        // The VM's own identity, the same for all its processes, gid = uid.
        let id = identity(*child);
        assert_eq!(id, identity(kids[0].0), "{what}: not the VM's identity");
        check(id != 0 && id != 65534, format!("{what}: runs as {id}"));
        check(
            field(&status, "Groups").is_empty(),
            format!("{what}: groups"),
        );
        // Seccomp, per thread: every thread in filter mode with its role's filters.
        // The guest's first packets may still be on their way to the net queue thread when
        // it says it serves: wait (bounded) until its threads and descriptors settle.
        let settled = Instant::now() + Duration::from_secs(20);
        let expected = expected_threads(program);
        let (threads, fds) = loop {
            let (threads, fds) = (threads(*child), fd_kinds(*child, &image, &console));
            let named: Vec<(&str, &str)> = threads
                .iter()
                .filter(|t| t.0 != "kvm-nx-lpage-re")
                .map(|t| (t.0.as_str(), t.2.as_str()))
                .collect();
            if (named == expected && fds == expected_fds(program)) || Instant::now() > settled {
                break (threads, fds);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (name, mode, filters) in &threads {
            check(
                mode == "2",
                format!("{what}: thread {name} seccomp mode {mode:?}"),
            );
            if name == "kvm-nx-lpage-re" {
                check(
                    filters == "4",
                    format!("{what}: thread {name}: {filters} filters"),
                );
            } else {
                seen.push((name, filters));
            }
        }
        check(
            seen == expected,
            format!("{what}: threads (name, seccomp filters) {seen:?}, expected {expected:?}"),
        );
        for kind in ["mnt", "pid", "ipc", "uts", "net"] {
            check(
                ns(&c, kind) != ns("self", kind),
                format!("{what}: {kind} namespace"),
            );
        }
        // Its root: an empty read-only tmpfs.
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{child}/root"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_else(|e| vec![format!("unreadable: {e}").into()]);
        check(root.is_empty(), format!("{what}: its root holds {root:?}"));
        let mountinfo = proc(*child, "mountinfo");
        let root_mount = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or("");
        let options = root_mount.split_whitespace().nth(5).unwrap_or("");
        let fstype = root_mount
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        check(
            options.split(',').any(|o| o == "ro") && fstype == Some("tmpfs"),
            format!("{what}: root mount {root_mount:?}"),
        );
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
        check(sorted == expected, format!("{what}: interfaces {sorted:?}"));
        let expected = expected_fds(program);
        check(
            fds == expected,
            format!("{what}: fds {fds:?}, expected {expected:?}"),
        );
        // Environment: cleared but for RUST_LOG (and the tests' self-test trigger).
        let mut environ: Vec<String> = proc(*child, "environ")
            .split('\0')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        environ.sort();
        check(
            environ == ["BULKHEAD_SECCOMP_SELFTEST=landlock", "RUST_LOG=warn"],
            format!("{what}: environment {environ:?}"),
        );
        // cgroup: memory guest + 256 MiB, one CPU per worker, pids workers + 12 (one
        // worker each here: a vCPU, a queue, a queue pair, the console).
        let cgroup = proc(*child, "cgroup");
        let name = format!("/bulkhead/bulkhead-{pid}-");
        check(
            cgroup.contains(&name),
            format!("{what}: not in its cgroup:\n{cgroup}"),
        );
        let limits = cgroup_limits::Limits::of(*child, &host_cgroups);
        // bulkhead-vsock has two workers (its queue thread and its I/O thread).
        let workers = if program == "bulkhead-vsock" { 2 } else { 1 };
        let expected = cgroup_limits::Limits::expected(
            &host_cgroups,
            (256 + 256) << 20,
            100_000 * workers,
            12 + workers,
        );
        check(
            limits == expected,
            format!("{what}: cgroup limits {limits:?}, expected {expected:?} on {host_cgroups:?}"),
        );
        // rlimits, soft and hard: NOFILE, FSIZE (vmm: guest memory; blk: the image; the
        // console writes a new file: its default max-size, 16 MiB; net: 0), NPROC: the VM's tasks together, 13 for each
        // of its four processes (one worker each, twelve spare threads).
        let limits = proc(*child, "limits");
        let (nofile, fsize) = match program.as_str() {
            "bulkhead-vmm" => ("1024", (256u64 << 20).to_string()),
            "bulkhead-blk" => ("256", (1u64 << 20).to_string()),
            "bulkhead-console" => ("256", (16u64 << 20).to_string()),
            "bulkhead-vsock" => ("512", "0".to_owned()),
            _ => ("256", "0".to_owned()),
        };
        for (name, value) in [
            ("Max open files", nofile.to_owned()),
            ("Max file size", fsize),
            ("Max processes", "66".to_owned()),
        ] {
            let got = limit(&limits, name);
            check(
                got == (value.clone(), value.clone()),
                format!("{what}: {name} {got:?}, expected {value}"),
            );
        }
    }
    // SAFETY: SIGTERM to the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_nothing_left(pid, &kids);
    // Landlock: each process, jailed, was refused its own (empty) root directory.
    for name in ["vmm", "disk0", "net0", "console0", "vsock0"] {
        let line = format!("{name}| landlock self-test: listing / refused (");
        let refused = stderr
            .lines()
            .any(|l| l.starts_with(&line) && l.ends_with("(os error 13))"));
        check(
            refused,
            format!("{name}: landlock did not refuse (EACCES) listing its root"),
        );
    }
    let probes: Vec<&str> = stderr.lines().filter(|l| l.contains("self-test")).collect();
    assert!(
        wrong.is_empty(),
        "not confined as promised:\n{}\nlandlock probes: {probes:#?}",
        wrong.join("\n")
    );
}

/// Stops `vm` (SIGTERM) and checks it ended so (128 + SIGTERM) with nothing left (the
/// order of the stops is `supervision.rs`'s to check).
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
    require_netns!();
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
    require_netns!();
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
