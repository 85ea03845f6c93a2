//! libFuzzer target: vsock transmit chains drained into packets, or packets filled into
//! receive buffers. Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_vsock_queues(data);
});
