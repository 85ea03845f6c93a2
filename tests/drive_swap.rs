//! Swapping a running disk's image: `bulkhead ctl disk NAME --path IMAGE` and Firecracker's
//! `PATCH /drives/{id}` with a `path_on_host`. The guest (`blk-swap`) reads the capacity and
//! sector 0, waits for the configuration change, reads them again and writes sector 1: it
//! must see the new image's size and bytes, its write must land in the new image, and the
//! old image must be untouched. A path the rules refuse leaves the VM on the old image.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::disk::{Image, SECTOR};
use common::spawned::Spawned;
use common::transport::{assert_guest_used, bulkhead_run, Transport};

// The new image is smaller: a larger one needs the launcher to raise bulkhead-blk's
// RLIMIT_FSIZE, which takes CAP_SYS_RESOURCE (not every test host's root has it).
const OLD_SIZE: usize = 3 << 20;
const NEW_SIZE: usize = 1 << 20;
/// What `blk-swap` writes over sector 1 of the new image.
const WRITTEN: u8 = 0xa5;
const WAIT: Duration = Duration::from_secs(60);

fn hex8(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
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

/// Waits for the guest's `blk0 swap <when> capacity=... sector0=...` line; returns it.
fn swap_line(vm: &mut Spawned, when: &str) -> String {
    let want = format!("blk0 swap {when} capacity=");
    vm.wait_for(WAIT, |l| l.contains(&want))
}

/// Checks what the guest saw and what the images hold after the swap.
fn check_after(vm: &mut Spawned, old: &Image, new: &Image) {
    let after = swap_line(vm, "after");
    let expected = format!(
        "capacity={} sector0={}",
        NEW_SIZE as u64 / SECTOR,
        hex8(&new.original)
    );
    assert!(
        after.contains(&expected),
        "{after:?}: expected {expected:?}"
    );
    vm.wait_for_line("bulkhead-guest: PASS blk-swap", WAIT);
    assert!(old.read() == old.original, "the old image was changed");
    let now = new.read();
    let s = SECTOR as usize;
    assert!(
        now[s..2 * s].iter().all(|&b| b == WRITTEN),
        "the guest's write did not reach the new image"
    );
    assert!(now[..s] == new.original[..s] && now[2 * s..] == new.original[2 * s..]);
}

fn ctl_swaps_the_image_and_the_guest_sees_it(t: Transport) {
    require_kvm!();
    let tag = format!("swap-{}", t.as_str());
    let old = Image::new(&format!("{tag}-old"), OLD_SIZE);
    let new = Image::new(&format!("{tag}-new"), NEW_SIZE);
    let sock = std::env::temp_dir().join(format!("bulkhead-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut vm = Spawned::start(
        bulkhead_run(t)
            .arg("--disk")
            .arg(old.disk_arg(""))
            .arg("--api-socket")
            .arg(&sock)
            .args(["--cmdline", "bulkhead.test=blk-swap"]),
    );
    let before = swap_line(&mut vm, "before");
    let expected = format!(
        "capacity={} sector0={}",
        OLD_SIZE as u64 / SECTOR,
        hex8(&old.original)
    );
    assert!(
        before.contains(&expected),
        "{before:?}: expected {expected:?}"
    );
    vm.wait_for(WAIT, |l| l.contains("blk0 swap waiting"));

    // Refused: a path that is not there, a device that is not a disk. The VM runs on.
    let missing = old.path.with_extension("missing");
    let out = ctl(
        &sock,
        &["disk", "disk0", "--path", missing.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("disk0") && err.contains("missing"), "{err}");
    let out = ctl(
        &sock,
        &["disk", "net0", "--path", new.path.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("net0: not a disk"), "{err}");
    let out = ctl(&sock, &["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("state: running"));

    let out = ctl(
        &sock,
        &["disk", "disk0", "--path", new.path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    check_after(&mut vm, &old, &new);
    let (_, stdout, stderr) = vm.terminate(Duration::from_secs(30));
    assert_guest_used(t, &stdout);
    assert!(!stderr.contains("failed"), "{stderr}");
}

/// `curl --unix-socket`: (status, body).
fn curl(sock: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            "--unix-socket",
            sock,
            "-X",
            method,
        ])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://localhost{path}"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn patch_drives_swaps_the_image_through_the_firecracker_api(t: Transport) {
    require_kvm!();
    let tag = format!("fcswap-{}", t.as_str());
    let dir = std::env::temp_dir().join(format!("bulkhead-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, bulkhead_vmm::TEST_GUEST).unwrap();
    let old = Image::new(&format!("{tag}-old"), OLD_SIZE);
    let new = Image::new(&format!("{tag}-new"), NEW_SIZE);
    let sock = dir.join("api.sock").to_str().unwrap().to_owned();
    let mut args = vec!["--api-sock", &sock];
    if t == Transport::Pci {
        args.push("--enable-pci");
    }
    let mut fc = Spawned::start(
        Command::new(env!("CARGO_BIN_EXE_bulkhead-firecracker"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .env("RUST_LOG", "warn"),
    );
    for _ in 0..500 {
        if Path::new(&sock).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let boot_args = format!(
        // `idle` keeps the VM (and so the API) up after the swap, for GET /vm/config.
        "console=ttyS0 reboot=k panic=1{} bulkhead.test=blk-swap,idle",
        if t == Transport::Pci { "" } else { " pci=off" }
    );
    let put = |path: &str, body: serde_json::Value| {
        let (code, answer) = curl(&sock, "PUT", path, &body.to_string());
        assert_eq!(code, 204, "PUT {path}: {answer}");
    };
    put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": kernel, "boot_args": boot_args}),
    );
    put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    put(
        "/drives/rootfs",
        serde_json::json!({"drive_id": "rootfs", "path_on_host": old.path,
                           "is_root_device": true, "is_read_only": false}),
    );
    put(
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    let before = swap_line(&mut fc, "before");
    assert!(
        before.contains(&format!("sector0={}", hex8(&old.original))),
        "{before:?}"
    );
    fc.wait_for(WAIT, |l| l.contains("blk0 swap waiting"));

    // A path the rules refuse (a directory is no image): a 400 fault, the VM runs on.
    let (code, answer) = curl(
        &sock,
        "PATCH",
        "/drives/rootfs",
        &serde_json::json!({"drive_id": "rootfs", "path_on_host": dir}).to_string(),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("fault_message"), "{answer}");
    let (code, answer) = curl(
        &sock,
        "PATCH",
        "/drives/nosuch",
        r#"{"drive_id": "nosuch", "path_on_host": "/x"}"#,
    );
    assert_eq!(code, 400, "{answer}");

    let (code, answer) = curl(
        &sock,
        "PATCH",
        "/drives/rootfs",
        &serde_json::json!({"drive_id": "rootfs", "path_on_host": new.path}).to_string(),
    );
    assert_eq!(code, 204, "{answer}");
    check_after(&mut fc, &old, &new);
    let (code, config) = curl(&sock, "GET", "/vm/config", "");
    assert_eq!(code, 200, "{config}");
    assert!(config.contains(new.path.to_str().unwrap()), "{config}");
    let (_, stdout, _) = fc.terminate(Duration::from_secs(30));
    assert_guest_used(t, &stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

on_both_transports!(
    ctl_swaps_the_image_and_the_guest_sees_it,
    patch_drives_swaps_the_image_through_the_firecracker_api
);
