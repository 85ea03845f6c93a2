//! `bulkhead-blk`: the vhost-user-blk backend (code in `bulkhead_devices::block`).

fn main() {
    std::process::exit(bulkhead_devices::block::main());
}
