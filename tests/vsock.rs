//! End to end: the virtio-vsock device is a separate, confined `bulkhead-vsock` process
//! with Firecracker's hybrid vsock on the host (`--vsock cid=N,uds=PATH`), on both
//! transports (`mmio::`, `pci::`), against the test guest's vsock scenarios and real host
//! programs: socat and plain Unix sockets.

mod common;

use common::transport::{assert_guest_used, bulkhead_run, Transport};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The payload byte `i` (the guest's `vsock-connect` pattern).
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3)) as u8
}

/// A fresh uds path for test `what`.
fn uds(t: Transport, what: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "bulkhead-vsock-{what}-{t}-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Starts `bulkhead run` with a vsock at `uds` and the guest command line `cmdline`.
fn start(t: Transport, uds: &Path, cmdline: &str, secs: u64) -> JoinHandle<common::Output> {
    let mut cmd = bulkhead_run(t);
    cmd.args(["--vsock", &format!("cid=3,uds={}", uds.display())])
        .args(["--cmdline", cmdline]);
    std::thread::spawn(move || common::run(cmd, Duration::from_secs(secs)))
}

/// A host program's stream to guest port `port`: connects to `uds` and sends CONNECT
/// until the guest (once listening) answers OK.
fn connect(uds: &Path, port: u32) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no OK from the guest's port {port}"
        );
        let Ok(mut s) = UnixStream::connect(uds) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(port) = line.strip_prefix("OK ") {
            assert!(port.parse::<u32>().is_ok(), "{line:?}");
            return s;
        }
        // The guest was not listening yet: the device reset the stream.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `data` on `s` in a thread while reading as many bytes back; returns them.
fn echo(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let n = data.len();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(n);
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let _ = r.read_to_end(&mut back);
    writer.join().unwrap();
    back
}

fn socat_connect_reaches_the_echoing_guest_and_10_mib_come_back(t: Transport) {
    require_kvm!();
    let uds = uds(t, "echo");
    let child = start(
        t,
        &uds,
        "bulkhead.test=vsock-echo bulkhead.vsock-streams=1 bulkhead.vsock-ms=240000",
        300,
    );
    let payload: Vec<u8> = (0..10 << 20).map(pattern).collect();
    let input = uds.with_extension("in");
    let mut file = b"CONNECT 5000\n".to_vec();
    file.extend_from_slice(&payload);
    std::fs::write(&input, &file).unwrap();
    // socat, the host program: its standard input after the CONNECT line is the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        while !uds.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new("socat")
            .args(["-t", "120", "-T", "120", "-"])
            .arg(format!("UNIX-CONNECT:{}", uds.display()))
            .stdin(std::fs::File::open(&input).unwrap())
            .stderr(Stdio::inherit())
            .output()
            .expect("running socat (installed by .ci/run)");
        if out.stdout.starts_with(b"OK ") || Instant::now() > deadline {
            break out.stdout;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = std::fs::remove_file(&input);
    let out = child.join().expect("bulkhead thread");
    out.assert_no_panic();
    let nl = got.iter().position(|&b| b == b'\n').unwrap_or(0);
    assert!(
        got.starts_with(b"OK 1"),
        "socat got {:?}\n{out:#?}",
        &got[..got.len().min(64)]
    );
    let back = &got[nl + 1..];
    assert_eq!(back.len(), payload.len(), "{out:#?}");
    assert!(back == &payload[..], "the echo differs");
    out.assert_line("bulkhead-guest: PASS vsock-echo");
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(t, &out.stdout);
    assert!(!uds.exists(), "the uds {} is left", uds.display());
}

/// socat listening at `<uds>_6000` (where a guest connecting to CID 2 port 6000 arrives),
/// echoing what it reads; killed and its socket removed on drop.
struct EchoListener {
    socat: std::process::Child,
    path: PathBuf,
}

impl EchoListener {
    /// Starts socat with `options` before its addresses and `listen_options` appended to
    /// the UNIX-LISTEN address, and waits (up to 10 s) for its socket to appear.
    fn start(uds: &Path, options: &[&str], listen_options: &str) -> EchoListener {
        let path = PathBuf::from(format!("{}_6000", uds.display()));
        let _ = std::fs::remove_file(&path);
        let socat = Command::new("socat")
            .args(options)
            .arg(format!("UNIX-LISTEN:{}{listen_options}", path.display()))
            .arg("EXEC:cat")
            .spawn()
            .expect("running socat (installed by .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        EchoListener { socat, path }
    }
}

impl Drop for EchoListener {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn guest_connects_to_a_socat_listener_at_uds_port(t: Transport) {
    require_kvm!();
    let uds = uds(t, "connect");
    // socat listens at <uds>_6000 and echoes what the guest sends.
    let listener = EchoListener::start(&uds, &["-t", "60"], "");
    let out = start(
        t,
        &uds,
        "bulkhead.test=vsock-connect bulkhead.vsock-bytes=1048576 bulkhead.vsock-ms=120000",
        180,
    )
    .join()
    .expect("bulkhead thread");
    drop(listener);
    out.assert_no_panic();
    out.assert_line("bulkhead-guest: PASS vsock-connect");
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(t, &out.stdout);
}

fn sixty_four_streams_and_a_killed_peer_resets_only_its_own(t: Transport) {
    require_kvm!();
    let uds = uds(t, "many");
    let child = start(
        t,
        &uds,
        "bulkhead.test=vsock-echo bulkhead.vsock-streams=64 bulkhead.vsock-ms=240000",
        300,
    );
    let first = connect(&uds, 5000);
    let mut streams = vec![first];
    for _ in 1..63 {
        streams.push(connect(&uds, 5000));
    }
    // The 64th stream's peer is a socat process, killed (SIGKILL) with bytes in flight
    // while all 64 are open.
    let mut peer = Command::new("socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", uds.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running socat");
    let mut to_peer = peer.stdin.take().unwrap();
    to_peer.write_all(b"CONNECT 5000\n").unwrap();
    let mut ok = [0u8; 3];
    peer.stdout.as_mut().unwrap().read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK ");
    to_peer.write_all(&[0x55; 100_000]).unwrap();
    peer.kill().unwrap();
    let _ = peer.wait();
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..32 * 1024).map(|j| pattern(i * 131 + j)).collect();
                (echo(s, data.clone()) == data, i)
            })
        })
        .collect();
    let results: Vec<(bool, usize)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let out = child.join().expect("bulkhead thread");
    out.assert_no_panic();
    let bad: Vec<usize> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
    assert!(
        bad.is_empty(),
        "streams {bad:?} did not echo intact\n{out:#?}"
    );
    out.assert_line("bulkhead-guest: PASS vsock-echo");
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains("vsock-echo streams="))
        .unwrap_or_default();
    assert!(summary.contains("streams=64 ended=64"), "{summary}");
    assert!(
        summary.contains("max_concurrent=64") || summary.contains("max_concurrent=63"),
        "{summary}"
    );
    assert_eq!(out.code(), 0, "{out:#?}");
}

fn hostile_packets_leave_the_device_serving(t: Transport) {
    require_kvm!();
    let uds = uds(t, "hostile");
    let listener = EchoListener::start(&uds, &[], ",fork");
    let out = start(
        t,
        &uds,
        "bulkhead.test=vsock-hostile bulkhead.vsock-ms=120000",
        180,
    )
    .join()
    .expect("bulkhead thread");
    drop(listener);
    out.assert_no_panic();
    out.assert_line("bulkhead-guest: PASS vsock-hostile");
    assert_eq!(out.code(), 0, "{out:#?}");
}

fn the_guest_reads_its_cid_from_the_config_space(t: Transport) {
    require_kvm!();
    let uds = uds(t, "probe");
    let mut cmd = bulkhead_run(t);
    cmd.args(["--vsock", &format!("cid=7777,uds={}", uds.display())])
        .args(["--cmdline", "bulkhead.test=vsock-probe"]);
    let out = common::run(cmd, Duration::from_secs(60));
    out.assert_no_panic();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("bulkhead-guest: vsock0 "))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("transport={t} guest_cid=7777 ")),
        "{line:?}\n{out:#?}"
    );
    assert!(
        line.contains("rx_queue=256 tx_queue=256 event_queue=256"),
        "{line}"
    );
    out.assert_line("bulkhead-guest: PASS vsock-probe");
    assert_eq!(out.code(), 0, "{out:#?}");
}

/// The queue thread runs its own role: made to call `ptrace` (`worker`) once confined,
/// or `accept4`, which only the process's broader role allows (`worker-narrowed`), it
/// kills the process, and the launcher names the thread and its role.
fn the_queue_thread_is_confined_to_vsock_worker(t: Transport) {
    require_kvm!();
    for (test, call) in [
        ("worker", "ptrace (101)"),
        ("worker-narrowed", "accept4 (288)"),
    ] {
        let uds = uds(t, test);
        let mut cmd = bulkhead_run(t);
        cmd.env("BULKHEAD_SECCOMP_SELFTEST", test)
            .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
            .args(["--cmdline", "bulkhead.test=vsock-probe"]);
        let out = common::run(cmd, Duration::from_secs(60));
        out.assert_no_panic();
        let want =
            format!("seccomp refused system call {call} in thread vsock-q (role vsock-worker)");
        assert!(out.stderr.contains(&want), "{want}\n{out:#?}");
        assert_ne!(out.code(), 0);
    }
}

on_both_transports!(
    the_queue_thread_is_confined_to_vsock_worker,
    the_guest_reads_its_cid_from_the_config_space,
    socat_connect_reaches_the_echoing_guest_and_10_mib_come_back,
    guest_connects_to_a_socat_listener_at_uds_port,
    sixty_four_streams_and_a_killed_peer_resets_only_its_own,
    hostile_packets_leave_the_device_serving,
);
