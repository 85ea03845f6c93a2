//! qcow2 served by `bulkhead-blk` (its own process, seccomp enforced) to a driver played
//! through vhost's real `Frontend`, with `qemu-img` as the judge: the same requests on a
//! qcow2 and on a raw image read the same through the device, and afterwards `qemu-img
//! check` finds the qcow2 clean (no errors, no leaks) and `qemu-img compare` identical to
//! the raw image. Overlays on a raw and on a qcow2 base (chains passed as descriptors):
//! the guest reads the base's bytes, its writes land in the overlay, the base's bytes
//! never change. Read-only serving, and the format probe's refusal.

mod common;
mod qcow2_support;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use qcow2_support::{
    assert_check_clean, assert_identical, finish, qemu_img, qemu_img_ok, serve, Blk, IOERR, OK,
};
use vmm_sys_util::tempdir::TempDir;

#[test]
fn child_backend() {
    qcow2_support::child_main();
}

const SIZE: u64 = 64 << 20;

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed) ^ ((i >> 9) as u8).wrapping_add(seed))
        .collect()
}

/// The requests both images get: writes spanning clusters and descriptors, zeroing with
/// and without unmap, discards (whole and partial clusters), flushes.
fn script(blk: &mut Blk) -> Vec<Vec<u8>> {
    let last = SIZE / 512 - 1;
    assert_eq!(blk.write(0, &bytes(3, 4096)), OK);
    assert_eq!(blk.write(127, &bytes(5, 65536 + 512)), OK);
    assert_eq!(blk.write(20000, &bytes(7, 1 << 20)), OK);
    assert_eq!(blk.write(last, &bytes(11, 512)), OK);
    assert_eq!(blk.flush(), OK);
    assert_eq!(blk.write_zeroes(20000, 128, false), OK);
    assert_eq!(blk.write_zeroes(20512, 256, true), OK);
    assert_eq!(blk.discard(21000, 512), OK);
    assert_eq!(blk.discard(1, 3), OK);
    assert_eq!(blk.write(50000, &bytes(13, 8192)), OK);
    assert_eq!(blk.write(20100, &bytes(17, 4096)), OK);
    assert_eq!(blk.flush(), OK);
    let mut seen = Vec::new();
    for (sector, len) in [
        (0, 4096),
        (120, 80 << 10),
        (19990, (1 << 20) + (20 << 10)),
        (last - 7, 4096),
        (49990, 32 << 10),
        (100_000, 64 << 10),
    ] {
        let (status, data) = blk.read(sector, len);
        assert_eq!(status, OK, "read at sector {sector}");
        seen.push(data);
    }
    // Past the end: refused before the image is touched.
    assert_eq!(blk.read(last, 1024).0, IOERR);
    seen
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn qcow2_and_raw_given_the_same_requests_are_identical_and_the_qcow2_is_clean() {
    same_requests("1.1");
}

#[test]
fn a_version_2_qcow2_too() {
    same_requests("0.10");
}

/// The script on a raw image and on a qcow2 of `compat` level (0.10: version 2).
fn same_requests(compat: &str) {
    let dir = TempDir::new().unwrap();
    let qcow2 = dir.as_path().join("disk.qcow2");
    let raw = dir.as_path().join("disk.raw");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    let compat = format!("compat={compat}");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &compat,
        &path_arg(&qcow2),
        "64M",
    ]);
    File::create(&raw).unwrap().set_len(SIZE).unwrap();

    let mut seen = Vec::new();
    for (path, format) in [(&qcow2, "qcow2"), (&raw, "raw")] {
        let (child, mut blk) = serve(
            &format!("--blk-file {} --format {format}", path_arg(path)),
            &[],
        );
        assert_eq!(blk.capacity(), SIZE / 512);
        seen.push(script(&mut blk));
        drop(blk);
        let (status, stderr) = finish(child);
        assert!(status.success(), "{format}: {status:?}\n{stderr}");
        assert!(
            stderr.contains(&format!("({format}, {SIZE} bytes")),
            "{stderr}"
        );
    }
    for (i, (q, r)) in seen[0].iter().zip(&seen[1]).enumerate() {
        assert!(q == r, "read {i} differs between qcow2 and raw");
    }
    assert_check_clean(&qcow2);
    assert_identical(&qcow2, "qcow2", &raw);
    // The qcow2 is sparse where the guest discarded: the file stays small.
    let len = std::fs::metadata(&qcow2).unwrap().len();
    assert!(len < 8 << 20, "qcow2 file is {len} bytes");
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn read_only(path: &Path) -> File {
    OpenOptions::new().read(true).open(path).unwrap()
}

fn read_write(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// base.raw ← (mid.qcow2 ←) top.qcow2, served with `--disk-fd` and `--backing-fd`s.
fn overlay(with_mid: bool) {
    let dir = TempDir::new().unwrap();
    let base = dir.as_path().join("base.raw");
    let mid = dir.as_path().join("mid.qcow2");
    let top = dir.as_path().join("top.qcow2");
    let expect = dir.as_path().join("expect.raw");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    let base_bytes = bytes(29, SIZE as usize);
    std::fs::write(&base, &base_bytes).unwrap();
    let mut expected = base_bytes.clone();
    let below = if with_mid {
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &path_arg(&mid),
        ]);
        // mid's own data, written by qemu-io's peer, qemu-img: a converted patch.
        let patch = dir.as_path().join("patch.raw");
        let mut p = base_bytes.clone();
        p[1 << 20..(1 << 20) + 65536].copy_from_slice(&bytes(31, 65536));
        std::fs::write(&patch, &p).unwrap();
        qemu_img_ok(&[
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "patch.raw",
            "-F",
            "raw",
            &path_arg(&mid),
        ]);
        qemu_img_ok(&[
            "rebase",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &path_arg(&mid),
        ]);
        expected = p;
        "mid.qcow2"
    } else {
        "base.raw"
    };
    let below_format = if with_mid { "qcow2" } else { "raw" };
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        below,
        "-F",
        below_format,
        &path_arg(&top),
    ]);
    let base_before = sha(&base);
    let mid_before = with_mid.then(|| sha(&mid));

    let top_file = read_write(&top);
    let mut files = vec![read_only(&base)];
    if with_mid {
        files.insert(0, read_only(&mid));
    }
    let mut args = format!("--disk-fd {} --format qcow2", top_file.as_raw_fd());
    let mut inherit = vec![top_file.as_raw_fd()];
    for (f, format) in files.iter().zip([below_format, "raw"]) {
        args += &format!(" --backing-fd {}:{format}", f.as_raw_fd());
        inherit.push(f.as_raw_fd());
    }
    let (child, mut blk) = serve(&args, &inherit);
    assert_eq!(blk.capacity(), SIZE / 512);
    // The base's (and mid's) bytes, through the overlay.
    for (sector, len) in [(0, 4096), (2040, 128 << 10), (SIZE / 512 - 8, 4096)] {
        let (status, data) = blk.read(sector, len);
        assert_eq!(status, OK);
        let at = (sector * 512) as usize;
        assert!(data == expected[at..at + len], "read at sector {sector}");
    }
    // Writes (a partial cluster: copy-on-write of the rest from below), zeroes, discard.
    for (sector, data) in [
        (2050u64, bytes(37, 1536)),
        (40000, bytes(41, 70000 / 512 * 512)),
    ] {
        assert_eq!(blk.write(sector, &data), OK);
        let at = (sector * 512) as usize;
        expected[at..at + data.len()].copy_from_slice(&data);
    }
    assert_eq!(blk.write_zeroes(60000, 200, true), OK);
    expected[60000 * 512..60200 * 512].fill(0);
    assert_eq!(blk.discard(80000, 1000), OK);
    expected[80000 * 512..81000 * 512].fill(0);
    assert_eq!(blk.flush(), OK);
    let (status, data) = blk.read(2040, 128 << 10);
    assert_eq!(status, OK);
    assert!(data == expected[2040 * 512..2040 * 512 + (128 << 10)]);
    drop(blk);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{status:?}\n{stderr}");

    assert!(sha(&base) == base_before, "the base changed");
    if let Some(before) = mid_before {
        assert!(sha(&mid) == before, "the middle image changed");
    }
    assert_check_clean(&top);
    std::fs::write(&expect, &expected).unwrap();
    assert_identical(&top, "qcow2", &expect);
}

#[test]
fn an_overlay_on_a_raw_base_reads_the_base_and_writes_only_the_overlay() {
    overlay(false);
}

#[test]
fn a_chain_of_two_qcow2_on_a_raw_base_writes_only_the_top() {
    overlay(true);
}

#[test]
fn a_read_only_qcow2_refuses_writes_and_stays_unchanged() {
    let dir = TempDir::new().unwrap();
    let qcow2 = dir.as_path().join("ro.qcow2");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &path_arg(&qcow2), "8M"]);
    let before = sha(&qcow2);
    let (child, mut blk) = serve(
        &format!("--blk-file {} --format qcow2 --read-only", path_arg(&qcow2)),
        &[],
    );
    assert_eq!(blk.write(0, &[1u8; 512]), IOERR);
    assert_eq!(blk.read(0, 512), (OK, vec![0u8; 512]));
    drop(blk);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(sha(&qcow2) == before, "a read-only image changed");
}

#[test]
fn a_qcow2_without_format_is_refused_not_guessed() {
    let dir = TempDir::new().unwrap();
    let qcow2 = dir.as_path().join("guess.qcow2");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &path_arg(&qcow2), "8M"]);
    let child = qcow2_support::backend(
        &format!(
            "--socket-path {}/s --blk-file {}",
            dir.as_path().display(),
            path_arg(&qcow2)
        ),
        &[],
    );
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} starts with a qcow2 header", path_arg(&qcow2))),
        "{stderr}"
    );
}
