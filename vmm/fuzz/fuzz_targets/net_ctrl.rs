//! libFuzzer target: virtio-net control-queue chains and commands, served by the vmm's control queue.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-vmm.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_vmm::fuzz::fuzz_net_ctrl(data);
});
