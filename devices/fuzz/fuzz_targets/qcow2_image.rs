//! libFuzzer target: a whole qcow2 file (seed it with small images from `qemu-img create`
//! and `qemu-io` writes, see README.md), opened writable through `Qcow2Image` with every
//! check bulkhead-blk makes, then read across, zeroed, discarded and flushed. Crashes
//! (panics, stack overflows, out-of-memory, timeouts) are bugs in bulkhead-devices or in
//! what it lets reach imago.
#![no_main]

use std::io::Write;

use bulkhead_devices::image::format::ImageFormat;
use bulkhead_devices::image::qcow2::{Layer, Qcow2Image, Qcow2Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 1 << 20 {
        return;
    }
    // A memory-backed file, unlinked at once.
    let path = format!("/dev/shm/bulkhead-fuzz-qcow2-{}", std::process::id());
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
    else {
        return;
    };
    let _ = std::fs::remove_file(&path);
    if file.write_all(data).is_err() {
        return;
    }
    let layer = Layer {
        name: "fuzz".into(),
        file,
        format: ImageFormat::Qcow2,
    };
    let options = Qcow2Options {
        read_only: false,
        logical_block_size: 512,
    };
    let Ok(image) = Qcow2Image::open(vec![layer], options) else {
        return;
    };
    let size = image.size().min(2 << 20);
    let mut buf = vec![0u8; 4096];
    let mut offset = 0;
    while offset < size {
        let n = 4096.min(size - offset) as usize;
        let _ = image.read_at(&mut buf[..n], offset);
        offset += 8192;
    }
    let _ = image.write_zeroes(0, 4096.min(size), false);
    let _ = image.write_zeroes(4096.min(size), 4096.min(size.saturating_sub(4096)), true);
    let _ = image.discard(0, 512.min(size));
    let _ = image.flush();
});
