//! What the qcow2 path costs per request, without a guest or a socket: 4 KiB reads at
//! random 4 KiB-aligned offsets of a 256 MiB image, fully allocated, in the page cache,
//! into guest memory, through the raw `Disk` (preadv) and through `Qcow2Image` (imago),
//! alternating rounds so the machine's load weighs on both alike. Prints medians; asserts
//! nothing about time (ignored by default: `cargo test -p bulkhead-devices --test
//! qcow2_speed -- --ignored --nocapture`).

mod common;
mod qcow2_support;

use std::time::Instant;

use bulkhead_devices::block::{Disk, DiskOptions};
use bulkhead_devices::image::qcow2::{Layer, Qcow2Image, Qcow2Options};
use bulkhead_devices::image::ImageFormat;
use qcow2_support::{qemu_img, qemu_img_ok};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::tempdir::TempDir;

const SIZE: u64 = 256 << 20;
const READS: u64 = 50_000;
const ROUNDS: usize = 7;

fn offsets() -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..READS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (SIZE / 4096)) * 4096
        })
        .collect()
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn qcow2_read_cost_beside_raw() {
    let dir = TempDir::new().unwrap();
    let raw = dir.as_path().join("r.raw");
    let qcow2 = dir.as_path().join("q.qcow2");
    if qemu_img(&["--version"]).is_none() {
        return;
    }
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 / 4093) as u8 | 1).collect();
    std::fs::write(&raw, &data).unwrap();
    qemu_img_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &raw.display().to_string(),
        &qcow2.display().to_string(),
    ]);
    let options = DiskOptions {
        read_only: true,
        direct: false,
        logical_block_size: 512,
    };
    let disk = Disk::open(&raw, options).unwrap();
    let q = Qcow2Image::open(
        vec![Layer {
            name: qcow2.display().to_string(),
            file: std::fs::File::open(&qcow2).unwrap(),
            format: ImageFormat::Qcow2,
        }],
        Qcow2Options {
            read_only: true,
            logical_block_size: 512,
        },
    )
    .unwrap();
    let (mem, _memfd) = common::guest_memory(1 << 20);
    let offsets = offsets();
    let mut raw_ns = Vec::new();
    let mut q_ns = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for &o in &offsets {
            let slice = mem.get_slice(GuestAddress(0), 4096).unwrap();
            let guard = slice.ptr_guard_mut();
            let mut iov = [libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: 4096,
            }];
            // SAFETY: the iovec is 4 KiB of guest memory this test maps and nothing aliases.
            unsafe { disk.read_exact_vectored_at(&mut iov, o).unwrap() };
        }
        raw_ns.push(t.elapsed().as_nanos() as f64 / READS as f64);
        let t = Instant::now();
        for &o in &offsets {
            let slice = mem.get_slice(GuestAddress(0), 4096).unwrap();
            q.read(&[slice], o).unwrap();
        }
        q_ns.push(t.elapsed().as_nanos() as f64 / READS as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (r, rmin, rmax) = median(&mut raw_ns);
    let (qm, qmin, qmax) = median(&mut q_ns);
    eprintln!(
        "4 KiB random reads, {READS} per round, {ROUNDS} rounds: raw {r:.0} ns (min {rmin:.0}, \
         max {rmax:.0}), qcow2 {qm:.0} ns (min {qmin:.0}, max {qmax:.0}); qcow2 costs \
         {:.0} ns more per read, raw/qcow2 throughput {:.2}x",
        qm - r,
        r / qm
    );
}
