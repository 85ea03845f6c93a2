//! End to end: the guest's disk I/O through either virtio transport (each test runs as
//! `mmio::` and `pci::`) and a vhost-user-blk backend in its own process, checked in the
//! image file on the host.

mod common;

use std::time::Duration;

use common::disk::{assert_pattern_only, assert_zeroes_only, Image};
use common::running;
use common::transport::{assert_guest_used, bulkhead_run, Transport};

const DEADLINE: Duration = Duration::from_secs(120);
const IMAGE_SIZE: usize = 16 << 20;

/// `bulkhead run` on transport `t` with `disks`, the guest running `cmdline`; checks that
/// the guest had its disks on `t`.
fn run(t: Transport, disks: &[String], cmdline: &str) -> common::Output {
    let out = start(t, disks, cmdline);
    assert_guest_used(t, &out.stdout);
    out
}

/// [`run`] for a VM that is refused before its guest starts.
fn start(t: Transport, disks: &[String], cmdline: &str) -> common::Output {
    let mut cmd = bulkhead_run(t);
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    cmd.args(["--cmdline", cmdline]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    out
}

fn guest_writes_land_in_the_image_and_nothing_else_changes(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-rw", IMAGE_SIZE);
    let out = run(
        t,
        &[img.disk_arg(",serial=bulkhead-disk0")],
        "bulkhead.test=blk-identify,blk-rw,blk-flush bulkhead.blk.rw=2048:64 \
         bulkhead.blk.serial=bulkhead-disk0 bulkhead.blk.capacity=32768 bulkhead.blk.ro=0",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-identify");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    out.assert_line("bulkhead-guest: PASS blk-flush");
    assert_pattern_only(&img.path, &img.original, &img.read(), 2048, 64);
}

fn read_only_disk_refuses_writes(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-ro", IMAGE_SIZE);
    let out = run(
        t,
        &[img.disk_arg(",readonly=on")],
        "bulkhead.test=blk-identify,blk-readonly bulkhead.blk.ro=1",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-readonly");
    assert!(img.read() == img.original, "read-only image changed");
}

/// The fields of the guest's `<disk> irq ...` line (tests/guest's blk-irq), by name.
fn irq_fields(stdout: &str) -> std::collections::HashMap<String, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bulkhead-guest: blk0 irq "))
        .unwrap_or_else(|| panic!("no irq line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// blk-irq makes three reads that want an interrupt (one spinning at CPL3, two halted)
/// and one with interrupts suppressed: exactly one interrupt per wanted completion, at
/// least the first taken at CPL3, none for the suppressed read; on mmio on disk 0's line
/// (IRQ 5) with the used-buffer bit in InterruptStatus, on pci by the queue's MSI-X vector.
fn interrupts_reach_the_guest_through_the_irqfd(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-irq", IMAGE_SIZE);
    let out = run(t, &[img.disk_arg("")], "bulkhead.test=blk-irq");
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-irq");
    let f = irq_fields(&out.stdout);
    let num = |k: &str| -> u64 {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {k}= in {f:?}"))
    };
    assert_eq!(
        num("interrupts"),
        3,
        "one interrupt per wanted completion: {f:?}"
    );
    assert!(
        (1..=num("interrupts")).contains(&num("at_cpl3")),
        "the spinning round's interrupt arrives at CPL3: {f:?}"
    );
    assert_eq!(num("suppressed_interrupts"), 0, "{f:?}");
    match t {
        Transport::Mmio => {
            assert_eq!(num("line"), 5, "{f:?}");
            let status = u32::from_str_radix(f["interrupt_status"].trim_start_matches("0x"), 16)
                .expect("interrupt_status is hex");
            assert_eq!(status & 1, 1, "used-buffer bit: {f:?}");
        }
        // With MSI-X the queue has a vector of its own: no line, no ISR read.
        Transport::Pci => {
            assert!(!f.contains_key("line"), "an IOAPIC line on pci: {f:?}");
            assert!(
                f.get("msix_vector")
                    .is_some_and(|v| v.parse::<u16>().is_ok()),
                "no MSI-X vector: {f:?}"
            );
        }
    }
}

/// The image is noise (`Image::new`); the guest writes the pattern over the range,
/// DISCARDs it and reads it back (bulkhead-blk punches a hole: zeroes), then WRITE_ZEROES
/// it. Afterwards the range is zero and every other byte of the file is as it was.
fn discard_and_write_zeroes_read_back_as_zeros(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-discard", IMAGE_SIZE);
    let out = run(
        t,
        &[img.disk_arg("")],
        "bulkhead.test=blk-discard bulkhead.blk.discard=4096:16",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-discard");
    // The DISCARD alone zeroed the range, as the guest read it through the device.
    out.assert_line("bulkhead-guest: blk0 zeroed sectors 4096..4112 after_discard=zeroes");
    assert_zeroes_only(&img.path, &img.original, &img.read(), 4096, 16);
}

/// Malformed requests through a jailed bulkhead-blk each get their exact answer (the guest
/// fails on any other, on a request left pending, on DEVICE_NEEDS_RESET or FAILED in the
/// device status, on a completion nobody waited for), the device keeps serving, and the
/// image is untouched but for the good writes after them.
fn hostile_requests_do_not_stop_the_device(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-hostile", IMAGE_SIZE);
    let out = run(
        t,
        &[img.disk_arg("")],
        "bulkhead.test=blk-hostile,blk-rw bulkhead.blk.rw=100:8",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    for (case, answer) in [
        ("addr-outside-ram", "IOERR"),
        ("addr-wraps", "IOERR"),
        ("desc-loop", "IOERR"),
        ("header-writable", "IOERR"),
        ("sector-past-end", "IOERR"),
        ("sector-straddles-end", "IOERR"),
        ("unknown-type", "UNSUPP"),
        ("chain-too-long", "IOERR"),
    ] {
        out.assert_line(&format!(
            "bulkhead-guest: blk0 hostile {case} status={answer} expected={answer} good_read=OK"
        ));
    }
    out.assert_line("bulkhead-guest: blk0 hostile device_status=0xf late_completions=0");
    out.assert_line("bulkhead-guest: PASS blk-hostile");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    assert_pattern_only(&img.path, &img.original, &img.read(), 100, 8);
}

/// (device, inode) of the regular files process `pid` holds open, guest memory (memfds,
/// which the vmm shares with every device) aside.
fn regular_files_held(pid: u32) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"));
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| !l.to_string_lossy().starts_with("/memfd:"))
        })
        // metadata() follows the fd's link to the open file itself.
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|m| m.file_type().is_file())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Each disk is served by a bulkhead-blk process of its own that holds its image and no
/// other: counted from /proc while the guest keeps the second disk busy, then the VM is
/// stopped with SIGTERM.
fn two_disks_are_two_processes(t: Transport) {
    use std::os::unix::fs::MetadataExt;
    require_kvm!();
    let a = Image::new("blk-two-a", IMAGE_SIZE);
    let b = Image::new("blk-two-b", IMAGE_SIZE);
    // After its writes the guest benchmarks disk 1 (sectors 16384..16640 only) for up to
    // eight minutes: the VM is running while the test looks, and SIGTERM ends it.
    let mut vm = common::spawned::Spawned::start(
        bulkhead_run(t)
            .arg("--disk")
            .arg(a.disk_arg(""))
            .arg("--disk")
            .arg(b.disk_arg(""))
            .args([
                "--cmdline",
                "bulkhead.test=blk-rw,blk-bench bulkhead.blk.disk=1 bulkhead.blk.rw=10:4 \
                 bulkhead.blk.bench=16384:256 bulkhead.blk.bench-ms=60000",
            ]),
    );
    vm.wait_for_line("bulkhead-guest: PASS blk-rw", Duration::from_secs(60));
    let blk: Vec<u32> = running::children(vm.pid())
        .into_iter()
        .filter(|(_, name)| name == "bulkhead-blk")
        .map(|(pid, _)| pid)
        .collect();
    let held: Vec<Vec<(u64, u64)>> = blk.iter().map(|&p| regular_files_held(p)).collect();
    // The launcher says the format of a raw image too (the contract: `--format` always),
    // and names no backing file.
    let args: Vec<Vec<String>> = blk.iter().map(|&p| running::args_of(p)).collect();
    let (code, stdout, stderr) = vm.terminate(Duration::from_secs(30));
    assert_guest_used(t, &stdout);
    assert_eq!(
        blk.len(),
        2,
        "two bulkhead-blk processes expected: {blk:?}\n{stderr}"
    );
    assert_ne!(blk[0], blk[1]);
    let id = |img: &Image| {
        let m = std::fs::metadata(&img.path).expect("stat of the image");
        (m.dev(), m.ino())
    };
    let mut images: Vec<(u64, u64)> = held
        .iter()
        .map(|files| {
            assert_eq!(
                files.len(),
                1,
                "a bulkhead-blk holds one regular file: {held:?}"
            );
            files[0]
        })
        .collect();
    images.sort();
    for said in &args {
        assert!(
            running::has_option(said, "--format", "raw")
                && !said.iter().any(|x| x == "--backing-fd"),
            "{said:?}"
        );
    }
    let mut want = vec![id(&a), id(&b)];
    want.sort();
    assert_eq!(images, want, "each process holds its own image");
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stdout}\n{stderr}");
    assert!(a.read() == a.original, "the first disk was written");
    // The benchmark's range of disk 1 is its own; everything else is as blk-rw left it.
    let mut now = b.read();
    let bench = 16384 * 512..16640 * 512;
    now[bench.clone()].copy_from_slice(&b.original[bench]);
    assert_pattern_only(&b.path, &b.original, &now, 10, 4);
}

#[test]
fn missing_image_is_named_before_the_guest_starts() {
    let out = start(Transport::Mmio, &["path=/nonexistent/disk.img".into()], "");
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        out.stderr
            .contains("disk0: opening disk image: /nonexistent/disk.img"),
        "{}",
        out.stderr
    );
}

#[test]
fn image_not_a_multiple_of_512_is_refused() {
    require_kvm!();
    let path = std::env::temp_dir().join(format!("bulkhead-odd-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 1000]).unwrap();
    let out = start(Transport::Mmio, &[format!("path={}", path.display())], "");
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        out.stderr.contains("1000"),
        "the size is named: {}",
        out.stderr
    );
}

/// A disk with four queues: the guest sees four, writes and reads on each (its part of
/// the range), and every request it made on a queue came back on that queue.
fn several_queues_are_offered(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-mq", IMAGE_SIZE);
    let out = run(
        t,
        &[img.disk_arg(",queues=4")],
        "bulkhead.test=blk-identify,blk-mq,blk-rw bulkhead.blk.rw=64:32",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.contains(" queues=4 "), "{}", out.stdout);
    // Per queue: 8 sectors in chunks of 4, written then read back: 4 requests.
    for q in 0..4 {
        out.assert_line(&format!(
            "bulkhead-guest: blk0 mq queue={q} requests=4 completions=4"
        ));
    }
    out.assert_line("bulkhead-guest: blk0 mq queues=4");
    out.assert_line("bulkhead-guest: PASS blk-mq");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    assert_pattern_only(&img.path, &img.original, &img.read(), 64, 32);
}

/// bulkhead-blk started by hand, QEMU-style, on a socket path with --once; bulkhead connects
/// to it.
fn standalone_backend_on_a_socket_path(t: Transport) {
    require_kvm!();
    let img = Image::new("blk-standalone", IMAGE_SIZE);
    // One path per transport: the mmio and pci halves run side by side in one process.
    let socket = std::env::temp_dir().join(format!(
        "bulkhead-blk-standalone-{}-{}.sock",
        t.as_str(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&socket);
    let mut backend = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
        .arg("--once")
        .arg("--socket-path")
        .arg(&socket)
        .arg("--blk-file")
        .arg(&img.path)
        .args(["--serial", "by-hand"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting bulkhead-blk");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = run(
        t,
        &[format!("socket={}", socket.display())],
        "bulkhead.test=blk-identify,blk-rw bulkhead.blk.rw=300:4 bulkhead.blk.serial=by-hand",
    );
    // With --once it serves one frontend and exits 0 when that one disconnects (without,
    // it keeps listening: tests/blk_standalone.rs).
    let status = common::wait_until(
        &mut backend,
        std::time::Instant::now() + Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(&socket);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-identify");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "bulkhead-blk did not exit cleanly"
    );
    assert_pattern_only(&img.path, &img.original, &img.read(), 300, 4);
}

fn direct_io_disk(t: Transport) {
    require_kvm!();
    // O_DIRECT needs a real filesystem (tmpfs refuses it): the image goes in the target dir.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("direct-{}.img", std::process::id()));
    let original = vec![0x11u8; IMAGE_SIZE];
    std::fs::write(&path, &original).unwrap();
    let out = run(
        t,
        &[format!("path={},direct=on", path.display())],
        "bulkhead.test=blk-rw bulkhead.blk.rw=512:32",
    );
    let now = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_pattern_only(&path, &original, &now, 512, 32);
}

/// The guest's `blk-bench` (reads and writes polled from CPL3) for `ms` per test on
/// transport `t`, with the vmm's exit counts (`--report-stats`): (requests, exits to the
/// vmm other than port I/O, which is the guest's serial console).
fn bench_exits(t: Transport, img: &Image, ms: u32) -> (u64, u64) {
    let mut cmd = bulkhead_run(t);
    cmd.args(["--report-stats", "--disk", &img.disk_arg("")])
        .arg("--cmdline")
        .arg(format!(
            "bulkhead.test=blk-bench bulkhead.blk.bench-ms={ms}"
        ));
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(t, &out.stdout);
    let number = |text: &str, key: &str| -> Vec<u64> {
        text.split_whitespace()
            .filter_map(|w| w.strip_prefix(key))
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let requests: u64 = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("bulkhead-guest: blk-bench "))
        .flat_map(|l| number(l, "ios="))
        .sum();
    let stats = out
        .stderr
        .lines()
        .find(|l| l.contains("bulkhead-stats: ") && l.contains("exits_mmio="))
        .unwrap_or_else(|| panic!("no exit counts from the vmm:\n{}", out.stderr));
    let exits = number(stats, "exits_mmio=")[0] + number(stats, "exits_other=")[0];
    (requests, exits)
}

/// Zero exits to the vmm per request in steady state: a run three times as long makes
/// thousands more requests and not one more exit (device set-up is the same in both; the
/// queue notifications are ioeventfds, the completions polled from the used ring). An
/// exit per request (an ISR read, a notify the vmm serves) fails it by thousands; so does
/// counting the serial console's port I/O, whose lines carry the figures (tried).
fn requests_cause_no_vmm_exits(t: Transport) {
    require_kvm!();
    let img = Image::new(&format!("blk-exits-{t}"), IMAGE_SIZE);
    let (short, short_exits) = bench_exits(t, &img, 100);
    let (long, long_exits) = bench_exits(t, &img, 300);
    assert!(
        long > short + 1000,
        "too few more requests to tell: {short} then {long}"
    );
    assert_eq!(
        short_exits, long_exits,
        "{t}: {short} requests took {short_exits} exits, {long} took {long_exits}"
    );
}

on_both_transports!(
    requests_cause_no_vmm_exits,
    guest_writes_land_in_the_image_and_nothing_else_changes,
    read_only_disk_refuses_writes,
    interrupts_reach_the_guest_through_the_irqfd,
    discard_and_write_zeroes_read_back_as_zeros,
    hostile_requests_do_not_stop_the_device,
    two_disks_are_two_processes,
    several_queues_are_offered,
    standalone_backend_on_a_socket_path,
    direct_io_disk,
);
