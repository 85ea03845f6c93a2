//! A qcow2 corruption found only during I/O: an L2 entry pointing at an unaligned data
//! cluster, in an overlay on a raw base. The guest's reads and writes there get IOERR, the
//! backend logs a line naming the image, and goes on serving: reads and writes elsewhere
//! work, FLUSH works, and the base's bytes never change.

mod common;
mod qcow2_support;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::Command;

use qcow2_support::{finish, qemu_img, qemu_img_ok, serve, IOERR, OK};
use vmm_sys_util::tempdir::TempDir;

#[test]
fn child_backend() {
    qcow2_support::child_main();
}

const L1_TABLE_OFFSET: u64 = 40;
/// Bits 9..=55 of an L1 entry: the L2 table's offset.
const L2_OFFSET_MASK: u64 = ((1 << 56) - 1) & !511;

fn be64(f: &File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn a_corrupt_l2_entry_fails_only_the_requests_that_reach_it() {
    let dir = TempDir::new().unwrap();
    let base = dir.as_path().join("base.raw");
    let top = dir.as_path().join("top.qcow2");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    File::create(&base).unwrap().set_len(8 << 20).unwrap();
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "-o",
        "cluster_size=4096",
        &top.display().to_string(),
    ]);
    // qemu-io writes data under L1 entries 0 and 1 (with 4 KiB clusters each maps 2 MiB).
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 0 64k",
            "-c",
            "write -P 0xbb 2M 64k",
        ])
        .arg(&top)
        .output()
        .expect("qemu-io (qemu-utils) is installed with qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first entry of L1[1]'s L2 table (the data cluster at 2 MiB) now points 512
    // bytes into its cluster: not cluster aligned. (imago checks L1 entries at open, L2
    // tables only when it loads them, as QEMU does.)
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&top)
        .unwrap();
    let l1 = be64(&img, L1_TABLE_OFFSET);
    let l2 = be64(&img, l1 + 8) & L2_OFFSET_MASK;
    assert_ne!(l2, 0, "qemu-io allocated an L2 table for L1[1]");
    let entry = be64(&img, l2);
    img.write_all_at(&(entry + 512).to_be_bytes(), l2).unwrap();
    let base_before = std::fs::read(&base).unwrap();

    let below = File::open(&base).unwrap();
    let (t, b) = (img.as_raw_fd(), below.as_raw_fd());
    let (child, mut blk) = serve(
        &format!("--disk-fd {t} --format qcow2 --backing-fd {b}:raw"),
        &[t, b],
    );
    let bad = (2 << 20) / 512;
    assert_eq!(blk.read(bad, 4096).0, IOERR);
    assert_eq!(blk.write(bad + 8, &[7u8; 4096]), IOERR);
    // Elsewhere, the device goes on.
    assert_eq!(blk.read(0, 4096), (OK, vec![0xaa; 4096]));
    assert_eq!(blk.write(256, &[0x11; 8192]), OK);
    assert_eq!(blk.read(256, 8192), (OK, vec![0x11; 8192]));
    assert_eq!(blk.read((6 << 20) / 512, 512), (OK, vec![0; 512]));
    assert_eq!(blk.flush(), OK);
    assert_eq!(blk.read(bad, 512).0, IOERR);
    drop(blk);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains(&format!("read at byte {} of fd {t}", 2u64 << 20)),
        "{stderr}"
    );
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );
}
