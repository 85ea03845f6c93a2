//! What the qcow2 tests share: `bulkhead-blk` in a process of its own (a copy of the test
//! binary, every thread under its seccomp filter, enforce), a virtio-blk driver played
//! through vhost's real `Frontend`, and `qemu-img` as the judge of the images.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use crate::common::{self, guest_memory, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Frontend;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

pub use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};

/// `VIRTIO_BLK_S_OK` as the status byte.
pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
/// `VIRTIO_BLK_S_IOERR` as the status byte.
pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

/// Set in a copy of the test binary that runs `bulkhead-blk`: its arguments, by spaces.
pub const CHILD_ENV: &str = "BULKHEAD_QCOW2_TEST_CHILD";

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 64;
const HDR: u64 = 0x10000;
const STATUS: u64 = 0x18000;
const SEG: u64 = 0x19000;
const DATA: u64 = 0x20000;
/// Most bytes one request here moves.
pub const MAX_IO: usize = (MEM_SIZE as u64 - DATA) as usize;

/// The body of the child process (call from a `#[test] fn child_backend`).
pub fn child_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut args = vec![
        "bulkhead-blk".to_string(),
        "--landlock".into(),
        "off".into(),
        "--seccomp".into(),
        "enforce".into(),
    ];
    args.extend(spec.split(' ').map(str::to_string));
    std::process::exit(bulkhead_devices::block::main_with_args(args));
}

/// `bulkhead-blk` with `args` in a process of its own, inheriting `inherit` (their numbers
/// appear in `args`); stderr piped, RUST_LOG=info.
pub fn backend(args: &str, inherit: &[RawFd]) -> Child {
    common::child::spawn(CHILD_ENV, args, inherit)
}

/// `bulkhead-blk` serving a connected socket (one frontend; it exits when that goes),
/// with `args` and inheriting `inherit`; the driver connected to it.
pub fn serve(args: &str, inherit: &[RawFd]) -> (Child, Blk) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut all = vec![fd];
    all.extend_from_slice(inherit);
    let child = backend(&format!("--fd {fd} {args}"), &all);
    drop(theirs);
    (child, Blk::connect(ours))
}

/// Waits (at most 20 s) for `child`; its status and stderr.
pub fn finish(child: Child) -> (std::process::ExitStatus, String) {
    common::child::finish(child, Duration::from_secs(20))
}

/// The virtio-blk driver side: one queue, requests one at a time.
pub struct Blk {
    fe: Frontend,
    mem: Mem,
    _memfd: File,
    q: Ring,
}

impl Blk {
    fn connect(stream: UnixStream) -> Blk {
        let mut fe = Frontend::from_stream(stream, 1);
        let (mem, memfd) = guest_memory(MEM_SIZE);
        let want = (1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES_BIT | (1 << VIRTIO_BLK_F_FLUSH);
        let needed = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
        common::negotiate(&mut fe, &mem, &memfd, want, needed, |offered| {
            offered & (want | (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES))
        });
        let q = Ring::new(0, 0, QUEUE_SIZE);
        q.set_up(&mut fe, &mem);
        Blk {
            fe,
            mem,
            _memfd: memfd,
            q,
        }
    }

    /// The capacity in sectors the config space gives.
    pub fn capacity(&mut self) -> u64 {
        let cfg = common::config(&mut self.fe, 8);
        u64::from_le_bytes(cfg[0..8].try_into().unwrap())
    }

    fn header(&self, request_type: u32, sector: u64) {
        self.mem.write_obj(request_type, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn run(&mut self, parts: &[(u64, u32, bool)]) -> u8 {
        let head = self.q.add(&self.mem, parts);
        self.q.kick();
        let (id, _) = self.q.wait_one_used(&self.mem);
        assert_eq!(id, u32::from(head));
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Reads `len` bytes from `sector` (data in two descriptors when long enough).
    pub fn read(&mut self, sector: u64, len: usize) -> (u8, Vec<u8>) {
        assert!(len <= MAX_IO);
        self.header(VIRTIO_BLK_T_IN, sector);
        self.mem
            .write_slice(&vec![0x5au8; len], GuestAddress(DATA))
            .unwrap();
        let status = self.run(&split(DATA, len, true));
        let mut data = vec![0u8; len];
        self.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        (status, data)
    }

    /// Writes `data` at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        assert!(data.len() <= MAX_IO);
        self.header(VIRTIO_BLK_T_OUT, sector);
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.run(&split(DATA, data.len(), false))
    }

    /// FLUSH.
    pub fn flush(&mut self) -> u8 {
        self.header(VIRTIO_BLK_T_FLUSH, 0);
        self.run(&[(HDR, 16, false), (STATUS, 1, true)])
    }

    fn range(&mut self, request_type: u32, sector: u64, sectors: u32, flags: u32) -> u8 {
        self.header(request_type, 0);
        self.mem.write_obj(sector, GuestAddress(SEG)).unwrap();
        self.mem.write_obj(sectors, GuestAddress(SEG + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(SEG + 12)).unwrap();
        self.run(&[(HDR, 16, false), (SEG, 16, false), (STATUS, 1, true)])
    }

    /// DISCARD of `sectors` from `sector`.
    pub fn discard(&mut self, sector: u64, sectors: u32) -> u8 {
        self.range(VIRTIO_BLK_T_DISCARD, sector, sectors, 0)
    }

    /// WRITE_ZEROES of `sectors` from `sector`, with the unmap flag when `unmap`.
    pub fn write_zeroes(&mut self, sector: u64, sectors: u32, unmap: bool) -> u8 {
        self.range(VIRTIO_BLK_T_WRITE_ZEROES, sector, sectors, u32::from(unmap))
    }
}

/// The request's descriptors: header, data (split in two past 4 KiB, so requests span
/// descriptors), status.
fn split(at: u64, len: usize, write: bool) -> Vec<(u64, u32, bool)> {
    let mut parts = vec![(HDR, 16, false)];
    if len > 4096 {
        parts.push((at, 4096, write));
        parts.push((at + 4096, (len - 4096) as u32, write));
    } else if len > 0 {
        parts.push((at, len as u32, write));
    }
    parts.push((STATUS, 1, true));
    parts
}

/// `qemu-img` with `args`, or `None` (the test skips; under CI it fails) without it.
pub fn qemu_img(args: &[&str]) -> Option<Output> {
    match Command::new("qemu-img").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            common::skip::skip_or_fail(
                common::skip::SkipKind::MissingTool,
                &format!("qemu-img: {e} (package qemu-utils)"),
            );
            None
        }
    }
}

/// `qemu-img` that must succeed; its stdout.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args).expect("qemu-img was found a moment ago");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` finds no error and no leak.
pub fn assert_check_clean(path: &Path) {
    let out = qemu_img(&["check", &path.display().to_string()]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "qemu-img check: {:?}\n{text}",
        out.status
    );
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

/// `qemu-img compare` says the two images read the same (`a`'s format given, `b` raw).
pub fn assert_identical(a: &Path, a_format: &str, raw: &Path) {
    let out = qemu_img_ok(&[
        "compare",
        "-f",
        a_format,
        "-F",
        "raw",
        &a.display().to_string(),
        &raw.display().to_string(),
    ]);
    assert!(out.contains("Images are identical"), "{out}");
}
