//! libFuzzer target: arbitrary bytes as a control-socket stream, through every decoder.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_protocol::fuzz::fuzz_decode(data);
});
