//! The launcher supervises every process of a VM: killing any one of them (SIGKILL) ends
//! the VM with a message naming it when its device has `restart=off` (the vmm's, always;
//! restarts under the default policy are `tests/supervised_restarts.rs`); and a stop
//! signal to the launcher stops the VM in
//! order (the vmm first, once asked, then each backend, each ending cleanly: the
//! launcher's log of each stop). Afterwards no process and no network namespace of the VM
//! is left. (Which process the kernel saw end first is no evidence of the order: the vmm
//! closes its vhost-user connections before it exits, and a backend may end on that.)

mod common;

use std::time::Duration;

use common::ctl::ctl;

use common::running::{
    assert_gone, assert_nothing_left, cgroups_of, children, namespaces_of, serial, Running,
};

fn kill_one(program: &str, device: &str) {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let vm = Running::start_restart_off(&format!("kill-{device}"));
    let kids = children(vm.pid());
    let names: Vec<&str> = kids.iter().map(|(_, n)| n.as_str()).collect();
    for expected in [
        "bulkhead-blk",
        "bulkhead-net",
        "bulkhead-console",
        "bulkhead-vmm",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let (victim, _) = kids
        .iter()
        .find(|(_, n)| n == program)
        .expect("found above");
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(*victim as i32, libc::SIGKILL) }, 0);
    let pid = vm.pid();
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(125), "{stderr}");
    let expected = format!(
        "bulkhead: {device} failed: {program} (pid {victim}) was killed by signal 9 (SIGKILL); VM stopped"
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(pid, &kids);
}

/// SIGTERM sent to the vmm itself (as an orchestrator that found it by pid would) stops
/// the VM in order, whichever of its threads the kernel picks for the signal: the vmm is
/// init of its PID namespace and has no handler, so a stop signal a thread did not block
/// used to be dropped and the VM ran on.
#[test]
fn sigterm_to_the_vmm_stops_the_vm_in_order() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let vm = Running::start("sigterm-vmm");
    let kids = children(vm.pid());
    let (vmm, _) = *kids
        .iter()
        .find(|(_, n)| n == "bulkhead-vmm")
        .expect("bulkhead-vmm among the launcher's children");
    // SAFETY: kill(2) of a child of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGTERM) }, 0);
    let pid = vm.pid();
    // The guest serves for 60 s: a lost signal shows as "bulkhead did not stop".
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(pid, &kids);
}

#[test]
fn killing_the_vmm_is_reported_by_name() {
    kill_one("bulkhead-vmm", "vmm");
}

#[test]
fn killing_the_block_process_is_reported_by_name() {
    kill_one("bulkhead-blk", "disk0");
}

#[test]
fn killing_the_net_process_is_reported_by_name() {
    kill_one("bulkhead-net", "net0");
}

#[test]
fn killing_the_console_process_is_reported_by_name() {
    kill_one("bulkhead-console", "console0");
}

#[test]
fn sigterm_to_the_launcher_stops_everything_in_order() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let mut cmd = common::bulkhead();
    cmd.env("RUST_LOG", "info");
    let vm = Running::start_via(cmd, "sigterm", &[], 60_000);
    let kids = children(vm.pid());
    let pid = vm.pid();
    // SAFETY: kill(2) of the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("stopping the VM"), "{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
    // In order, as the launcher did it: the vmm first (it said Exited, asked to shut down
    // over its control channel), then each backend in the order they were started, each
    // ending cleanly (status 0) on its own (the vmm's hang-up ends it) or on the SIGTERM
    // the launcher sends, never killed after the grace period.
    let stopped: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("| ") && l.contains(" stopped "))
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .collect();
    let order = [
        ("vmm", "bulkhead-vmm"),
        ("disk0", "bulkhead-blk"),
        ("net0", "bulkhead-net"),
        ("console0", "bulkhead-console"),
    ];
    assert_eq!(stopped.len(), order.len(), "{stopped:#?}\n{stderr}");
    for (line, (name, program)) in stopped.iter().zip(order) {
        let (kid, _) = kids
            .iter()
            .find(|(_, p)| p == program)
            .unwrap_or_else(|| panic!("no {program} among {kids:?}"));
        let prefix = format!("{name}: {program} (pid {kid}) stopped ");
        let how = line
            .strip_prefix(&prefix)
            .and_then(|l| l.strip_suffix(": exited with status 0"));
        assert!(
            matches!(how, Some("on its own" | "on SIGTERM")),
            "expected {name} stopped cleanly here, in {stopped:#?}"
        );
    }
    assert_nothing_left(pid, &kids);
}

/// CPU time (ns) the vmm's vCPU thread has used, from /proc/<pid>/task/<tid>/schedstat.
fn vcpu_cpu_ns(vmm: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{vmm}/task"))
        .expect("vmm tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "vcpu0" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            return stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    panic!("no vcpu0 thread in the vmm");
}

#[test]
fn ctl_reports_pauses_resumes_and_shuts_down_the_vm() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let socket = std::env::temp_dir().join(format!("bulkhead-api-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let vm = Running::start_with("ctl", &["--api-socket", socket.to_str().unwrap()]);
    let pid = vm.pid();
    let kids = children(pid);
    let vmm = kids
        .iter()
        .find(|(_, n)| n == "bulkhead-vmm")
        .expect("vmm")
        .0;
    let mode = std::fs::metadata(&socket)
        .expect("API socket")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let (code, out) = ctl(&socket, "status");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("state: running\nvcpus: 1\nmemory: 256 MiB\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("process: vmm pid {vmm} running")),
        "{out}"
    );
    for (p, name) in kids.iter().filter(|(p, _)| *p != vmm) {
        assert!(
            out.contains(&format!("({name}) pid {p} running")),
            "{name} missing:\n{out}"
        );
    }

    // Paused, the guest's vCPU (busy serving the network) uses no CPU time.
    let (code, out) = ctl(&socket, "pause");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("state: paused"), "{out}");
    let before = vcpu_cpu_ns(vmm);
    std::thread::sleep(Duration::from_millis(300));
    let paused = vcpu_cpu_ns(vmm) - before;
    assert!(paused < 5_000_000, "vcpu0 ran {paused} ns while paused");
    let (code, out) = ctl(&socket, "status");
    assert!(code == Some(0) && out.starts_with("state: paused"), "{out}");

    let (code, out) = ctl(&socket, "resume");
    assert!(
        code == Some(0) && out.starts_with("state: running"),
        "{out}"
    );
    let before = vcpu_cpu_ns(vmm);
    std::thread::sleep(Duration::from_millis(300));
    let running = vcpu_cpu_ns(vmm) - before;
    assert!(
        running > 20_000_000,
        "vcpu0 ran only {running} ns after resuming"
    );

    let (code, out) = ctl(&socket, "shutdown");
    assert_eq!(code, Some(0), "{out}");
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("shutdown requested on the API socket"),
        "{stderr}"
    );
    assert!(!socket.exists(), "the API socket outlived the VM");
    assert_nothing_left(pid, &kids);

    // Nobody listening: a clear error, not a hang.
    let (code, out) = ctl(&socket, "status");
    assert_eq!(code, Some(125), "{out}");
    assert!(
        out.contains(&format!("API socket {}", socket.display())),
        "{out}"
    );
}

#[test]
fn what_a_killed_launcher_left_is_removed_by_the_next_run() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let vm = Running::start("killed-launcher");
    let pid = vm.pid();
    let kids = children(pid);
    // What says it runs: the lock it holds.
    let lock = std::path::PathBuf::from(format!("/run/bulkhead/launcher-{pid}.lock"));
    assert!(lock.exists(), "{} missing", lock.display());
    // SAFETY: SIGKILL to the bulkhead process this test started: it cannot clean up.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let _ = vm.finish();
    // Its processes die with it (parent-death signal) ...
    assert_gone(&kids, "its launcher");
    // ... but its namespace and cgroups stay.
    assert_eq!(namespaces_of(pid).len(), 1, "the namespace");
    assert!(!cgroups_of(pid).is_empty(), "the cgroups");
    let out = common::run_vm(&["--serial", "off"], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        out.stderr.contains(&format!(
            "removed the network namespace bulkhead-{pid}-net0"
        )),
        "{}",
        out.stderr
    );
    assert!(namespaces_of(pid).is_empty());
    assert!(cgroups_of(pid).is_empty(), "{:?}", cgroups_of(pid));
    assert!(!lock.exists(), "the dead launcher's lock file is left");
}

/// Starts the demo (`bulkhead run` with no flags, stdin null: its console reads end of
/// input, and the guest runs its checks and powers off) and SIGKILLs it as soon as it
/// says where its scratch disk is; returns that disk's directory, or `None` if the demo
/// ended by itself before the signal landed (it takes well under a second).
fn killed_demo() -> Option<std::path::PathBuf> {
    use std::io::BufRead;
    let mut child = common::bulkhead()
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let stderr = child.stderr.take().expect("piped");
    let mut said = String::new();
    let mut image = None;
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        image = line
            .split_once(" scratch disk ")
            .and_then(|(_, rest)| rest.split_once(" (deleted at exit)"))
            .map(|(path, _)| std::path::PathBuf::from(path));
        said.push_str(&line);
        if image.is_some() {
            break;
        }
    }
    // SAFETY: SIGKILL to the bulkhead process this test started: it cannot clean up.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let status = child.wait().expect("waiting for bulkhead");
    let image = image.unwrap_or_else(|| panic!("no scratch disk named in: {said}"));
    use std::os::unix::process::ExitStatusExt;
    (status.signal() == Some(libc::SIGKILL)).then(|| image.parent().expect("in a dir").into())
}

#[test]
fn the_scratch_disk_of_a_killed_demo_is_removed_by_the_next_run() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let dir = (0..5)
        .find_map(|_| killed_demo())
        .expect("the demo ended by itself five times before SIGKILL landed");
    let image = dir.join("scratch.img");
    assert!(
        std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file()),
        "the killed demo's scratch disk {} is not left: nothing to reap",
        image.display()
    );
    let out = common::run_vm(&["--serial", "off"], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:#?}");
    let said = format!(
        "removed the scratch disk directory {} of a bulkhead that is gone",
        dir.display()
    );
    assert!(
        out.stderr.contains(&said),
        "{said:?} not in:\n{}",
        out.stderr
    );
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "{} is left",
        dir.display()
    );
}

#[test]
fn a_launcher_under_another_name_keeps_its_namespace_when_another_starts() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    // The same launcher through a symlink of another name: the kernel calls it that
    // (comm), and the reaper must not take it for gone.
    let dir = std::env::temp_dir().join(format!("bulkhead-renamed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let renamed = dir.join("vmm-renamed");
    let _ = std::fs::remove_file(&renamed);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bulkhead"), &renamed).unwrap();
    let mut cmd = std::process::Command::new(&renamed);
    cmd.stdin(std::process::Stdio::null());
    let vm = Running::start_via(cmd, "renamed", &[], 15_000);
    let pid = vm.pid();
    let _ = std::fs::remove_dir_all(&dir);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim_end(), "vmm-renamed");
    assert_eq!(namespaces_of(pid).len(), 1, "the namespace");
    // Another launcher starts (and reaps what gone launchers left) and ends.
    let out = common::run_vm(&["--serial", "off"], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:#?}");
    // (It may remove what other, really dead launchers left: only ours matters.)
    assert!(
        !out.stderr.contains(&format!("bulkhead-{pid}-")),
        "{}",
        out.stderr
    );
    // The first VM's namespace is still there and its guest still answers through it.
    assert_eq!(namespaces_of(pid).len(), 1, "the namespace was removed");
    let name = format!("bulkhead-{pid}-net0");
    let echoed = common::netns::in_netns(&name, || {
        let sock = std::net::UdpSocket::bind("10.0.2.1:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.send_to(b"still there?", "10.0.2.2:7")?;
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok::<_, std::io::Error>(buf[..n].to_vec())
    });
    assert_eq!(
        echoed.ok().and_then(Result::ok).as_deref(),
        Some(&b"still there?"[..]),
        "the guest does not answer in {name}"
    );
    let kids = children(pid);
    // It ends by itself (the guest stops serving), normally.
    let (code, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_nothing_left(pid, &kids);
}

#[test]
fn a_stop_signal_while_the_vm_starts_stops_it_and_leaves_nothing() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    // SIGTERM once the launcher has started `started` of its three processes: while the
    // others start, the vmm builds the VM, the launcher waits for its handshake.
    for started in 1..=3 {
        let img = common::disk::Image::new(&format!("stop-while-starting-{started}"), 1 << 20);
        let mut child = common::bulkhead()
            .args([
                "run",
                "--serial",
                "off",
                "--net",
                "auto",
                "--console",
                "off",
            ])
            .arg("--disk")
            .arg(img.disk_arg(""))
            .args([
                "--cmdline",
                "bulkhead.test=net-serve bulkhead.net.serve-ms=30000",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting bulkhead");
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut kids = Vec::new();
        while kids.len() < started && std::time::Instant::now() < deadline {
            kids = children(pid);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(kids.len() >= started, "only {kids:?} started");
        // SAFETY: SIGTERM to the bulkhead process this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let status = common::wait_until(
            &mut child,
            std::time::Instant::now() + Duration::from_secs(60),
        );
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        // The launcher handled it (it was not killed by it) and took everything down.
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(128 + libc::SIGTERM),
            "SIGTERM after {started} processes: {status:?}\n{stderr}"
        );
        assert!(stderr.contains("stopping the VM"), "{stderr}");
        assert_nothing_left(pid, &kids);
    }
}

#[test]
fn a_file_that_replaced_the_api_socket_is_kept() {
    require_kvm!();
    let _serial = serial();
    require_netns!();
    let dir = std::env::temp_dir();
    let socket = dir.join(format!("bulkhead-api-replaced-{}.sock", std::process::id()));
    let other = dir.join(format!("bulkhead-api-other-{}", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let vm = Running::start_with("api-replaced", &["--api-socket", socket.to_str().unwrap()]);
    let pid = vm.pid();
    // Someone puts another file where the socket was, while the VM runs.
    std::fs::write(&other, b"not bulkhead's").unwrap();
    std::fs::rename(&other, &socket).unwrap();
    // SAFETY: SIGTERM to the bulkhead process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, stderr) = vm.finish();
    let kept = std::fs::read(&socket);
    let _ = std::fs::remove_file(&socket);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_eq!(
        kept.ok().as_deref(),
        Some(&b"not bulkhead's"[..]),
        "the file that replaced the API socket was not kept"
    );
}
