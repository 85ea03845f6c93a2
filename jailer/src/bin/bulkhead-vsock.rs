//! `bulkhead-vsock`: the vhost-user-vsock backend (code in `bulkhead_devices::vsock`).

fn main() {
    std::process::exit(bulkhead_devices::vsock::main());
}
