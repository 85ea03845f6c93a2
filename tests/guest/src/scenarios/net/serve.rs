//! `net-serve`: until a UDP datagram to our address and [`STOP_PORT`] comes (the host says
//! it is done), for at most `bulkhead.net.serve-ms` (default 10000), answers ARP requests
//! and ICMP echo requests for our address and echoes every UDP datagram to our address and
//! `bulkhead.net.echo-port` (default 7) back to its sender (ports swapped). Prints
//! `net<N> serving ip=<ip> prefix=<n> mac=<mac> echo_port=<port> ms=<ms>` once its receive buffers are posted (a host
//! test starts pinging then) and
//! `net<N> served arp=<n> icmp=<n> udp=<n> dropped=<n> ignored=<n> ended=<stop|time>` at
//! the end. A host test thus serves as long as it needs, not in a window it may miss.

use super::{iface, Error, Stack};
use crate::machine::Machine;
use crate::net::{IpFmt, MacFmt};
use crate::nics;
use crate::time::Deadline;

/// A datagram to this UDP port (discard) ends serving.
pub const STOP_PORT: u16 = 9;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.net;
    let mut registry = nics::lock();
    let nic = registry.nic(&machine.config.devices, &mut machine.frames, opts.nic)?;
    let mut stack = Stack::new(iface(nic, &opts), Some(opts.echo_port));
    crate::say!(
        "net{} serving ip={} prefix={} mac={} echo_port={} ms={}",
        nic.index,
        IpFmt(stack.iface.ip),
        stack.iface.prefix,
        MacFmt(stack.iface.mac),
        opts.echo_port,
        opts.serve_ms
    );
    let deadline = Deadline::after_ms(opts.serve_ms);
    let (mut others, mut stopped) = (0u64, false);
    while !stopped && !deadline.passed() {
        let taken = stack.poll(nic, |port, _| {
            if port == STOP_PORT {
                stopped = true;
            } else {
                others += 1;
            }
        })?;
        if taken == 0 {
            core::hint::spin_loop();
        }
    }
    let c = stack.counters;
    crate::say!(
        "net{} served arp={} icmp={} udp={} dropped={} ignored={} ended={}",
        nic.index,
        c.arp,
        c.icmp,
        c.udp,
        c.dropped,
        c.ignored + others,
        if stopped { "stop" } else { "time" }
    );
    Ok(())
}
