//! Net through a backend bulkhead did not start: Debian's DPDK `dpdk-testpmd` (package
//! `dpdk-dev`) with its vhost PMD serves `--net vhost-user=PATH` in forward mode `macswap`,
//! so every frame the guest sends comes back with its MAC addresses swapped. The guest's
//! `net-macswap` sends 64 sequenced, checksummed frames to a made-up MAC and checks each
//! returns once and intact; the test also reads testpmd's own count of frames it forwarded.
//! DPDK's vhost library serves no config space (no CONFIG protocol feature), so this also
//! checks the vmm's own net config (the MAC the guest reads is the one given).
//!
//! Both directions of connection: testpmd listens (`client=0`, bulkhead connects) on both
//! transports, and bulkhead listens (`listen=on`, testpmd `client=1` connects). testpmd
//! busy-polls a core, so each run is kept to a few seconds and it is stopped by pid.
//! Without testpmd, or when its EAL cannot start, the test says why (a failure under
//! `CI=true`: `.ci/run` installs `dpdk-dev`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::scratch::Dir;
use common::skip::SkipKind;
use common::transport::{bulkhead_run, Transport};

const DEADLINE: Duration = Duration::from_secs(60);
const GUEST_MAC: &str = "02:00:00:d9:d9:01";
/// Frames `net-macswap` sends (bulkhead_guest::macswap::FRAMES).
const FRAMES: u64 = 64;
const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// A running dpdk-testpmd in macswap mode, stopped (SIGINT, then SIGKILL) on drop.
struct Testpmd {
    child: Child,
    log: PathBuf,
    prefix: String,
}

impl Testpmd {
    /// Starts testpmd with its vhost PMD on `sock`; `client` as the PMD's `client=`;
    /// `queues` queue pairs.
    fn start(dir: &Path, sock: &Path, client: bool, queues: u16) -> Testpmd {
        let prefix = format!(
            "bulkhead-test-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        let log = dir.join("testpmd.log");
        let out = std::fs::File::create(&log).expect("creating testpmd's log");
        let err = out.try_clone().expect("duplicating testpmd's log");
        let child = Command::new(TESTPMD)
            .args(["--lcores", "0@0,1@0", "--no-huge", "-m", "256", "--no-pci"])
            .args(["--file-prefix", &prefix])
            .arg("--vdev")
            .arg(format!(
                "net_vhost0,iface={},client={},queues={queues}",
                sock.display(),
                u8::from(client)
            ))
            .args(["--", "--forward-mode=macswap", "--port-topology=loop"])
            .args(["--auto-start", "--nb-cores=1", "--total-num-mbufs=4096"])
            .arg(format!("--rxq={queues}"))
            .arg(format!("--txq={queues}"))
            // With stdin at /dev/null and no stats period, testpmd reads EOF and quits.
            .args(["--stats-period", "1"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting dpdk-testpmd");
        Testpmd { child, log, prefix }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Why testpmd ended, if it has.
    fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(format!(
            "dpdk-testpmd ended ({status}) before serving:\n{}",
            tail.join("\n")
        ))
    }

    /// The most frames testpmd says it transmitted (its per-second statistics).
    fn tx_packets(&self) -> u64 {
        self.log()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("TX-packets:"))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Waits (up to 4 s: one statistics period and some) until testpmd reports at least
    /// `n` frames sent back.
    fn wait_tx(&self, n: u64) -> u64 {
        let end = Instant::now() + Duration::from_secs(4);
        loop {
            let tx = self.tx_packets();
            if tx >= n || Instant::now() >= end {
                return tx;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused).
        unsafe { libc::kill(pid, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // EAL leaves its runtime directory behind.
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}

/// Whether testpmd is installed; says why not (a failure under CI) if it is not.
fn testpmd_installed() -> bool {
    if Path::new(TESTPMD).exists() {
        return true;
    }
    common::skip::skip_or_fail(
        SkipKind::MissingTool,
        &format!("{TESTPMD} is not installed (Debian package dpdk-dev)"),
    );
    false
}

/// Waits until `sock` exists (testpmd listening), or says why not.
fn wait_listening(pmd: &mut Testpmd, sock: &Path) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if sock.exists() {
            return true;
        }
        if let Some(why) = pmd.ended() {
            common::skip::skip_or_fail(SkipKind::NotPermitted, &why);
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "dpdk-testpmd made no socket at {} in 20 s:\n{}",
        sock.display(),
        pmd.log()
    );
}

/// What every run must show: the MAC the vmm serves, every frame back, testpmd's count.
fn assert_macswapped(out: &common::Output, pmd: &Testpmd) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}\ntestpmd:\n{}", pmd.log());
    out.assert_line("bulkhead-guest: PASS net-identify");
    out.assert_line("bulkhead-guest: PASS net-macswap");
    let macswap = out
        .stdout
        .lines()
        .find(|l| l.contains("net0 macswap "))
        .expect("net-macswap's line");
    assert!(
        macswap.contains(&format!("sent={FRAMES} returned={FRAMES} ")),
        "{macswap}"
    );
    let identify = out
        .stdout
        .lines()
        .find(|l| l.contains("net0 mac="))
        .expect("net-identify's line");
    assert!(
        identify.contains(&format!("mac={GUEST_MAC} status=1 ")),
        "the vmm serves the MAC given and link up: {identify}"
    );
    let tx = pmd.wait_tx(FRAMES);
    assert!(
        tx >= FRAMES,
        "testpmd says it sent back {tx} frames, the guest got {FRAMES}:\n{}",
        pmd.log()
    );
    eprintln!("{macswap}");
}

const CMDLINE: &str = "bulkhead.test=net-identify,net-macswap";

fn testpmd_listens(t: Transport) {
    require_kvm!();
    if !testpmd_installed() {
        return;
    }
    let dir = Dir::new("netext", &format!("c0-{}", t.as_str()));
    let sock = dir.0.join("vhost-net.sock");
    let mut pmd = Testpmd::start(&dir.0, &sock, false, 1);
    if !wait_listening(&mut pmd, &sock) {
        return;
    }
    let mut cmd = bulkhead_run(t);
    cmd.arg("--net")
        .arg(format!("vhost-user={},mac={GUEST_MAC}", sock.display()))
        .args(["--cmdline", CMDLINE]);
    let out = common::run(cmd, DEADLINE);
    assert_macswapped(&out, &pmd);
}

on_both_transports!(testpmd_listens);

#[test]
fn bulkhead_listens_and_testpmd_connects() {
    require_kvm!();
    if !testpmd_installed() {
        return;
    }
    let dir = Dir::new("netext", "c1");
    let sock = dir.0.join("vhost-net.sock");
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--net"])
        .arg(format!(
            "vhost-user={},mac={GUEST_MAC},listen=on,connect-timeout=30",
            sock.display()
        ))
        .args(["--cmdline", CMDLINE]);
    let vm = std::thread::spawn(move || common::run(cmd, DEADLINE));
    let end = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < end,
            "bulkhead never bound {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the socket bulkhead binds is its owner's only"
    );
    let mut pmd = Testpmd::start(&dir.0, &sock, true, 1);
    let out = vm.join().expect("the VM's thread");
    if out.code() != 0 {
        if let Some(why) = pmd.ended() {
            common::skip::skip_or_fail(SkipKind::NotPermitted, &why);
            return;
        }
    }
    assert!(
        out.stderr.contains(&format!(
            "net0: waiting for a vhost-user backend on {}",
            sock.display()
        )),
        "{}",
        out.stderr
    );
    assert_macswapped(&out, &pmd);
    assert!(
        !sock.exists(),
        "the socket is removed when the VM has ended"
    );
}

/// Two queue pairs: the vmm offers MQ with the control queue it serves (DPDK's vhost offers
/// MQ but no config space); the guest runs on pair 0.
#[test]
fn two_queue_pairs_through_testpmd() {
    require_kvm!();
    if !testpmd_installed() {
        return;
    }
    let dir = Dir::new("netext", "mq");
    let sock = dir.0.join("vhost-net.sock");
    let mut pmd = Testpmd::start(&dir.0, &sock, false, 2);
    if !wait_listening(&mut pmd, &sock) {
        return;
    }
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--net"])
        .arg(format!(
            "vhost-user={},mac={GUEST_MAC},queues=2",
            sock.display()
        ))
        .args(["--cmdline", CMDLINE]);
    let out = common::run(cmd, DEADLINE);
    assert_macswapped(&out, &pmd);
    let identify = out
        .stdout
        .lines()
        .find(|l| l.contains("net0 mac="))
        .expect("net-identify's line");
    let offered = identify
        .split_whitespace()
        .find_map(|w| w.strip_prefix("features=0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("features=");
    let (ctrl_vq, mq) = (1u64 << 17, 1u64 << 22);
    assert_eq!(offered & (ctrl_vq | mq), ctrl_vq | mq, "{identify}");
    assert!(identify.contains("queue_pairs=2"), "{identify}");
}

#[test]
fn listen_without_a_backend_times_out_and_starts_no_vm() {
    let dir = Dir::new("netext", "timeout");
    let sock = dir.0.join("nobody.sock");
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--net"])
        .arg(format!(
            "vhost-user={},listen=on,connect-timeout=1",
            sock.display()
        ))
        .args(["--cmdline", CMDLINE]);
    let started = Instant::now();
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_ne!(out.code(), 0, "{out:#?}");
    assert!(
        out.stderr.contains(&format!(
            "net0: no vhost-user backend connected to {} within 1 s",
            sock.display()
        )),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        !out.stdout.contains("bulkhead-guest:"),
        "no guest ran: {}",
        out.stdout
    );
    assert!(!sock.exists(), "the socket is removed");
}
