//! `bulkhead-console`: the vhost-user-console backend (code in `bulkhead_devices::console`).

fn main() {
    std::process::exit(bulkhead_devices::console::main());
}
