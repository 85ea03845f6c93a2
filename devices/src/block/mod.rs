//! The vhost-user-blk backend (being written).

/// Runs `bulkhead-blk`; returns the process exit status.
pub fn main() -> i32 {
    eprintln!("bulkhead-blk: not implemented yet");
    1
}
