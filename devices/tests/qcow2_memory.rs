//! Bounded memory: `bulkhead-blk` serving a qcow2 of 1 TiB virtual size keeps its
//! anonymous memory within imago's cache bound however many L2 tables the guest touches.
//! 1000 writes, each in its own 512 MiB stretch (so each allocates its own L2 table), then
//! a fresh read-only process reads them all back: 1000 L2 tables (62.5 MiB of them with
//! 64 KiB clusters) pass through caches of 128 tables (8 MiB) and 32 refcount blocks
//! (2 MiB). The growth of the process's RssAnon (from /proc) must stay under that bound
//! plus 6 MiB of slack, i.e. well under what keeping every table would take.

mod common;
mod qcow2_support;

use qcow2_support::{finish, qemu_img, qemu_img_ok, serve, Blk, OK};
use vmm_sys_util::tempdir::TempDir;

#[test]
fn child_backend() {
    qcow2_support::child_main();
}

const STRETCH: u64 = 512 << 20;
const TOUCHED: u64 = 1000;
const MIB: u64 = 1 << 20;
/// imago's caches for one image with 64 KiB clusters: 128 L2 tables, 32 refcount blocks.
const CACHE_BOUND: u64 = (128 + 32) * 65536;
const SLACK: u64 = 6 * MIB;

/// The child's anonymous resident memory, bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn block(i: u64) -> Vec<u8> {
    (0..4096u64).map(|j| (i * 7 + j) as u8).collect()
}

fn sector(i: u64) -> u64 {
    // Stretches 0, 2, 4, ...: 1000 distinct L2 tables across the first 1000 GiB.
    i * 2 * STRETCH / 512 + (i % 97) * 8
}

/// Runs `work` on a served image; returns the growth of RssAnon across it.
fn growth(child: &std::process::Child, blk: &mut Blk, work: impl FnOnce(&mut Blk)) -> u64 {
    // One request first, so the queue thread and its buffers exist in the baseline.
    assert_eq!(blk.read(0, 4096).0, OK);
    let before = rss_anon(child.id());
    work(blk);
    let after = rss_anon(child.id());
    eprintln!(
        "RssAnon {:.1} MiB -> {:.1} MiB",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64
    );
    after.saturating_sub(before)
}

#[test]
fn memory_stays_bounded_on_a_1_tib_qcow2() {
    let dir = TempDir::new().unwrap();
    let img = dir.as_path().join("big.qcow2");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    let path = img.display().to_string();
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &path, "1T"]);

    let (child, mut blk) = serve(&format!("--blk-file {path} --format qcow2"), &[]);
    assert_eq!(blk.capacity(), (1u64 << 40) / 512);
    let grew = growth(&child, &mut blk, |blk| {
        for i in 0..TOUCHED {
            assert_eq!(blk.write(sector(i), &block(i)), OK, "write {i}");
        }
        assert_eq!(blk.flush(), OK);
    });
    drop(blk);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{stderr}");
    assert!(
        grew < CACHE_BOUND + SLACK,
        "writing {TOUCHED} L2 tables grew RssAnon by {grew} bytes"
    );

    let (child, mut blk) = serve(
        &format!("--blk-file {path} --format qcow2 --read-only"),
        &[],
    );
    let grew = growth(&child, &mut blk, |blk| {
        for i in (0..TOUCHED).rev() {
            let (status, data) = blk.read(sector(i), 4096);
            assert_eq!(status, OK);
            assert!(data == block(i), "read {i}");
        }
    });
    drop(blk);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{stderr}");
    assert!(
        grew < CACHE_BOUND + SLACK,
        "reading {TOUCHED} L2 tables grew RssAnon by {grew} bytes"
    );
    let info = qemu_img_ok(&["check", &path]);
    assert!(info.contains("No errors were found"), "{info}");
}
