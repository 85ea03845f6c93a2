//! `net-send`: resolves the peer (`bulkhead.net.peer`) by ARP, sends it one UDP datagram
//! of each size of `bulkhead.net.sizes` (default 64,512,1472) from and to port
//! `bulkhead.net.port` (default 5555), waits until the device has consumed them, and
//! prints `net<N> sent udp=<n> peer=<ip> peer_mac=<mac>`.
//!
//! The payload pattern (`crate::net::pattern_byte`): byte `i` of a datagram of `n` bytes
//! is `(i * 7 + n) as u8`.

use super::{drain_tx, iface, Error, Stack};
use crate::machine::Machine;
use crate::net::{self, IpFmt, MacFmt, Route};
use crate::nics;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.net;
    let mut registry = nics::lock();
    let nic = registry.nic(&machine.config.devices, &mut machine.frames, opts.nic)?;
    let mut stack = Stack::new(iface(nic, &opts), None);
    let peer_mac = stack.resolve(nic)?;
    let route = Route {
        src_mac: stack.iface.mac,
        dst_mac: peer_mac,
        src: stack.iface.ip,
        dst: stack.iface.peer,
    };
    let mut sent = 0;
    for &size in opts.sizes() {
        let id = stack.ip_id;
        stack.ip_id = id.wrapping_add(1);
        let queued = nic.net.send(|buf| {
            net::build_udp(
                buf,
                &route,
                opts.port,
                opts.port,
                usize::from(size),
                id,
                net::fill_pattern,
            )
            .unwrap_or(0)
        })?;
        if !queued {
            return Err(Error::NothingSent);
        }
        sent += 1;
        nic.net.kick_tx();
    }
    drain_tx(nic)?;
    crate::say!(
        "net{} sent udp={sent} peer={} peer_mac={}",
        nic.index,
        IpFmt(route.dst),
        MacFmt(peer_mac)
    );
    Ok(())
}
