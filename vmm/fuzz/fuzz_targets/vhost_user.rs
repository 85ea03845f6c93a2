//! libFuzzer target: the replies of a vhost-user backend (the input plays it) to the frontend's handshake, config, activation and reset requests.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-vmm.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_vmm::fuzz::fuzz_vhost_user(data);
});
