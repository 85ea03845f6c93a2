//! End to end: the guest's disk I/O through the virtio-mmio transport and a vhost-user-blk
//! backend in its own process, checked in the image file on the host.

mod common;

use std::time::Duration;

use common::disk::{assert_pattern_only, assert_zeroes_only, Image};

const DEADLINE: Duration = Duration::from_secs(120);
const IMAGE_SIZE: usize = 16 << 20;

fn run(disks: &[String], cmdline: &str) -> common::Output {
    let mut cmd = common::bulkhead();
    cmd.arg("run");
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    cmd.args(["--cmdline", cmdline]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    out
}

#[test]
fn guest_writes_land_in_the_image_and_nothing_else_changes() {
    require_kvm!();
    let img = Image::new("blk-rw", IMAGE_SIZE);
    let out = run(
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

#[test]
fn read_only_disk_refuses_writes() {
    require_kvm!();
    let img = Image::new("blk-ro", IMAGE_SIZE);
    let out = run(
        &[img.disk_arg(",readonly=on")],
        "bulkhead.test=blk-identify,blk-readonly bulkhead.blk.ro=1",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-readonly");
    assert!(img.read() == img.original, "read-only image changed");
}

#[test]
fn interrupts_reach_the_guest_through_the_irqfd() {
    require_kvm!();
    let img = Image::new("blk-irq", IMAGE_SIZE);
    let out = run(&[img.disk_arg("")], "bulkhead.test=blk-irq");
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-irq");
}

/// The image is noise (`Image::new`); the guest writes the pattern over the range,
/// DISCARDs it and reads it back (bulkhead-blk punches a hole: zeroes), then WRITE_ZEROES
/// it. Afterwards the range is zero and every other byte of the file is as it was.
#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    require_kvm!();
    let img = Image::new("blk-discard", IMAGE_SIZE);
    let out = run(
        &[img.disk_arg("")],
        "bulkhead.test=blk-discard bulkhead.blk.discard=4096:16",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-discard");
    // The DISCARD alone zeroed the range, as the guest read it through the device.
    out.assert_line("bulkhead-guest: blk0 zeroed sectors 4096..4112 after_discard=zeroes");
    assert_zeroes_only(&img.path, &img.original, &img.read(), 4096, 16);
}

#[test]
fn hostile_requests_do_not_stop_the_device() {
    require_kvm!();
    let img = Image::new("blk-hostile", IMAGE_SIZE);
    let out = run(
        &[img.disk_arg("")],
        "bulkhead.test=blk-hostile,blk-rw bulkhead.blk.rw=100:8",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-hostile");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    assert_pattern_only(&img.path, &img.original, &img.read(), 100, 8);
}

#[test]
fn two_disks_are_two_processes() {
    require_kvm!();
    let a = Image::new("blk-two-a", IMAGE_SIZE);
    let b = Image::new("blk-two-b", IMAGE_SIZE);
    let out = run(
        &[a.disk_arg(""), b.disk_arg("")],
        "bulkhead.test=blk-rw bulkhead.blk.disk=1 bulkhead.blk.rw=10:4",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(a.read() == a.original, "the first disk was written");
    assert_pattern_only(&b.path, &b.original, &b.read(), 10, 4);
}

#[test]
fn missing_image_is_named_before_the_guest_starts() {
    let out = run(&["path=/nonexistent/disk.img".into()], "");
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        out.stderr
            .contains("disk0: opening disk image /nonexistent/disk.img"),
        "{}",
        out.stderr
    );
}

#[test]
fn image_not_a_multiple_of_512_is_refused() {
    require_kvm!();
    let path = std::env::temp_dir().join(format!("bulkhead-odd-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 1000]).unwrap();
    let out = run(&[format!("path={}", path.display())], "");
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        out.stderr.contains("1000"),
        "the size is named: {}",
        out.stderr
    );
}

#[test]
fn several_queues_are_offered() {
    require_kvm!();
    let img = Image::new("blk-mq", IMAGE_SIZE);
    let out = run(
        &[img.disk_arg(",queues=4")],
        "bulkhead.test=blk-identify,blk-rw bulkhead.blk.rw=64:8",
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.contains(" queues=4 "), "{}", out.stdout);
    out.assert_line("bulkhead-guest: PASS blk-rw");
    assert_pattern_only(&img.path, &img.original, &img.read(), 64, 8);
}

/// bulkhead-blk started by hand, QEMU-style, on a socket path; bulkhead connects to it.
#[test]
fn standalone_backend_on_a_socket_path() {
    require_kvm!();
    let img = Image::new("blk-standalone", IMAGE_SIZE);
    let socket = std::env::temp_dir().join(format!(
        "bulkhead-blk-standalone-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&socket);
    let mut backend = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"))
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
        &[format!("socket={}", socket.display())],
        "bulkhead.test=blk-identify,blk-rw bulkhead.blk.rw=300:4 bulkhead.blk.serial=by-hand",
    );
    // It serves one frontend and exits 0 when that one disconnects.
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

#[test]
fn direct_io_disk() {
    require_kvm!();
    // O_DIRECT needs a real filesystem (tmpfs refuses it): the image goes in the target dir.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("direct-{}.img", std::process::id()));
    let original = vec![0x11u8; IMAGE_SIZE];
    std::fs::write(&path, &original).unwrap();
    let out = run(
        &[format!("path={},direct=on", path.display())],
        "bulkhead.test=blk-rw bulkhead.blk.rw=512:32",
    );
    let now = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_pattern_only(&path, &original, &now, 512, 32);
}
