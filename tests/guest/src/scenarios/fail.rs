//! `fail`: always fails, so that tests can check the failure path (exit status 1).

use super::Failure;

/// Fail.
pub fn run() -> Result<(), Failure> {
    Err(Failure::Fail)
}
