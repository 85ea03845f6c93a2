//! libFuzzer target: requests resubmitted from an inflight region a predecessor left (any header, entries, counters) on any ring, then the ring served, by the block device's queue worker.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-devices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_devices::fuzz::fuzz_resubmit(data);
});
