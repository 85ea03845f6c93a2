//! Interoperability: the same block tests with qemu-storage-daemon's vhost-user-blk export
//! as the backend instead of bulkhead-blk.

mod common;

use std::time::Duration;

use common::disk::{assert_pattern_only, Image};

const DEADLINE: Duration = Duration::from_secs(120);

/// qemu-storage-daemon on `image`; `None` (the test skips, or fails under CI) only when it
/// is not installed. Installed but failing to start or to make its socket fails the test.
fn start_qsd(image: &std::path::Path, readonly: bool, tag: &str) -> Option<common::qsd::Qsd> {
    match common::qsd::start(image, readonly, tag) {
        Ok(q) => Some(q),
        Err(e @ common::qsd::QsdError::NotInstalled(_)) => {
            common::skip::skip_or_fail(common::skip::SkipKind::MissingTool, &e.to_string());
            None
        }
        Err(e) => match std::error::Error::source(&e) {
            Some(cause) => panic!("{e}: {cause}"),
            None => panic!("{e}"),
        },
    }
}

#[test]
fn guest_writes_through_qemu_storage_daemon_land_in_the_image() {
    require_kvm!();
    let img = Image::new("qsd-rw", 16 << 20);
    let Some(qsd) = start_qsd(&img.path, false, "rw") else {
        return;
    };
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--disk")
        .arg(format!("socket={}", qsd.socket.display()))
        .args([
            "--cmdline",
            "bulkhead.test=blk-identify,blk-rw,blk-flush,blk-irq bulkhead.blk.rw=2048:64 bulkhead.blk.capacity=32768",
        ]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-rw");
    out.assert_line("bulkhead-guest: PASS blk-irq");
    drop(qsd);
    assert_pattern_only(&img.path, &img.original, &img.read(), 2048, 64);
}

#[test]
fn read_only_export_refuses_writes() {
    require_kvm!();
    let img = Image::new("qsd-ro", 16 << 20);
    let Some(qsd) = start_qsd(&img.path, true, "ro") else {
        return;
    };
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--disk")
        .arg(format!("socket={}", qsd.socket.display()))
        .args(["--cmdline", "bulkhead.test=blk-readonly"]);
    let out = common::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS blk-readonly");
    drop(qsd);
    assert!(img.read() == img.original, "read-only image changed");
}
