//! `bulkhead-net`: the vhost-user-net backend (code in `bulkhead_devices::net`).

fn main() {
    std::process::exit(bulkhead_devices::net::main());
}
