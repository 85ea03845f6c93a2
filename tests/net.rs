//! End to end: the guest's network device is a separate `bulkhead-net` process on a TAP in
//! a network namespace bulkhead creates (`--net auto`); the host's own ping and sockets
//! reach the guest through it, on both transports (`mmio::`, `pci::`). The guest serves
//! until the test, done, sends it a datagram to its stop port (`net-serve`), so no test
//! depends on a time window; every wait is bounded.

mod common;

use common::transport::{assert_guest_used, bulkhead_run, Transport};
use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const GUEST_MAC: &str = "02:00:00:aa:bb:01";

/// A running bulkhead whose guest serves the network, and the namespace it lives in.
struct Vm {
    child: Child,
    ns: String,
    console: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Vm {
    fn start(t: Transport, cmdline: &str) -> Vm {
        Vm::start_with(t, "", cmdline)
    }

    /// As [`Vm::start`], with `extra` (`,key=value...`) appended to the `--net` value.
    fn start_with(t: Transport, extra: &str, cmdline: &str) -> Vm {
        let mut child = bulkhead_run(t)
            .args([
                "--net",
                &format!("auto,mac={GUEST_MAC},host-ip=10.0.2.1/24,guest-ip=10.0.2.2/24{extra}"),
            ])
            .args(["--cmdline", cmdline])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bulkhead");
        let ns = format!("bulkhead-{}-net0", child.id());
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, console) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Vm {
            child,
            ns,
            console,
            stderr,
        }
    }

    /// Waits (at most 60 s) for a console line starting with `prefix`; panics with the
    /// console so far.
    fn wait_for(&self, prefix: &str, seen: &mut Vec<String>) -> String {
        wait_line(&self.console, prefix, Duration::from_secs(60), seen)
    }

    /// Tells the guest it may stop serving (see [`stop_serving`]).
    fn stop_serving(&self, seen: &mut Vec<String>) {
        stop_serving(&self.ns, "10.0.2.2", &self.console, seen);
    }

    fn finish(mut self) -> (Option<i32>, String) {
        let status = common::wait_until(&mut self.child, Instant::now() + Duration::from_secs(60));
        let stderr = self.stderr.join().unwrap_or_default();
        (status.and_then(|s| s.code()), stderr)
    }
}

/// How long a guest serves at most: the tests stop it when they are done (a bound for a
/// test that fails before, not a window to hit).
const SERVE_BOUND: &str = "bulkhead.net.serve-ms=120000";

/// Waits (at most `bound`) for a line of `console` starting with `prefix`; panics with the
/// console so far.
fn wait_line(
    console: &std::sync::mpsc::Receiver<String>,
    prefix: &str,
    bound: Duration,
    seen: &mut Vec<String>,
) -> String {
    let end = Instant::now() + bound;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match console.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with(prefix) {
                    return line;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("no line starting {prefix:?}; console:\n{}", seen.join("\n"));
}

/// Tells the guest's `net-serve` at `guest_ip`, reached from namespace `ns`, that the test
/// is done: a datagram to its stop port (9), again every 200 ms (a datagram may be lost)
/// until it says it served (ended by the stop), for at most 30 s.
fn stop_serving(
    ns: &str,
    guest_ip: &str,
    console: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
) {
    let to = format!("{guest_ip}:9");
    let sock = common::netns::in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(to)?;
        Ok::<_, std::io::Error>(sock)
    })
    .expect("entering the namespace")
    .expect("a socket to stop the guest with");
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let _ = sock.send(b"stop");
        if let Ok(line) = console.recv_timeout(Duration::from_millis(200)) {
            seen.push(line.clone());
            if line.starts_with("bulkhead-guest: net0 served ") {
                assert!(line.ends_with(" ended=stop"), "{line}");
                return;
            }
        }
    }
    panic!(
        "the guest did not stop serving; console:\n{}",
        seen.join("\n")
    );
}

fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn host_pings_the_guest_and_arp_resolves_its_mac(t: Transport) {
    require_kvm!();
    require_netns!();
    let vm = Vm::start(
        t,
        &format!("bulkhead.test=net-serve bulkhead.net.ip=10.0.2.2/24 {SERVE_BOUND}"),
    );
    let mut seen = Vec::new();
    vm.wait_for("bulkhead-guest: net0 serving", &mut seen);
    // -w: a deadline; ping ends as soon as every reply is in. (With -W alone it waits for the
    // last reply only twice the slowest round trip so far: too short on a loaded machine.)
    let ping = common::netns::exec(
        &vm.ns,
        &["ping", "-c", "3", "-i", "0.2", "-w", "20", "10.0.2.2"],
    );
    let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
    let neigh = common::netns::exec(&vm.ns, &["ip", "neigh", "show", "10.0.2.2"]);
    let neigh_out = String::from_utf8_lossy(&neigh.stdout).into_owned();
    let ns = vm.ns.clone();
    vm.stop_serving(&mut seen);
    let (code, stderr) = vm.finish();
    assert_guest_used(t, &seen.join("\n"));
    assert!(ping.status.success(), "ping failed:\n{ping_out}\n{stderr}");
    assert!(ping_out.contains("3 received"), "{ping_out}");
    assert!(
        neigh_out.contains(GUEST_MAC),
        "ARP did not resolve the guest's MAC: {neigh_out:?}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!namespace_exists(&ns), "namespace {ns} left behind");
}

fn udp_both_ways_with_payloads_intact(t: Transport) {
    require_kvm!();
    require_netns!();
    // Guest to host: the guest first serves until the host's socket is bound and the test
    // tells it to go on, so it sends to a bound socket; then it serves again for the echo.
    let vm = Vm::start(
        t,
        &format!(
        "bulkhead.test=net-serve,net-send,net-serve bulkhead.net.ip=10.0.2.2/24 bulkhead.net.peer=10.0.2.1 \
         bulkhead.net.port=5555 bulkhead.net.sizes=64,512,1472 {SERVE_BOUND} bulkhead.net.echo-port=7",
    ),
    );
    let ns = vm.ns.clone();
    let mut seen = Vec::new();
    vm.wait_for("bulkhead-guest: net0 serving", &mut seen);
    let sock = common::netns::in_netns(&ns, || UdpSocket::bind("10.0.2.1:5555"))
        .expect("entering the namespace")
        .expect("binding the host's socket");
    vm.stop_serving(&mut seen);
    let received = common::netns::in_netns(&ns, move || {
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 3 {
            let (n, _) = sock.recv_from(&mut buf)?;
            got.push(buf[..n].to_vec());
        }
        Ok::<_, std::io::Error>(got)
    })
    .expect("entering the namespace")
    .expect("receiving the guest's datagrams");
    for (payload, size) in received.iter().zip([64usize, 512, 1472]) {
        assert_eq!(payload.len(), size);
        assert!(
            payload
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i * 7 + size) as u8),
            "payload of {size} corrupted"
        );
    }
    // Host to guest and back: the guest echoes (in its second serving period).
    vm.wait_for("bulkhead-guest: net0 sent", &mut seen);
    vm.wait_for("bulkhead-guest: net0 serving", &mut seen);
    let echoed = common::netns::in_netns(&ns, || {
        let sock = UdpSocket::bind("10.0.2.1:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut ok = Vec::new();
        for size in [1usize, 100, 1000, 1472] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 13 + 5) as u8).collect();
            sock.send_to(&payload, "10.0.2.2:7")?;
            let mut buf = [0u8; 2048];
            let (n, _) = sock.recv_from(&mut buf)?;
            ok.push(buf[..n] == payload[..]);
        }
        Ok::<_, std::io::Error>(ok)
    })
    .expect("entering the namespace")
    .expect("echo over UDP");
    vm.stop_serving(&mut seen);
    let (code, stderr) = vm.finish();
    assert_guest_used(t, &seen.join("\n"));
    assert_eq!(echoed, vec![true; 4], "echoed payloads differ");
    assert_eq!(code, Some(0), "{stderr}");
}

/// `--net tap=NAME`: bulkhead creates (or attaches to) a TAP in its own namespace. The test
/// runs bulkhead inside a namespace it made, addresses the TAP there and pings the guest.
fn named_tap_in_the_callers_namespace(t: Transport) {
    require_kvm!();
    require_netns!();
    let ns = format!("bulkhead-test-{}", std::process::id());
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_bulkhead"), "run"])
        .args(common::transport::flags(t))
        .args(["--net", &format!("tap=bh-tap0,mac={GUEST_MAC}")])
        .args([
            "--cmdline",
            &format!("bulkhead.test=net-serve bulkhead.net.ip=10.0.7.2/24 {SERVE_BOUND}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead in the namespace");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    wait_line(
        &rx,
        "bulkhead-guest: net0 serving",
        Duration::from_secs(60),
        &mut seen,
    );
    // bulkhead made the TAP (it did not exist): it is there while the VM runs.
    let tap_exists = || {
        std::process::Command::new("ip")
            .args(["-n", &ns, "link", "show", "dev", "bh-tap0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(tap_exists(), "no TAP bh-tap0 in {ns}");
    for args in [
        ["addr", "add", "10.0.7.1/24", "dev", "bh-tap0"].as_slice(),
        ["link", "set", "bh-tap0", "up"].as_slice(),
    ] {
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    }
    // -w: a deadline; ping ends as soon as every reply is in. (With -W alone it waits for the
    // last reply only twice the slowest round trip so far: too short on a loaded machine.)
    let ping = common::netns::exec(
        &ns,
        &["ping", "-c", "2", "-i", "0.2", "-w", "20", "10.0.7.2"],
    );
    stop_serving(&ns, "10.0.7.2", &rx, &mut seen);
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(30));
    assert_guest_used(t, &seen.join("\n"));
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    // The TAP bulkhead made went with the VM.
    assert!(!tap_exists(), "TAP bh-tap0 left behind in {ns}");
}

/// The first descendant of process `root` whose name is `comm`.
fn descendant_named(root: u32, comm: &str) -> Option<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid, stat[open + 1..close].to_owned()));
        }
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parents.iter().find(|(p, _, _)| *p == pid) {
                Some((_, ppid, _)) => pid = *ppid,
                None => return false,
            }
        }
        false
    };
    parents
        .iter()
        .find(|(pid, _, name)| name == comm && descends(*pid))
        .map(|(pid, _, _)| *pid)
}

/// How many of process `pid`'s descriptors are TAP queues (`/dev/net/tun`).
fn tap_queues_held(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t == std::path::Path::new("/dev/net/tun"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `--net auto,queues=2`: the vmm offers MQ and a control queue and `queue_pairs` 2; the
/// test guest accepts neither and runs on pair 0, where ping and UDP both ways work, while
/// `bulkhead-net` holds both TAP queues with the second detached (the TAP, as the kernel
/// shows it in sysfs, has one queue).
fn two_queue_pairs_guest_on_pair_zero(t: Transport) {
    require_kvm!();
    require_netns!();
    let vm = Vm::start_with(
        t,
        ",queues=2",
        "bulkhead.test=net-identify,net-serve,net-send,net-serve bulkhead.net.ip=10.0.2.2/24 \
         bulkhead.net.peer=10.0.2.1 bulkhead.net.port=5556 bulkhead.net.sizes=64,1472 \
         bulkhead.net.serve-ms=120000 bulkhead.net.echo-port=7",
    );
    let ns = vm.ns.clone();
    let mut seen = Vec::new();
    let identify = vm.wait_for("bulkhead-guest: net0 mac=", &mut seen);
    let field = |name: &str| {
        identify
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {identify:?}"))
    };
    let (offered, accepted) = (field("features="), field("accepted="));
    let (ctrl_vq, mq) = (1u64 << 17, 1u64 << 22);
    assert_eq!(offered & (ctrl_vq | mq), ctrl_vq | mq, "{identify}");
    assert_eq!(accepted & mq, 0, "{identify}");
    assert!(identify.contains(" queue_pairs=2 "), "{identify}");

    vm.wait_for("bulkhead-guest: net0 serving", &mut seen);
    let backend = descendant_named(vm.child.id(), "bulkhead-net").expect("no bulkhead-net process");
    assert_eq!(
        tap_queues_held(backend),
        2,
        "TAP queues held by bulkhead-net {backend}"
    );
    let queues = common::netns::exec(&ns, &["ls", "/sys/class/net/tap0/queues"]);
    let mut queues: Vec<String> = String::from_utf8_lossy(&queues.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    queues.sort();
    assert_eq!(queues, ["rx-0", "tx-0"], "the TAP's attached queues");

    // Guest to host on pair 0, once the host's socket is bound.
    let sock = common::netns::in_netns(&ns, || UdpSocket::bind("10.0.2.1:5556"))
        .expect("entering the namespace")
        .expect("binding the host's socket");
    vm.stop_serving(&mut seen);
    let received = common::netns::in_netns(&ns, move || {
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 2 {
            let (n, _) = sock.recv_from(&mut buf)?;
            got.push(buf[..n].to_vec());
        }
        Ok::<_, std::io::Error>(got)
    })
    .expect("entering the namespace")
    .expect("receiving the guest's datagrams");
    for (payload, size) in received.iter().zip([64usize, 1472]) {
        assert_eq!(payload.len(), size);
        assert!(
            payload
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i * 7 + size) as u8),
            "payload of {size} corrupted"
        );
    }
    // Host to guest and back, then ping.
    vm.wait_for("bulkhead-guest: net0 sent", &mut seen);
    vm.wait_for("bulkhead-guest: net0 serving", &mut seen);
    let echoed = common::netns::in_netns(&ns, || {
        let sock = UdpSocket::bind("10.0.2.1:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut ok = Vec::new();
        for size in [1usize, 1472] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 13 + 5) as u8).collect();
            sock.send_to(&payload, "10.0.2.2:7")?;
            let mut buf = [0u8; 2048];
            let (n, _) = sock.recv_from(&mut buf)?;
            ok.push(buf[..n] == payload[..]);
        }
        Ok::<_, std::io::Error>(ok)
    })
    .expect("entering the namespace")
    .expect("echo over UDP");
    // -w: a deadline; ping ends as soon as every reply is in. (With -W alone it waits for the
    // last reply only twice the slowest round trip so far: too short on a loaded machine.)
    let ping = common::netns::exec(
        &ns,
        &["ping", "-c", "2", "-i", "0.2", "-w", "20", "10.0.2.2"],
    );
    let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
    vm.stop_serving(&mut seen);
    let (code, stderr) = vm.finish();
    assert_guest_used(t, &seen.join("\n"));
    assert_eq!(echoed, vec![true; 2], "echoed payloads differ");
    assert!(ping_out.contains("2 received"), "{ping_out}\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!namespace_exists(&ns), "namespace {ns} left behind");
}

on_both_transports!(
    host_pings_the_guest_and_arp_resolves_its_mac,
    udp_both_ways_with_payloads_intact,
    named_tap_in_the_callers_namespace,
    two_queue_pairs_guest_on_pair_zero,
);
