//! `bulkhead-firecracker`: Firecracker's command line, API and config file, starting VMs
//! through `bulkhead run` (see `jailer/src/firecracker/` and the README).

#[path = "../firecracker/mod.rs"]
mod firecracker;
// The launcher's own modules this binary shares (TAP names, MACs, untrusted text).
#[allow(dead_code)]
#[path = "../external_arg.rs"]
mod external_arg;
#[allow(dead_code)]
#[path = "../net_arg.rs"]
mod net_arg;
#[allow(dead_code)]
#[path = "../restart.rs"]
mod restart;
// The launcher's catching of SIGTERM, SIGINT and SIGHUP, for the orderly stop.
#[allow(dead_code)]
#[path = "../stop_signals.rs"]
mod stop_signals;
#[allow(dead_code)]
#[path = "../tap.rs"]
mod tap;
#[allow(dead_code)]
#[path = "../untrusted.rs"]
mod untrusted;

fn main() {
    std::process::exit(firecracker::main::main());
}
