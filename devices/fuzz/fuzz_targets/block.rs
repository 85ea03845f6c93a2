//! libFuzzer target: block request chains (any descriptors, rings, headers) through the block device's queue worker on a memfd image.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_block(data);
});
