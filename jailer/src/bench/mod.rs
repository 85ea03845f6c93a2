//! `bulkhead bench`: benchmarks that print figures beside a baseline measured in the same
//! run (never timed assertions): `boot` (start-up time, memory overhead), `blk` (guest
//! block I/O through bulkhead-blk, through qemu-storage-daemon, and the host's own I/O),
//! `net` (UDP throughput beside a veth pair) and `confine` (what confinement costs).

mod blk;
mod boot;
mod confine;
mod host_io;
mod net;
mod qsd;

use crate::cli::{BenchArgs, BenchWhat};

/// Runs the chosen benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    match args.what {
        BenchWhat::Boot(a) => boot::main(a),
        BenchWhat::Blk(a) => blk::main(a),
        BenchWhat::Net(a) => net::main(a),
        BenchWhat::Confine(a) => confine::main(a),
    }
}

/// The exit status of a benchmark that ended with `result`, saying why it failed.
fn exit_status(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bulkhead bench: {e}");
            crate::run::EXIT_BULKHEAD_FAILED
        }
    }
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
