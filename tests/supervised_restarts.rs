//! Restarts under the launcher's supervision: a killed device process is restarted as the
//! same uid in a new cgroup and reported (`ctl status`, one line on stderr); `ctl restart
//! --exec` swaps its program; a death beyond the budget gives the device up while the VM
//! goes on; a seccomp (SIGSYS) death stops the VM unless `restart-on-sigsys`; and a new
//! process that dies while the vmm reconnects it, or that does not start, counts as another
//! death. (`tests/supervision.rs`: kills with `restart=off`, stopping in order, leftovers.)

mod common;

use std::time::Duration;

use common::ctl::ctl;
use common::running::{assert_nothing_left, cgroups_of, children, serial, Running};

/// The uid line of `/proc/<pid>/status`.
fn uids_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .to_owned()
}

/// With the default policy (5 within 60 s), a `bulkhead-blk` killed with SIGKILL is
/// restarted: a new process, as the same uid, in a new cgroup (the old one removed), shown
/// in `ctl status` with its restart; one line on stderr names the old pid and the signal,
/// the new pid, the budget and the time the disk was unavailable. Then `ctl restart disk0
/// --exec COPY` replaces it with another program. The VM goes on and ends with status 0.
#[test]
fn a_killed_block_process_is_restarted_and_reported() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let socket = std::env::temp_dir().join(format!("bulkhead-restart-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let vm = Running::start_with("restart-blk", &["--api-socket", socket.to_str().unwrap()]);
    let pid = vm.pid();
    let kids = children(pid);
    let (old, _) = *kids
        .iter()
        .find(|(_, n)| n == "bulkhead-blk")
        .expect("a bulkhead-blk");
    let uid = uids_of(old);
    assert!(uid.starts_with("Uid:"), "no uid for {old}");
    let cgroups_before = cgroups_of(pid);
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    // The new process shows in the launcher's status.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (new, status) = loop {
        let (code, out) = ctl(&socket, "status");
        let new = children(pid)
            .into_iter()
            .find(|(p, n)| n == "bulkhead-blk" && *p != old);
        if let (Some(0), Some((new, _))) = (code, new) {
            if out.contains(&format!(
                "process: disk0 (bulkhead-blk, restarted once) pid {new} running"
            )) {
                break (new, out);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restarted bulkhead-blk in the status:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.contains(&format!("pid {old} ")), "{status}");
    assert_eq!(uids_of(new), uid, "the new process runs as another uid");
    let cgroups = cgroups_of(pid);
    // (A host without cgroup controllers gives no process a cgroup.)
    assert!(
        cgroups_before.is_empty() || cgroups.iter().any(|c| c.ends_with("-disk0-r1")),
        "no cgroup of the new process in {cgroups:?} (before: {cgroups_before:?})"
    );
    assert!(
        !cgroups.iter().any(|c| c.ends_with("-disk0")),
        "the dead process's cgroup is left: {cgroups:?}"
    );

    // Live replacement with another program (a copy of the backend, standing for a new
    // build): the old process is asked to stop, the copy runs from then on.
    let dir = std::env::temp_dir().join(format!("bulkhead-restart-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("bulkhead-blk-new");
    let blk = std::path::Path::new(env!("CARGO_BIN_EXE_bulkhead")).with_file_name("bulkhead-blk");
    std::fs::copy(&blk, &copy).expect("copying bulkhead-blk");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(&socket)
        .args(["restart", "disk0", "--exec"])
        .arg(&copy)
        .output()
        .expect("running bulkhead ctl restart");
    assert!(out.status.success(), "{out:?}");
    let replaced = children(pid)
        .into_iter()
        .find(|(_, n)| n == "bulkhead-blk-new")
        .map(|(p, _)| p)
        .unwrap_or_else(|| panic!("no bulkhead-blk-new among {:?}", children(pid)));
    assert!(
        !children(pid).iter().any(|(p, _)| *p == new),
        "the replaced process is still there"
    );
    let (code, out) = ctl(&socket, "status");
    assert!(
        code == Some(0)
            && out.contains(&format!(
                "process: disk0 (bulkhead-blk-new, restarted 2 times) pid {replaced} running"
            )),
        "{out}"
    );
    assert_eq!(uids_of(replaced), uid);
    // A device that is not there, and a program that is not: refused, the VM goes on.
    let (code, out) = ctl(&socket, "restart");
    assert_ne!(code, Some(0), "{out}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(&socket)
        .args(["restart", "disk7"])
        .output()
        .expect("running bulkhead ctl restart");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && text.contains("disk7: no such device process"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let (code, out) = ctl(&socket, "shutdown");
    assert_eq!(code, Some(0), "{out}");
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bulkhead: disk0: bulkhead-blk (pid {new}) replaced as asked (ctl restart); \
             restarted as pid {replaced} (not counted in the restart budget); unavailable "
        )),
        "{stderr}"
    );
    let expected = format!(
        "bulkhead: disk0: bulkhead-blk (pid {old}) killed by signal 9 (SIGKILL); restarted as \
         pid {new} (restart 1 of 5 within 60 s); unavailable "
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&expected))
        .unwrap_or_else(|| panic!("expected {expected:?} in:\n{stderr}"));
    let ms: u64 = line[expected.len()..]
        .strip_suffix(" ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(ms < 30_000, "{line}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut all = kids;
    all.push((new, "bulkhead-blk".into()));
    all.push((replaced, "bulkhead-blk-new".into()));
    assert_nothing_left(pid, &all);
}

/// The death beyond the budget (`restart=1/60`: the second within a minute) is not
/// restarted: one line says so and names the policy, the device is given up, and the VM
/// goes on (the API answers, the other processes run) and ends with status 0.
#[test]
fn the_death_beyond_the_budget_gives_the_device_up_and_the_vm_goes_on() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let socket = std::env::temp_dir().join(format!("bulkhead-budget-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let vm = Running::start_with_keys(
        "restart-budget",
        &["--api-socket", socket.to_str().unwrap()],
        ",restart=1/60",
    );
    let pid = vm.pid();
    let kids = children(pid);
    let blk = |except: &[u32]| {
        children(pid)
            .into_iter()
            .find(|(p, n)| n == "bulkhead-blk" && !except.contains(p))
            .map(|(p, _)| p)
    };
    let first = blk(&[]).expect("a bulkhead-blk");
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let second = loop {
        if let Some(p) = blk(&[first]) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no restart");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Wait until the vmm has it (the status shows the restart), then kill it too.
    loop {
        let (_, out) = ctl(&socket, "status");
        if out.contains(&format!("restarted once) pid {second} running")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(second as i32, libc::SIGKILL) }, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(blk(&[first, second]), None, "restarted beyond the budget");
    let (code, out) = ctl(&socket, "status");
    assert_eq!(code, Some(0), "the VM did not go on: {out}");
    assert!(
        out.contains(&format!(
            "disk0 (bulkhead-blk, restarted once) pid {second} failed"
        )),
        "{out}"
    );
    assert!(out.contains("(bulkhead-net) pid"), "{out}");
    let (code, out) = ctl(&socket, "shutdown");
    assert_eq!(code, Some(0), "{out}");
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let expected = format!(
        "bulkhead: disk0: bulkhead-blk (pid {second}) killed by signal 9 (SIGKILL); not \
         restarted: its restart budget (restart=1/60) is spent; disk0 is stopped (the guest \
         sees it needs a reset), the VM goes on"
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    let mut all = kids;
    all.push((second, "bulkhead-blk".into()));
    assert_nothing_left(pid, &all);
}

/// A device process killed by SIGSYS (as seccomp kills; `kill -SYS` gives the same wait
/// status) is a security event: by default reported, not restarted, and the VM stops with
/// 125; with `--restart-on-sigsys` it is restarted like any other death.
#[test]
fn a_sigsys_death_stops_the_vm_unless_restart_on_sigsys() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    for restart_on_sigsys in [false, true] {
        let extra: &[&str] = if restart_on_sigsys {
            &["--restart-on-sigsys"]
        } else {
            &[]
        };
        let vm = Running::start_with(&format!("sigsys-{restart_on_sigsys}"), extra);
        let pid = vm.pid();
        let kids = children(pid);
        let (victim, _) = *kids
            .iter()
            .find(|(_, n)| n == "bulkhead-blk")
            .expect("a bulkhead-blk");
        // SAFETY: kill(2) of a child of the bulkhead process this test started.
        assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGSYS) }, 0);
        let head = format!("bulkhead: disk0: security event: bulkhead-blk (pid {victim}) killed by signal 31 (SIGSYS)");
        if !restart_on_sigsys {
            let (code, stderr) = vm.finish();
            assert_eq!(code, Some(125), "{stderr}");
            let line = stderr
                .lines()
                .find(|l| l.starts_with(&head))
                .unwrap_or_else(|| panic!("expected {head:?} in:\n{stderr}"));
            assert!(line.ends_with("; not restarted (a seccomp kill is not a crash; --restart-on-sigsys restarts it); stopping the VM"), "{line}");
            assert!(!stderr.contains("restarted as pid"), "{stderr}");
            assert_nothing_left(pid, &kids);
            continue;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let new = loop {
            if let Some((p, _)) = children(pid)
                .into_iter()
                .find(|(p, n)| n == "bulkhead-blk" && *p != victim)
            {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "not restarted");
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the restart be reported, then stop the VM as a user would.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: SIGTERM to the bulkhead process this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let (code, stderr) = vm.finish();
        assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
        let expected =
            format!("bulkhead: disk0: bulkhead-blk (pid {victim}) killed by signal 31 (SIGSYS)");
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)
                && l.contains(&format!(
                    "; restarted as pid {new} (restart 1 of 5 within 60 s)"
                ))),
            "{stderr}"
        );
        assert!(!stderr.contains("security event"), "{stderr}");
        let mut all = kids;
        all.push((new, "bulkhead-blk".into()));
        assert_nothing_left(pid, &all);
    }
}

/// Whether process `pid` is under seccomp (filter mode): a backend is confined before it
/// says it is ready.
fn seccomp_on(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().eq(["Seccomp:", "2"]))
}

/// A new `bulkhead-blk` that dies while the vmm replays the device's set-up to it is
/// another death of the disk: the vmm answers `DeviceLost`, and the launcher counts it in
/// the budget and starts another (default policy), or (`restart=1/60`) gives the disk up
/// with one line naming the policy; the VM goes on either way. To make the new process
/// die during the replay, the vmm is stopped (SIGSTOP) while the old process is killed,
/// the launcher starts the new one and hands it over (`Reconnect` waits in the channel),
/// the new one is killed, then the vmm goes on and finds it gone.
#[test]
fn a_new_block_process_lost_during_the_reconnect_counts_as_a_death() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    for keys in ["", ",restart=1/60"] {
        let socket =
            std::env::temp_dir().join(format!("bulkhead-lost-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let vm = Running::start_with_keys(
            &format!("lost-replay{}", keys.len()),
            &["--api-socket", socket.to_str().unwrap()],
            keys,
        );
        let pid = vm.pid();
        let kids = children(pid);
        let of = |name: &str| kids.iter().find(|(_, n)| n == name).map(|(p, _)| *p);
        let vmm = of("bulkhead-vmm").expect("a bulkhead-vmm");
        let first = of("bulkhead-blk").expect("a bulkhead-blk");
        let blk = |except: &[u32]| {
            children(pid)
                .into_iter()
                .find(|(p, n)| n == "bulkhead-blk" && !except.contains(p))
                .map(|(p, _)| p)
        };
        // SAFETY: signals to children of the bulkhead process this test started.
        assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGSTOP) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let second = loop {
            if let Some(p) = blk(&[first]).filter(|&p| seccomp_on(p)) {
                break p;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(vmm as i32, libc::SIGCONT) };
                panic!("no new confined bulkhead-blk");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Confined, then ready: the launcher sends Reconnect at once.
        std::thread::sleep(Duration::from_millis(1000));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(second as i32, libc::SIGKILL) }, 0);
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGCONT) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let third = loop {
            let (_, out) = ctl(&socket, "status");
            if keys.is_empty() {
                if let Some(p) = blk(&[first, second]) {
                    if out.contains(&format!("restarted 2 times) pid {p} running")) {
                        break Some(p);
                    }
                }
            } else if out.contains(&format!("restarted once) pid {second} failed")) {
                break None;
            }
            assert!(std::time::Instant::now() < deadline, "{out}");
            std::thread::sleep(Duration::from_millis(100));
        };
        if !keys.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(blk(&[first, second]), None, "restarted beyond the budget");
        }
        let (code, out) = ctl(&socket, "status");
        assert_eq!(code, Some(0), "the VM did not go on: {out}");
        assert!(out.contains("(bulkhead-net) pid"), "{out}");
        let (code, out) = ctl(&socket, "shutdown");
        assert_eq!(code, Some(0), "{out}");
        let (code, stderr) = vm.finish();
        assert_eq!(code, Some(0), "{stderr}");
        let policy = if keys.is_empty() { 5 } else { 1 };
        let lost = format!(
            "bulkhead: disk0: bulkhead-blk (pid {first}) killed by signal 9 (SIGKILL); \
             restarted as pid {second} (restart 1 of {policy} within 60 s), but it was lost \
             before the vmm reconnected it"
        );
        assert!(
            stderr.lines().any(|l| l == lost),
            "expected {lost:?} in:\n{stderr}"
        );
        let again = format!(
            "bulkhead: disk0: bulkhead-blk (pid {second}) killed by signal 9 (SIGKILL) during \
             the reconnect; "
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&again))
            .unwrap_or_else(|| panic!("expected {again:?} in:\n{stderr}"));
        let rest = &line[again.len()..];
        match third {
            Some(third) => assert!(
                rest.starts_with(&format!(
                    "restarted as pid {third} (restart 2 of 5 within 60 s); unavailable "
                )),
                "{line}"
            ),
            None => {
                assert_eq!(
                    rest,
                    "not restarted: its restart budget (restart=1/60) is spent; disk0 is \
                     stopped (the guest sees it needs a reset), the VM goes on"
                );
                // The vmm was told (GiveUp) and marked the device NEEDS_RESET.
                assert!(
                    stderr.contains(
                        "disk0: stopped, it needs a reset: not restarted: its restart budget \
                         (restart=1/60) is spent"
                    ),
                    "{stderr}"
                );
            }
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        let mut all = kids;
        all.push((second, "bulkhead-blk".into()));
        all.extend(third.map(|p| (p, "bulkhead-blk".into())));
        assert_nothing_left(pid, &all);
    }
}

/// A new process that does not start is a death of the device like any other: counted in
/// the budget and tried again within it. (`--jail off`, so that a shell script can stand
/// for the program: `ctl restart --exec` makes it the disk's program; it runs
/// `bulkhead-blk` on its first and third start and exits at once, status 3, on its
/// second.)
#[test]
fn a_new_process_that_does_not_start_is_counted_and_tried_again() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let dir = std::env::temp_dir().join(format!("bulkhead-nostart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let blk = std::path::Path::new(env!("CARGO_BIN_EXE_bulkhead")).with_file_name("bulkhead-blk");
    let starts = dir.join("starts");
    let wrapper = dir.join("blk-wrap");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nn=$(cat {s} 2>/dev/null || echo 0)\nn=$((n + 1))\necho $n > {s}\n\
             [ \"$n\" = 2 ] && exit 3\nexec {blk} \"$@\"\n",
            s = starts.display(),
            blk = blk.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = dir.join("api.sock");
    let vm = Running::start_with(
        "nostart",
        &["--jail", "off", "--api-socket", socket.to_str().unwrap()],
    );
    let pid = vm.pid();
    let kids = children(pid);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(&socket)
        .args(["restart", "disk0", "--exec"])
        .arg(&wrapper)
        .output()
        .expect("running bulkhead ctl restart");
    assert!(out.status.success(), "{out:?}");
    let (_, status) = ctl(&socket, "status");
    let first = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("process: disk0 (blk-wrap, restarted once) pid ")?
                .strip_suffix(" running")?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no blk-wrap in the status:\n{status}"));
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let third = loop {
        let (_, out) = ctl(&socket, "status");
        let third = out.lines().find_map(|l| {
            l.strip_prefix("process: disk0 (blk-wrap, restarted 3 times) pid ")?
                .strip_suffix(" running")?
                .parse::<u32>()
                .ok()
        });
        if let Some(third) = third {
            break third;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        std::fs::read_to_string(&starts).unwrap_or_default().trim(),
        "3",
        "blk-wrap did not start 3 times"
    );
    let (code, out) = ctl(&socket, "shutdown");
    assert_eq!(code, Some(0), "{out}");
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let failed = format!(
        "bulkhead: disk0: blk-wrap (pid {first}) killed by signal 9 (SIGKILL); restarting it \
         (restart 1 of 5 within 60 s) failed: "
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&failed))
        .unwrap_or_else(|| panic!("expected {failed:?} in:\n{stderr}"));
    assert!(line.contains("exited with status 3"), "{line}");
    let again = format!(
        "bulkhead: disk0: the new blk-wrap did not start; restarted as pid {third} (restart 2 \
         of 5 within 60 s); unavailable "
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(&again)),
        "expected {again:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut all = kids;
    all.push((first, "bulkhead-blk".into()));
    all.push((third, "bulkhead-blk".into()));
    assert_nothing_left(pid, &all);
    let _ = std::fs::remove_dir_all(&dir);
}
