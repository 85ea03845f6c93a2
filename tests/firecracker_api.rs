//! `bulkhead-firecracker` driven as orchestrators drive Firecracker: its API over the Unix
//! socket with curl (the Go SDK's request sequence), its `--no-api --config-file` JSON, and
//! malformed HTTP. The VM is the test guest (its ELF written to a file: Firecracker needs a
//! `kernel_image_path`) with a root drive and a TAP; every process it starts must be
//! confined as `bulkhead run`'s are.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fc_vm::HostTap;
use common::running::children;
use common::spawned::Spawned;

const BOOT: Duration = Duration::from_secs(60);

/// A scratch directory with the guest's ELF, a root image and a TAP, removed on drop.
struct Setup {
    dir: PathBuf,
    tap: HostTap,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("bulkhead-fc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::fc_vm::write_guest_files(&dir);
        // A TAP made as an orchestrator makes it before starting Firecracker.
        let tap = HostTap::add(format!(
            "fct{}{}",
            &tag[..tag.len().min(3)],
            std::process::id() % 100_000
        ));
        Setup { dir, tap }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn sock(&self) -> String {
        self.path("api.sock")
    }

    /// The boot args: identify the disk (its serial is the drive id) and the NIC, echo one
    /// vsock stream (see [`vsock_echo`]), then idle until Ctrl+Alt+Del (or `idle_ms`;
    /// 0: forever), which resets the VM.
    fn boot_args(idle_ms: u32) -> String {
        format!(
            "console=ttyS0 reboot=k panic=1 pci=off \
             bulkhead.test=blk-identify,net-identify,vsock-echo,idle \
             bulkhead.blk.serial=rootfs bulkhead.vsock-streams=1 bulkhead.vsock-ms=60000{}",
            match idle_ms {
                0 => String::new(),
                ms => format!(" bulkhead.idle-ms={ms}"),
            }
        )
    }

    fn config(&self, idle_ms: u32) -> serde_json::Value {
        serde_json::json!({
            "boot-source": {"kernel_image_path": self.path("guest.elf"), "boot_args": Self::boot_args(idle_ms)},
            "drives": [{"drive_id": "rootfs", "path_on_host": self.path("root.img"),
                        "is_root_device": true, "is_read_only": false}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": self.tap.0,
                                    "guest_mac": "06:00:AC:10:00:02"}],
            "vsock": {"guest_cid": 3, "uds_path": self.path("v.sock")},
            "logger": {"log_path": self.path("log"), "level": "Info", "show_level": true},
            "metrics": {"metrics_path": self.path("metrics")},
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn firecracker(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-firecracker"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .env("RUST_LOG", "warn");
    cmd
}

/// `curl --unix-socket`: (status, body).
fn curl(sock: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "--unix-socket",
        sock,
        "-X",
        method,
    ])
    .args(["-w", "\n%{http_code}"])
    .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn ok(sock: &str, method: &str, path: &str, body: &str) {
    let (code, answer) = curl(sock, method, path, Some(body));
    assert_eq!(code, 204, "{method} {path} {body}: {answer}");
}

fn fault(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["fault_message"].as_str().unwrap_or_default().to_owned()
}

/// A host program's stream to the guest's echo port through the hybrid vsock socket
/// (`CONNECT 5000\n`, `OK <port>\n`), 64 KiB there and back intact.
fn vsock_echo(fc: &mut Spawned, uds: &str) {
    use std::io::BufRead;
    fc.wait_for(BOOT, |l| {
        l.starts_with("bulkhead-guest: vsock-echo listening port=5000 cid=3")
    });
    let mut stream = UnixStream::connect(uds).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"CONNECT 5000\n").unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    let writer = {
        let (mut s, p) = (stream.try_clone().unwrap(), payload.clone());
        std::thread::spawn(move || s.write_all(&p).unwrap())
    };
    let mut back = vec![0u8; payload.len()];
    reader.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == payload, "the echo differs");
    drop(reader);
    drop(stream);
    fc.wait_for_line("bulkhead-guest: PASS vsock-echo", BOOT);
}

fn wait_for_socket(path: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !Path::new(path).exists() {
        assert!(Instant::now() < end, "no API socket at {path}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VM's processes (the launcher's children) are all confined; returns them.
fn assert_confined(fc: &Spawned) -> Vec<(u32, String)> {
    let launchers = children(fc.pid());
    assert_eq!(
        launchers.len(),
        1,
        "bulkhead-firecracker's children: {launchers:?}"
    );
    assert_eq!(launchers[0].1, "bulkhead");
    let kids = children(launchers[0].0);
    let names: Vec<&str> = kids.iter().map(|k| k.1.as_str()).collect();
    for want in [
        "bulkhead-vmm",
        "bulkhead-blk",
        "bulkhead-net",
        "bulkhead-vsock",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let wrong: Vec<String> = kids
        .iter()
        .flat_map(|(pid, name)| common::confined::wrong(*pid, name))
        // `bulkhead run --net tap=NAME`'s rule (devices.rs: NetNs::Host): bulkhead-net
        // stays in the namespace of the TAP an orchestrator made; every other layer holds.
        .filter(|w| {
            !(w.starts_with("bulkhead-net ") && w.ends_with("shares the host's net namespace"))
        })
        .collect();
    assert!(wrong.is_empty(), "not confined:\n{}", wrong.join("\n"));
    kids
}

/// The Go SDK's order: logger, metrics, machine-config, boot-source, drives,
/// network-interfaces, vsock, InstanceStart.
fn configure_as_the_go_sdk(s: &Setup, idle_ms: u32) {
    let sock = s.sock();
    std::fs::write(s.path("log"), "").unwrap();
    std::fs::write(s.path("metrics"), "").unwrap();
    let c = s.config(idle_ms);
    ok(&sock, "PUT", "/logger", &c["logger"].to_string());
    ok(&sock, "PUT", "/metrics", &c["metrics"].to_string());
    ok(
        &sock,
        "PUT",
        "/machine-config",
        &c["machine-config"].to_string(),
    );
    ok(&sock, "PUT", "/boot-source", &c["boot-source"].to_string());
    ok(&sock, "PUT", "/drives/rootfs", &c["drives"][0].to_string());
    ok(
        &sock,
        "PUT",
        "/network-interfaces/eth0",
        &c["network-interfaces"][0].to_string(),
    );
    ok(&sock, "PUT", "/vsock", &c["vsock"].to_string());
}

#[test]
fn the_go_sdk_sequence_boots_the_test_guest_confined() {
    require_kvm!();
    require_netns!();
    let s = Setup::new("sdk");
    let sock = s.sock();
    let mut fc = Spawned::start(&mut firecracker(&["--api-sock", &sock, "--id", "sdk-test"]));
    wait_for_socket(&sock);
    let (code, info) = curl(&sock, "GET", "/", None);
    assert_eq!(code, 200, "{info}");
    assert!(
        info.contains("\"state\":\"Not started\"") && info.contains("\"id\":\"sdk-test\""),
        "{info}"
    );
    configure_as_the_go_sdk(&s, 0);
    // Pre-boot, the post-boot actions are refused.
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    );
    assert_eq!(
        (code, fault(&body).as_str()),
        (
            400,
            "The requested operation is not supported before starting the microVM."
        )
    );
    let started = Instant::now();
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    let first = fc.wait_for(BOOT, |l| l.starts_with("bulkhead-guest:"));
    eprintln!(
        "InstanceStart to the guest's first serial line: {:?} ({first})",
        started.elapsed()
    );
    fc.wait_for_line("bulkhead-guest: PASS blk-identify", BOOT);
    fc.wait_for_line("bulkhead-guest: PASS net-identify", BOOT);
    let kids = assert_confined(&fc);
    vsock_echo(&mut fc, &s.path("v.sock"));
    fc.wait_for_line(
        "bulkhead-guest: idle: waiting for ctrl-alt-del ms=forever",
        BOOT,
    );
    // Post-boot: state, pause and resume, the pre-boot requests refused.
    let (_, info) = curl(&sock, "GET", "/", None);
    assert!(info.contains("\"state\":\"Running\""), "{info}");
    ok(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (_, info) = curl(&sock, "GET", "/", None);
    assert!(info.contains("\"state\":\"Paused\""), "{info}");
    ok(&sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let (code, body) = curl(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/x"}"#),
    );
    assert_eq!(
        (code, fault(&body).as_str()),
        (
            400,
            "The requested operation is not supported after starting the microVM."
        )
    );
    let (code, body) = curl(
        &sock,
        "PATCH",
        "/drives/rootfs",
        Some(r#"{"drive_id":"rootfs","path_on_host":"/x"}"#),
    );
    // A path that is not there: refused, naming it; the VM runs on (tests/drive_swap.rs
    // swaps a real image).
    assert!(
        code == 400
            && fault(&body).contains("Unable to patch the block device")
            && fault(&body).contains("/x"),
        "{body}"
    );
    let (code, config) = curl(&sock, "GET", "/vm/config", None);
    assert!(
        code == 200 && config.contains(&s.tap.0) && config.contains("\"drive_id\":\"rootfs\""),
        "{config}"
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"FlushMetrics"}"#,
    );
    let metrics = std::fs::read_to_string(s.path("metrics")).unwrap();
    assert!(metrics.contains("\"requests_ok\""), "{metrics}");
    let log = std::fs::read_to_string(s.path("log")).unwrap();
    assert!(
        log.contains("[sdk-test:fc_api:INFO] PUT /actions: 204"),
        "{log}"
    );
    // Ctrl+Alt+Del on the i8042: the guest resets through port 0x64, the VM stops, and
    // bulkhead-firecracker exits 0 as Firecracker does, its processes gone with it.
    let launcher = children(fc.pid());
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"SendCtrlAltDel"}"#,
    );
    // The guest read the four scancodes and took IRQ 1 (routed through its IOAPIC).
    let keys = fc.wait_for(BOOT, |l| l.starts_with("bulkhead-guest: idle: keyboard "));
    let irqs: u32 = keys
        .split_whitespace()
        .find_map(|w| w.strip_prefix("irqs="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        keys.contains("bytes=4") && keys.contains("routed=true") && irqs >= 1,
        "{keys}"
    );
    fc.wait_for_line(
        "bulkhead-guest: idle: ctrl-alt-del, resetting through the i8042",
        BOOT,
    );
    let (code, stderr) = fc.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    common::running::assert_gone(&launcher, "bulkhead-firecracker");
    common::running::assert_gone(&kids, "bulkhead-firecracker");
    assert!(!Path::new(&sock).exists(), "the API socket is left");
}

#[test]
fn the_same_vm_from_a_config_file_without_the_api() {
    require_kvm!();
    require_netns!();
    let s = Setup::new("cfg");
    std::fs::write(s.path("log"), "").unwrap();
    std::fs::write(s.path("metrics"), "").unwrap();
    let file = s.path("vm.json");
    std::fs::write(&file, s.config(2_000).to_string()).unwrap();
    // Firecracker's --enable-pci: the same VM on virtio-pci (the guest finds its devices
    // through the ECAM, interrupts by MSI-X, and no virtio-mmio device).
    for pci in [false, true] {
        let mut args = vec!["--no-api", "--config-file", &file];
        if pci {
            args.push("--enable-pci");
        }
        let mut fc = Spawned::start(&mut firecracker(&args));
        fc.wait_for_line("bulkhead-guest: PASS blk-identify", BOOT);
        fc.wait_for_line("bulkhead-guest: PASS net-identify", BOOT);
        let on_pci = fc.seen().iter().any(|l| l.contains("irq=msix"));
        let on_mmio = fc
            .seen()
            .iter()
            .any(|l| l.contains("acpi virtio-mmio devices=3"));
        assert_eq!((on_pci, on_mmio), (pci, !pci), "pci {pci}: {:?}", fc.seen());
        assert_confined(&fc);
        vsock_echo(&mut fc, &s.path("v.sock"));
        fc.wait_for_line("bulkhead-guest: done status=0", BOOT);
        let (code, stderr) = fc.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "pci {pci}: {stderr}");
    }
    assert!(!Path::new(&s.sock()).exists());
    // A config file Firecracker would refuse is refused before anything starts.
    std::fs::write(
        &file,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "colour": 1}"#,
    )
    .unwrap();
    let out = firecracker(&["--no-api", "--config-file", &file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(152), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `colour`"),
        "{out:?}"
    );
}

#[test]
fn firecrackers_command_line_is_checked_as_firecracker_checks_it() {
    for (args, why) in [
        (
            &["--bogus"][..],
            "Found argument 'bogus' which wasn't expected",
        ),
        (&["--no-api"], "Argument 'config-file' required by 'no-api'"),
        (&["--api-sock"], "requires a value"),
        (&["--id", "x", "--id", "y"], "more than once"),
    ] {
        let out = firecracker(args).output().unwrap();
        assert_eq!(out.status.code(), Some(153), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    let out = firecracker(&["--version"]).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("Firecracker v")
    );
}

/// Sends raw bytes on a new connection; what came back before the server closed it or
/// `wait` passed.
fn raw(sock: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_http_gets_faults_and_the_vm_runs_on() {
    require_kvm!();
    require_netns!();
    let s = Setup::new("bad");
    let sock = s.sock();
    let mut fc = Spawned::start(&mut firecracker(&["--api-sock", &sock]));
    wait_for_socket(&sock);
    configure_as_the_go_sdk(&s, 0);
    ok(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    vsock_echo(&mut fc, &s.path("v.sock"));
    fc.wait_for_line(
        "bulkhead-guest: idle: waiting for ctrl-alt-del ms=forever",
        BOOT,
    );
    // A client that stalls mid-request holds only its own connection.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled
        .write_all(b"PUT /actions HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"act")
        .unwrap();
    let t = Instant::now();
    let (code, info) = curl(&sock, "GET", "/", None);
    assert!(
        code == 200 && t.elapsed() < Duration::from_secs(2),
        "{code} {info} {:?}",
        t.elapsed()
    );
    // A body over 1 KiB: curl asks for `100 Continue` first and gets it at once (without
    // it curl waits a second); the request is then answered on its merits.
    let long = serde_json::json!({"kernel_image_path": "/k", "boot_args": "x".repeat(4096)});
    let t = Instant::now();
    let (code, answer) = curl(&sock, "PUT", "/boot-source", Some(&long.to_string()));
    assert_eq!(
        (code, fault(&answer).as_str()),
        (
            400,
            "The requested operation is not supported after starting the microVM."
        )
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // Oversized headers and bodies.
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let answer = raw(&sock, big.as_bytes(), Duration::from_secs(5));
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("larger than the limit"),
        "{answer}"
    );
    let body = format!("{{\"action_type\":\"{}\"}}", "x".repeat(60_000));
    let (code, answer) = curl(&sock, "PUT", "/actions", Some(&body));
    assert_eq!(code, 400, "{answer}");
    assert!(
        fault(&answer).contains("is larger than the limit of 51200 allowed by server"),
        "{answer}"
    );
    // Bad JSON, unknown fields, wrong methods and paths, garbage.
    let (code, answer) = curl(&sock, "PUT", "/actions", Some("{\"action_type\":"));
    assert!(
        code == 400
            && fault(&answer)
                .starts_with("An error occurred when deserializing the json body of a request"),
        "{answer}"
    );
    let (code, answer) = curl(
        &sock,
        "PATCH",
        "/vm",
        Some(r#"{"state":"Paused","extra":1}"#),
    );
    assert!(
        code == 400 && fault(&answer).contains("unknown field `extra`"),
        "{answer}"
    );
    let (code, answer) = curl(&sock, "DELETE", "/machine-config", None);
    assert_eq!(
        (code, fault(&answer).as_str()),
        (
            400,
            "Invalid request method and/or path: DELETE /machine-config."
        )
    );
    let (code, answer) = curl(&sock, "POST", "/actions", Some("{}"));
    assert!(
        code == 400 && fault(&answer).starts_with("Invalid request method and/or path"),
        "{answer}"
    );
    let (code, answer) = curl(&sock, "PUT", "/mmds", Some("{}"));
    assert!(
        code == 400 && fault(&answer).contains("not supported: mmds"),
        "{answer}"
    );
    let answer = raw(&sock, b"\x01\x02 nonsense\r\n\r\n", Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Keep-alive: two requests on one connection, two answers.
    let answer = raw(
        &sock,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /machine-config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    // The stalled client is timed out with a 408, and the VM went on throughout.
    let mut rest = String::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stalled.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest:?}");
    let (_, info) = curl(&sock, "GET", "/", None);
    assert!(info.contains("\"state\":\"Running\""), "{info}");
    assert_confined(&fc);
    assert!(
        !fc.seen().iter().any(|l| l.contains("done status")),
        "the VM stopped: {:?}",
        fc.seen()
    );
}

/// The bench: time from the `InstanceStart` request to the guest's first serial line, over
/// several VMs (each stopped by Ctrl+Alt+Del). Printed with
/// `cargo test --test firecracker_api instance_start -- --nocapture`.
#[test]
fn instance_start_to_the_first_guest_line() {
    require_kvm!();
    require_netns!();
    const RUNS: usize = 5;
    let dir = std::env::temp_dir().join(format!("bulkhead-fc-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let guest = dir.join("guest.elf");
    std::fs::write(&guest, bulkhead_vmm::TEST_GUEST).unwrap();
    let boot = serde_json::json!({
        "kernel_image_path": guest,
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off bulkhead.test=idle",
    })
    .to_string();
    let mut times = Vec::new();
    for run in 0..RUNS {
        let sock = dir
            .join(format!("api{run}.sock"))
            .to_str()
            .unwrap()
            .to_owned();
        let mut fc = Spawned::start(&mut firecracker(&["--api-sock", &sock]));
        wait_for_socket(&sock);
        ok(&sock, "PUT", "/boot-source", &boot);
        let t = Instant::now();
        ok(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        );
        fc.wait_for(BOOT, |l| l.starts_with("bulkhead-guest:"));
        times.push(t.elapsed());
        fc.wait_for_line(
            "bulkhead-guest: idle: waiting for ctrl-alt-del ms=forever",
            BOOT,
        );
        ok(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#,
        );
        let (code, stderr) = fc.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "bench firecracker: InstanceStart to the guest's first serial line over {RUNS} VMs \
         (confined, test guest, 1 vCPU, 128 MiB): min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(times[0]),
        ms(times[RUNS / 2]),
        ms(times[RUNS - 1])
    );
    assert!(times[RUNS - 1] < Duration::from_secs(10), "{times:?}");
}
