//! Fuzzing entry points for what a guest feeds the device backends: block request chains,
//! block requests resubmitted from an inflight region (which a predecessor process left),
//! net TX chains and RX frames, console transmit and receive chains, vsock packets and
//! host peers against the vsock connection table, and vsock's own transmit and receive
//! queue code.
//!
//! Each `fuzz_*` function takes arbitrary bytes, builds a split virtqueue from them in a
//! fresh guest memory ([`ring`]), runs the device's own queue code on it and checks what
//! the device reported in the used ring. The libFuzzer targets in `devices/fuzz/` and the
//! bounded stable runs in `cargo test` (the `tests` modules here) call the same functions.
//! Compiled for tests and with the `fuzzing` feature only; never part of a backend binary.

pub mod block;
pub mod console;
pub mod input;
pub mod net;
pub mod resubmit;
pub mod ring;
pub mod stable;
pub mod vsock;
pub mod vsock_queues;

pub use block::fuzz_block;
pub use console::fuzz_console;
pub use net::fuzz_net;
pub use resubmit::fuzz_resubmit;
pub use vsock::fuzz_vsock;
pub use vsock_queues::fuzz_vsock_queues;
