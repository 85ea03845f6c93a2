//! libFuzzer target: guest packets and host peers against the vsock connection table.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_vsock(data);
});
