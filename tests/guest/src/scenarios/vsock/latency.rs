//! `vsock-latency`: `bulkhead.vsock-rounds` round trips of 64 bytes with the host's echo
//! on port 6000; `vsock-latency rounds=<n> size=64 avg_us=<x> min_us=<x> max_us=<x>`.

use super::{close, connect, round_trip, Error, HOST_PORT, PING};
use crate::machine::Machine;
use crate::time;
use crate::vsocks;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.vsock;
    let mut slot = vsocks::lock();
    let sock = vsocks::get(&mut slot, &machine.config.devices, &mut machine.frames)?;
    let id = connect(sock, HOST_PORT)?;
    let (mut total, mut min, mut max) = (0u64, u64::MAX, 0u64);
    for _ in 0..opts.rounds {
        // Each round sends the pattern from 0 again: the stream restarts the count.
        let c = round_trip(sock, id, PING as u64, opts.ms)?;
        total += c;
        min = min.min(c);
        max = max.max(c);
    }
    close(sock, id)?;
    crate::say!(
        "vsock-latency rounds={} size={} avg_us={} min_us={} max_us={} tsc={}",
        opts.rounds,
        PING,
        time::cycles_to_us(total / u64::from(opts.rounds)),
        time::cycles_to_us(min),
        time::cycles_to_us(max),
        time::tsc_source()
    );
    Ok(())
}
