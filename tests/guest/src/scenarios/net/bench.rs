//! `net-bench`: UDP throughput through the NIC, polling with interrupts suppressed.
//!
//! Transmit, for payloads of [`SIZES`] bytes in turn: resolves the peer by ARP, then for
//! `bulkhead.net.bench-ms` queues datagrams to `peer:bulkhead.net.port` as fast as the
//! transmit ring takes them (one kick per batch at most), and prints
//! `net-bench tx size=<n> packets=<n> pps=<n> gbps=<x.yyy> ms=<n> tsc=<cpuid|assumed> kicks=<n>`
//! (packets the device consumed; `ms` from the first frame queued until the last one came
//! back; Gbit/s of UDP payload).
//!
//! Receive, for the same sizes: prints `net-bench rx ready size=<n> port=<p> ms=<n>`, then
//! for `bulkhead.net.bench-ms` counts the UDP datagrams to our address and
//! `bulkhead.net.port` (answering ARP and ping meanwhile) and prints
//! `net-bench rx size=<n> packets=<n> pps=<n> gbps=<x.yyy> ms=<n> other_size=<n> dropped=<n>`:
//! `packets` are those of `size` payload bytes, `other_size` those of another size, `ms`
//! from the first datagram counted to the last (0 if none), rates over that span.

use super::{drain_tx, iface, rates, Error, Stack};
use crate::machine::Machine;
use crate::net::{self, Route};
use crate::nics::{self, Nic};
use crate::time::{self, Deadline};

/// Payload sizes measured.
pub const SIZES: [u16; 2] = [64, 1400];

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
    for size in SIZES {
        tx(nic, &mut stack, &route, size, opts.port, opts.bench_ms)?;
    }
    for size in SIZES {
        rx(nic, &mut stack, size, opts.port, opts.bench_ms)?;
    }
    Ok(())
}

fn tx(
    nic: &mut Nic,
    stack: &mut Stack,
    route: &Route,
    size: u16,
    port: u16,
    ms: u64,
) -> Result<(), Error> {
    let kicks = nic.net.kicks;
    let mut queued = 0u64;
    let start = time::now();
    let deadline = Deadline::after_ms(ms);
    while !deadline.passed() {
        let mut batch = 0;
        while batch < 64 {
            let id = stack.ip_id;
            let ok = nic.net.send(|buf| {
                net::build_udp(
                    buf,
                    route,
                    port,
                    port,
                    usize::from(size),
                    id,
                    net::fill_pattern,
                )
                .unwrap_or(0)
            })?;
            if !ok {
                break;
            }
            stack.ip_id = id.wrapping_add(1);
            batch += 1;
        }
        queued += batch;
        nic.net.kick_tx();
        if batch == 0 {
            nic.net.tx.reclaim()?;
        }
        // Answer ARP and the like, drop the rest, so the receive ring never fills up.
        stack.poll(nic, |_, _| {})?;
    }
    drain_tx(nic)?;
    let cycles = time::now() - start;
    if queued == 0 {
        return Err(Error::NothingSent);
    }
    let (pps, g, milli) = rates(queued, u64::from(size), cycles);
    crate::say!(
        "net-bench tx size={size} packets={queued} pps={pps} gbps={g}.{milli:03} ms={} tsc={} kicks={}",
        time::cycles_to_us(cycles) / 1000,
        time::tsc_source(),
        nic.net.kicks - kicks
    );
    Ok(())
}

fn rx(nic: &mut Nic, stack: &mut Stack, size: u16, port: u16, ms: u64) -> Result<(), Error> {
    crate::say!("net-bench rx ready size={size} port={port} ms={ms}");
    let (mut packets, mut other) = (0u64, 0u64);
    let (mut first, mut last) = (0u64, 0u64);
    let dropped = stack.counters.dropped;
    let deadline = Deadline::after_ms(ms);
    while !deadline.passed() {
        stack.poll(nic, |dport, payload| {
            if dport != port {
                return;
            }
            if payload.len() == usize::from(size) {
                let now = time::now();
                if packets == 0 {
                    first = now;
                }
                last = now;
                packets += 1;
            } else {
                other += 1;
            }
        })?;
    }
    let cycles = last - first;
    let (pps, g, milli) = if packets > 1 {
        rates(packets - 1, u64::from(size), cycles)
    } else {
        (0, 0, 0)
    };
    crate::say!(
        "net-bench rx size={size} packets={packets} pps={pps} gbps={g}.{milli:03} ms={} other_size={other} dropped={} tsc={}",
        time::cycles_to_us(cycles) / 1000,
        stack.counters.dropped - dropped,
        time::tsc_source()
    );
    Ok(())
}
