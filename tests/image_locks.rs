//! Image locks QEMU respects (issue 13): a running VM holds QEMU's OFD lock bytes on its
//! image, so a second `bulkhead run`, qemu-storage-daemon and qemu-io are refused on it,
//! and bulkhead is refused on an image qemu-storage-daemon writes; read-only VMs share;
//! `lock=off` (here from a `--config` file) lets a second one in.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::disk::Image;
use common::skip::SkipKind;
use common::spawned::Spawned;

const WAIT: Duration = Duration::from_secs(60);

/// A VM serving `disk`, its guest idle after probing it (so the image is held until the
/// test ends the VM).
fn holding_vm(disk: &str) -> Spawned {
    let mut cmd = common::bulkhead();
    cmd.args([
        "run",
        "--disk",
        disk,
        "--cmdline",
        "bulkhead.test=blk-probe,idle",
    ]);
    let mut vm = Spawned::start(&mut cmd);
    vm.wait_for_line("bulkhead-guest: PASS blk-probe", WAIT);
    vm
}

/// Ends `vm` in order; it must have run fine.
fn end(vm: Spawned) {
    let (code, console, stderr) = vm.terminate(WAIT);
    assert!(
        code.is_some(),
        "the VM had to be killed:\n{console}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A second VM on `disk` that just probes it: its output.
fn second_vm(disk: &str) -> common::Output {
    common::run_vm(
        &["--disk", disk, "--cmdline", "bulkhead.test=blk-probe"],
        WAIT,
    )
}

/// Asserts `out` is the launcher's refusal of `img` for a lock, held by `holder`.
fn assert_lock_refusal(out: &common::Output, img: &Path, holder: &str, what: &str) {
    assert_eq!(out.code(), 125, "{out:#?}");
    let want = format!(
        "bulkhead: error: disk0: disk image {} is in use by {holder}",
        img.display()
    );
    assert!(
        out.stderr.contains(&want),
        "no {want:?} in:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains(what), "no {what:?} in:\n{}", out.stderr);
    assert!(out.stderr.contains("lock=off"), "{}", out.stderr);
}

/// `qemu-io -f raw -c 'write 0 512' IMAGE`: whether it wrote, and what it said.
fn qemu_io_write(img: &Path) -> Option<(bool, String)> {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(img)
        .output()
        .ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    ))
}

#[test]
fn a_second_writer_is_refused_naming_the_image_and_the_holder() {
    require_kvm!();
    let img = Image::new("lock-two", 1 << 20);
    let vm = holding_vm(&img.disk_arg(""));
    let holder = format!("bulkhead (pid {})", vm.pid());
    let out = second_vm(&img.disk_arg(""));
    assert_lock_refusal(
        &out,
        &img.path,
        &holder,
        "another process does not let others use it for writing",
    );
    // Read-only, it is refused too: the writer does not share writing with readers.
    let out = second_vm(&img.disk_arg(",readonly=on"));
    assert_lock_refusal(
        &out,
        &img.path,
        &holder,
        "another process has it open for writing",
    );
    end(vm);
    // Gone with the VM: the image serves again.
    let out = second_vm(&img.disk_arg(""));
    assert_eq!(out.code(), 0, "{out:#?}");
}

#[test]
fn read_only_vms_share_and_keep_writers_out() {
    require_kvm!();
    let img = Image::new("lock-ro", 1 << 20);
    let vm = holding_vm(&img.disk_arg(",readonly=on"));
    let out = second_vm(&img.disk_arg(",readonly=on"));
    assert_eq!(out.code(), 0, "a second reader was refused: {out:#?}");
    let out = second_vm(&img.disk_arg(""));
    assert_lock_refusal(
        &out,
        &img.path,
        &format!("bulkhead (pid {})", vm.pid()),
        "another process does not let others use it for writing",
    );
    end(vm);
    assert!(img.read() == img.original, "a read-only image changed");
}

#[test]
fn lock_off_from_a_config_file_lets_a_second_one_in() {
    require_kvm!();
    let img = Image::new("lock-off", 1 << 20);
    let vm = holding_vm(&img.disk_arg(""));
    let config =
        std::env::temp_dir().join(format!("bulkhead-lock-off-{}.json", std::process::id()));
    let json = format!(
        r#"{{"disk": ["{},format=raw,lock=off"]}}"#,
        img.disk_arg("")
    );
    std::fs::write(&config, json).expect("writing the config file");
    let out = common::run_vm(
        &[
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--cmdline",
            "bulkhead.test=blk-probe",
        ],
        WAIT,
    );
    let _ = std::fs::remove_file(&config);
    assert_eq!(out.code(), 0, "lock=off was refused: {out:#?}");
    end(vm);
}

#[test]
fn qemu_sees_a_running_vms_locks() {
    require_kvm!();
    let img = Image::new("lock-qemu", 1 << 20);
    let vm = holding_vm(&img.disk_arg(""));
    let Some((wrote, said)) = qemu_io_write(&img.path) else {
        skip!(
            SkipKind::MissingTool,
            "qemu-io (Debian package qemu-utils) is not installed"
        );
    };
    assert!(
        !wrote && said.contains("Failed to get \"write\" lock"),
        "{said}"
    );
    // qemu-storage-daemon exporting it writable cannot start.
    match common::qsd::start(&img.path, false, "lock-qemu") {
        Err(common::qsd::QsdError::Exited(status, _)) => assert!(!status.success()),
        Err(e) => panic!("qemu-storage-daemon: {e}"),
        Ok(_) => panic!("qemu-storage-daemon exported an image a VM writes"),
    }
    end(vm);
    // Without the VM, both get in (so the refusals above were the locks).
    let (wrote, said) = qemu_io_write(&img.path).expect("qemu-io ran before");
    assert!(wrote, "{said}");
    let qsd = common::qsd::start(&img.path, false, "lock-qemu").expect("qemu-storage-daemon");
    drop(qsd);
}

#[test]
fn an_image_qemu_storage_daemon_writes_is_refused() {
    require_kvm!();
    let img = Image::new("lock-qsd", 1 << 20);
    let qsd = match common::qsd::start(&img.path, false, "lock-qsd") {
        Ok(q) => q,
        Err(e @ common::qsd::QsdError::NotInstalled(_)) => {
            skip!(SkipKind::MissingTool, "{e}");
        }
        Err(e) => panic!("qemu-storage-daemon: {e}"),
    };
    let out = second_vm(&img.disk_arg(""));
    assert_lock_refusal(
        &out,
        &img.path,
        "qemu-storage-daemon (pid ",
        "another process has it open for writing",
    );
    // A reader is refused too: qemu-storage-daemon writes under it.
    let out = second_vm(&img.disk_arg(",readonly=on"));
    assert_lock_refusal(
        &out,
        &img.path,
        "qemu-storage-daemon (pid ",
        "another process has it open for writing",
    );
    drop(qsd);
    let out = second_vm(&img.disk_arg(""));
    assert_eq!(out.code(), 0, "{out:#?}");
}

/// A file removed when dropped.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_served_overlay_locks_its_backing_file_and_itself() {
    require_kvm!();
    let base = Image::new("lock-base", 1 << 20);
    let overlay = Removed(std::env::temp_dir().join(format!(
        "bulkhead-lock-overlay-{}.qcow2",
        std::process::id()
    )));
    let overlay = &overlay.0;
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base.path)
        .arg(overlay)
        .output();
    let Ok(made) = made else {
        skip!(
            SkipKind::MissingTool,
            "qemu-img (Debian package qemu-utils) is not installed"
        );
    };
    assert!(made.status.success(), "{made:?}");
    let overlay_disk = format!("path={},format=qcow2", overlay.display());
    let vm = holding_vm(&overlay_disk);
    let holder = format!("bulkhead (pid {})", vm.pid());
    // A writer on the base is refused; a reader shares it with the overlay.
    let out = second_vm(&base.disk_arg(""));
    assert_lock_refusal(
        &out,
        &base.path,
        &holder,
        "another process does not let others use it for writing",
    );
    let out = second_vm(&base.disk_arg(",readonly=on"));
    assert_eq!(out.code(), 0, "a reader of the base was refused: {out:#?}");
    let (wrote, said) = qemu_io_write(&base.path).expect("qemu-io is installed with qemu-img");
    assert!(
        !wrote && said.contains("Failed to get \"write\" lock"),
        "{said}"
    );
    // The overlay itself: a second bulkhead and qemu-img info (no -U) are refused.
    let out = second_vm(&overlay_disk);
    assert_lock_refusal(
        &out,
        overlay,
        &holder,
        "another process does not let others use it for writing",
    );
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(overlay)
        .output()
        .expect("running qemu-img info");
    let said = String::from_utf8_lossy(&info.stderr);
    assert!(
        !info.status.success() && said.contains("Failed to get shared \"write\" lock"),
        "{info:?}"
    );
    end(vm);
    assert!(base.read() == base.original, "the base changed");
}

fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    common::bulkhead()
        .arg("ctl")
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("running bulkhead ctl")
}

#[test]
fn a_swapped_in_image_is_locked_and_the_old_one_let_go() {
    require_kvm!();
    let (a, b, c) = (
        Image::new("swap-a", 1 << 20),
        Image::new("swap-b", 1 << 20),
        Image::new("swap-c", 1 << 20),
    );
    let sock = Removed(
        std::env::temp_dir().join(format!("bulkhead-lock-swap-{}.sock", std::process::id())),
    );
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--api-socket")
        .arg(&sock.0)
        .args(["--disk", &a.disk_arg("")])
        .args(["--cmdline", "bulkhead.test=blk-probe,idle"]);
    let mut vm = Spawned::start(&mut cmd);
    vm.wait_for_line("bulkhead-guest: PASS blk-probe", WAIT);
    let path = |img: &Image| img.path.to_str().expect("UTF-8 path").to_owned();

    // An image another VM writes is refused, naming it and that VM; the disk goes on.
    let other = holding_vm(&b.disk_arg(""));
    let out = ctl(&sock.0, &["disk", "disk0", "--path", &path(&b)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "disk image {} is in use by bulkhead (pid {})",
        b.path.display(),
        other.pid()
    );
    assert!(err.contains(&want), "no {want:?} in {err}");
    end(other);

    // A qcow2 cannot be swapped in.
    let q = Removed(b.path.with_extension("qcow2"));
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q.0)
        .arg("1M")
        .output();
    if let Ok(made) = made {
        assert!(made.status.success(), "{made:?}");
        let out = ctl(&sock.0, &["disk", "disk0", "--path", q.0.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("a drive swap serves raw images only"), "{err}");
    }

    // A free image is swapped in: it is held from now on, and the old one let go.
    let out = ctl(&sock.0, &["disk", "disk0", "--path", &path(&c)]);
    assert!(out.status.success(), "{out:?}");
    let out = second_vm(&a.disk_arg(""));
    assert_eq!(
        out.code(),
        0,
        "the swapped-out image is still held: {out:#?}"
    );
    let out = second_vm(&c.disk_arg(""));
    assert_lock_refusal(
        &out,
        &c.path,
        &format!("bulkhead (pid {})", vm.pid()),
        "another process does not let others use it for writing",
    );
    end(vm);
}
