//! libFuzzer target: console transmitq chains, or a byte stream into receiveq chains.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_console(data);
});
