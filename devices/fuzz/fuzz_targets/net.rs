//! libFuzzer target: net TX chains into a socketpair standing in for the TAP, or TAP frames into RX chains.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_net(data);
});
