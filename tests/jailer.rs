//! End-to-end tests of the jailer (`bulkhead-jailer`, the `bulkhead::jail` library), checked
//! from outside the jailed process as a user would: /proc/<pid>/status, ns, root,
//! mountinfo, fd, net/dev, limits, cgroup files (exactly the limits, under each controller
//! the host's mounts offer), exit statuses. Run as root; without root
//! (or without a static busybox: `.ci/run` installs busybox-static; tests never install)
//! they are skipped with a printed reason (tests/common/skip.rs: a failure under CI).

#[path = "common/skip.rs"]
mod skip;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/cgroup_limits.rs"]
mod cgroup_limits;

const JAILER: &str = env!("CARGO_BIN_EXE_bulkhead-jailer");
const UID: u32 = 65534;
const GID: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip_or_fail(skip::SkipKind::NotPermitted, "the jailer tests need root");
        return false;
    }
    true
}

/// Whether the ELF file at `path` is statically linked (no PT_INTERP program header).
fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else {
        return false;
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// A statically linked busybox (Debian's busybox-static, which `.ci/run` installs), looked
/// for once for all the tests, which run in parallel.
fn static_busybox() -> Option<PathBuf> {
    static BUSYBOX: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let found = BUSYBOX.get_or_init(|| {
        let path = PathBuf::from("/bin/busybox");
        is_static_elf(&path).then_some(path)
    });
    if found.is_none() {
        skip::skip_or_fail(
            skip::SkipKind::MissingTool,
            "no static /bin/busybox (Debian's busybox-static)",
        );
    }
    found.clone()
}

fn id(test: &str) -> String {
    format!("jt-{test}-{}", std::process::id())
}

/// The jailed child of `jailer` (its only child), once it exists.
fn jailed_pid(jailer: &Child) -> i32 {
    let children = format!("/proc/{0}/task/{0}/children", jailer.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the jailer started no child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `/proc/<pid>/cmdline` starts with `argv0` (the program has been executed).
fn wait_for_exec(pid: i32, argv0: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with(argv0.as_bytes()) && cmdline.get(argv0.len()) == Some(&0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not execute {argv0}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: i32, name: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn fds_of(pid: i32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

/// Everything a confined process must show from outside, whoever finished its jail.
fn assert_confined(pid: i32) {
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    let ids = |v: u32| format!("{v}\t{v}\t{v}\t{v}");
    assert_eq!(status_field(pid, "Uid"), ids(UID));
    assert_eq!(status_field(pid, "Gid"), ids(GID));
    assert_eq!(status_field(pid, "Groups"), "");
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().last(),
        Some("1")
    );
    let root: Vec<_> = fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "root of {pid} is not empty: {root:?}");
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let lines: Vec<&str> = mounts.lines().collect();
    assert_eq!(lines.len(), 1, "mounts of {pid}: {mounts}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[4], "/", "{mounts}");
    assert!(
        fields[5].split(',').any(|o| o == "ro"),
        "root not read-only: {mounts}"
    );
    assert!(lines[0].contains(" - tmpfs "), "{mounts}");
    let net = fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let interfaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    [
        "bulkhead",
        "memory/bulkhead",
        "cpu/bulkhead",
        "pids/bulkhead",
    ]
    .iter()
    .map(|p| root.join(p).join(id))
    .filter(|p| p.exists())
    .collect()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: signalling a process this test started (directly or through the jailer).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

fn wait_code(mut jailer: Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = jailer.try_wait().unwrap() {
            return status.code().expect("the jailer exits, it is not killed");
        }
        if Instant::now() > deadline {
            let _ = jailer.kill();
            panic!("the jailer did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn static_binary_is_confined_by_the_jailer_with_only_the_fds_it_keeps() {
    if !is_root() {
        return;
    }
    let Some(busybox) = static_busybox() else {
        return;
    };
    let id = id("static");
    // One fd to keep and one that leaks into the jailer (no close-on-exec) but not further.
    let kept = fs::File::open("/dev/null").unwrap();
    let leaked = fs::File::open("/dev/zero").unwrap();
    for fd in [kept.as_raw_fd(), leaked.as_raw_fd()] {
        // SAFETY: clearing close-on-exec on fds owned by this test.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let jailer = Command::new(JAILER)
        .args([
            "--id",
            &id,
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--rlimit-nofile",
            "64",
        ])
        .arg("--exec-file")
        .arg(&busybox)
        .args([
            "--keep-fd",
            &kept.as_raw_fd().to_string(),
            "--env",
            "ONLY=this",
        ])
        .args(["--", "sleep", "30"])
        .env("JAILER_TEST_SECRET", "must not pass")
        .spawn()
        .unwrap();
    let pid = jailed_pid(&jailer);
    wait_for_exec(pid, "busybox");
    assert_confined(pid);
    assert_eq!(fds_of(pid), BTreeSet::from([0, 1, 2, kept.as_raw_fd()]));
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        environ, b"ONLY=this\0",
        "the environment is cleared but for --env"
    );
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["64", "64"]
    );
    kill(pid, libc::SIGKILL);
    assert_eq!(wait_code(jailer), 128 + libc::SIGKILL);
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left behind: {:?}",
        cgroup_dirs(&id)
    );
}

#[test]
fn cgroup_gets_the_limits_and_goes_with_the_process() {
    if !is_root() {
        return;
    }
    let Some(busybox) = static_busybox() else {
        return;
    };
    let id = id("cgroup");
    let jailer = Command::new(JAILER)
        .args(["--id", &id, "--uid", "65534", "--gid", "65534"])
        .args([
            "--cgroup-memory",
            "67108864",
            "--cgroup-cpus",
            "0.5",
            "--pids-max",
            "16",
        ])
        .arg("--exec-file")
        .arg(&busybox)
        .args(["--", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = jailed_pid(&jailer);
    wait_for_exec(pid, "busybox");
    // The host's controllers, from its mounts: each one it has must carry its limit
    // exactly (this host: v1 memory, cpu and pids), one it has not must be named absent.
    let host = cgroup_limits::host();
    let expected = cgroup_limits::Limits::expected(&host, 67108864, 50000, 16);
    assert_eq!(
        cgroup_limits::Limits::of(pid as u32, &host),
        expected,
        "on {host:?}"
    );
    let dirs = cgroup_dirs(&id);
    let controllers = [&expected.memory, &expected.cpu, &expected.pids];
    let offered = controllers.iter().filter(|c| c.is_some()).count();
    match host {
        cgroup_limits::Host::V2(..) => assert_eq!(dirs.len(), 1, "{dirs:?}"),
        cgroup_limits::Host::V1(_) => assert_eq!(dirs.len(), offered, "{dirs:?}"),
    }
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for dir in &dirs {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string(), "{}", dir.display());
    }
    if offered > 0 {
        assert!(
            membership.contains(&format!("/bulkhead/{id}")),
            "{membership}"
        );
    }
    // SIGTERM to the jailer is forwarded; busybox as pid 1 has no handler and ignores it,
    // so the jailer kills it after its grace period.
    kill(jailer.id() as i32, libc::SIGTERM);
    assert_eq!(wait_code(jailer), 128 + libc::SIGKILL);
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left behind: {:?}",
        cgroup_dirs(&id)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} outlived the jailer"
    );
}

/// Runs `bulkhead-jailer --selftest-finish` jailed, finished by the program; returns the
/// jailer, the jailed pid and the two lines it printed once finished.
fn selftest(id: &str, landlock: &str, sleep: &str) -> (Child, i32, Vec<String>) {
    let mut jailer = Command::new(JAILER)
        .args([
            "--id",
            id,
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--finish-by-program",
        ])
        .args(["--landlock", landlock, "--exec-file", JAILER, "--"])
        .args(["--selftest-finish", "--sleep", sleep])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = jailed_pid(&jailer);
    let mut out = BufReader::new(jailer.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.push(line.trim().to_string());
    }
    (jailer, pid, lines)
}

#[test]
fn program_finishing_its_own_jail_is_confined_and_denied_every_path() {
    if !is_root() {
        return;
    }
    let id = id("program");
    let (jailer, pid, lines) = selftest(&id, "enforce", "30");
    // An absolute path is not there (empty root); a path under a directory fd opened
    // before the jail is refused by landlock.
    assert_eq!(lines, ["path: ENOENT", "under-fd: EACCES"]);
    assert_confined(pid);
    assert_eq!(
        fds_of(pid),
        BTreeSet::from([0, 1, 2, 3]),
        "stdio and the /etc fd it opened"
    );
    // The empty root (tmpfs with nr_inodes=16) is the jail's only mount, and the host's
    // namespace never sees it.
    let jailed = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(jailed.contains("nr_inodes=16"), "{jailed}");
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains("nr_inodes=16"),
        "the jail's root leaked: {host}"
    );
    kill(pid, libc::SIGKILL);
    assert_eq!(wait_code(jailer), 128 + libc::SIGKILL);
    assert!(cgroup_dirs(&id).is_empty());
}

#[test]
fn without_landlock_the_early_fd_still_opens() {
    if !is_root() {
        return;
    }
    let (jailer, _, lines) = selftest(&id("nolandlock"), "off", "2");
    assert_eq!(lines, ["path: ENOENT", "under-fd: opened"]);
    assert_eq!(wait_code(jailer), 0);
}

#[test]
fn exit_status_and_failures_reach_the_caller() {
    if !is_root() {
        return;
    }
    let Some(busybox) = static_busybox() else {
        return;
    };
    let run = |id: &str, uid: &str, exec: &Path, args: &[&str]| {
        Command::new(JAILER)
            .args(["--id", id, "--uid", uid, "--gid", "65534", "--exec-file"])
            .arg(exec)
            .arg("--")
            .args(args)
            .output()
            .unwrap()
    };
    let exited = run(&id("exit"), "65534", &busybox, &["sh", "-c", "exit 7"]);
    assert_eq!(exited.status.code(), Some(7));
    let hostname = run(&id("hostname"), "65534", &busybox, &["hostname"]);
    assert_eq!(String::from_utf8_lossy(&hostname.stdout), "bulkhead\n");
    let root = run(&id("root"), "0", &busybox, &["true"]);
    assert_eq!(root.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&root.stderr);
    assert!(stderr.contains("unprivileged"), "{stderr}");
    let missing = run(&id("missing"), "65534", Path::new("/nonexistent/prog"), &[]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/prog"), "{stderr}");
    // A dynamically linked program cannot run in the empty root: the exec step says so.
    let dynamic = run(&id("dynamic"), "65534", Path::new(JAILER), &["--help"]);
    assert_eq!(dynamic.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&dynamic.stderr);
    assert!(stderr.contains("executing the program"), "{stderr}");
}

#[test]
fn a_given_network_namespace_is_joined() {
    if !is_root() {
        return;
    }
    let Some(busybox) = static_busybox() else {
        return;
    };
    let name = id("netns");
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ip(&["netns", "add", &name]) {
        skip::skip_or_fail(skip::SkipKind::NotPermitted, "ip netns add failed");
        return;
    }
    let path = format!("/run/netns/{name}");
    let added = ip(&[
        "-n", &name, "link", "add", "jt0", "type", "veth", "peer", "name", "jt1",
    ]);
    let jailer = Command::new(JAILER)
        .args([
            "--id", &name, "--uid", "65534", "--gid", "65534", "--netns", &path,
        ])
        .arg("--exec-file")
        .arg(&busybox)
        .args(["--", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = jailed_pid(&jailer);
    wait_for_exec(pid, "busybox");
    let net = fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let theirs = fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let wanted = fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    kill(pid, libc::SIGKILL);
    let code = wait_code(jailer);
    let _ = ip(&["netns", "del", &name]);
    assert!(added, "ip link add jt0 in {name}");
    assert_eq!(theirs.unwrap(), wanted.unwrap());
    assert!(net.contains("jt0:"), "{net}");
    assert_eq!(code, 128 + libc::SIGKILL);
}

#[test]
fn library_spawn_places_fds_waits_and_kills_on_drop() {
    if !is_root() {
        return;
    }
    let Some(busybox) = static_busybox() else {
        return;
    };
    use bulkhead::jail::{Finish, Jail};
    use std::io::Read;
    let mut jail = Jail::new(&id("lib"), UID, GID);
    jail.finish = Finish::InChild;
    // The write end of a pipe becomes fd 5 in the child, whatever its number here.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let args = ["sh", "-c", "echo jailed >&5; exit 3"].map(Into::into);
    let mut child = jail
        .spawn(&busybox, &args, &[(writer.as_raw_fd(), 5)], &[])
        .unwrap();
    drop(writer);
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    assert_eq!(out, "jailed\n");
    assert_eq!(child.wait().unwrap().code(), Some(3));
    child.cleanup().unwrap();
    assert!(cgroup_dirs(&jail.id).is_empty());
    // A handle dropped while its process runs takes the process with it.
    let sleeping = jail
        .spawn(&busybox, &["sleep".into(), "30".into()], &[], &[])
        .unwrap();
    let pid = sleeping.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(sleeping);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} outlived its handle"
    );
    assert!(cgroup_dirs(&jail.id).is_empty());
}

/// The first thing the program does is read its own /proc/self/cgroup: it names the
/// jail's cgroup in every hierarchy the jail made, so the process entered it before it
/// executed (born there, or, with `CgroupEntry::Moved`, moved by the parent first).
#[test]
fn the_program_runs_in_its_cgroup_from_its_first_instruction() {
    if !is_root() {
        return;
    }
    use bulkhead::jail::{CgroupEntry, CgroupLimits, Jail};
    use std::io::Read;
    for entry in [CgroupEntry::Born, CgroupEntry::Moved] {
        let mut jail = Jail::new(&id(&format!("born-{entry:?}")), UID, GID);
        jail.cgroup = CgroupLimits {
            memory_max: Some(64 << 20),
            cpus: Some(0.5),
            pids_max: Some(16),
        };
        jail.cgroup_entry = entry;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut child = jail
            .spawn(
                Path::new("/bin/cat"),
                &["/proc/self/cgroup".into()],
                &[(writer.as_raw_fd(), 1)],
                &[],
            )
            .unwrap();
        drop(writer);
        let dirs = child.cgroup_paths().to_vec();
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0), "{out}");
        child.cleanup().unwrap();
        assert!(!dirs.is_empty(), "this host offers cgroup controllers");
        for dir in &dirs {
            // /sys/fs/cgroup/memory/bulkhead/ID -> a line "N:memory:/bulkhead/ID"; on v2
            // /sys/fs/cgroup/bulkhead/ID -> "0::/bulkhead/ID".
            let rel = dir.strip_prefix("/sys/fs/cgroup").unwrap();
            let (controller, path) = match rel.components().count() {
                2 => (String::new(), format!("/{}", rel.display())),
                _ => {
                    let mut parts = rel.iter();
                    let c = parts.next().unwrap().to_string_lossy().into_owned();
                    (c, format!("/{}", parts.as_path().display()))
                }
            };
            assert!(
                out.lines().any(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, list, p) = (f.next(), f.next().unwrap_or(""), f.next());
                    p == Some(path.as_str())
                        && (controller.is_empty() || list.split(',').any(|c| c == controller))
                }),
                "{entry:?}: no line for {} in\n{out}",
                dir.display()
            );
        }
        assert!(cgroup_dirs(&jail.id).is_empty());
    }
}
