//! libFuzzer target: virtio-mmio register accesses (any offset, width, value, in any order) on the transport with a fake device behind it.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-vmm.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_vmm::fuzz::fuzz_mmio(data);
});
