//! `vsock-connect`: connect to the host's port 6000, send `bulkhead.vsock-bytes` bytes of
//! the pattern, read them back and check them; `vsock-connect bytes=<n> ms=<ms>
//! mbps=<x.yyy MB/s each way> tsc=<source>`.

use super::{close, connect, round_trip, Error, HOST_PORT};
use crate::machine::Machine;
use crate::time;
use crate::vsocks;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.vsock;
    let mut slot = vsocks::lock();
    let sock = vsocks::get(&mut slot, &machine.config.devices, &mut machine.frames)?;
    let id = connect(sock, HOST_PORT)?;
    let port = sock.vsock.conn(id).map_or(0, |c| c.local_port);
    crate::say!(
        "vsock-connect connected cid={} port={} to 2:{}",
        sock.vsock.guest_cid(),
        port,
        HOST_PORT
    );
    let cycles = round_trip(sock, id, opts.bytes, opts.ms)?;
    close(sock, id)?;
    let us = time::cycles_to_us(cycles).max(1);
    // Bytes went out and came back: MB/s (10^6 bytes) of each direction, 3 decimals.
    let milli_mbps = opts.bytes * 1000 / us;
    crate::say!(
        "vsock-connect bytes={} ms={} mbps={}.{:03} tsc={}",
        opts.bytes,
        us / 1000,
        milli_mbps / 1000,
        milli_mbps % 1000,
        time::tsc_source()
    );
    super::check_status(sock)
}
