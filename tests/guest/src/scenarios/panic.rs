//! `panic`: a Rust panic, to test the panic report (exit status 3).

use super::Failure;

/// Panic.
pub fn run() -> Result<(), Failure> {
    panic!("deliberate panic (scenario \"panic\")");
}
