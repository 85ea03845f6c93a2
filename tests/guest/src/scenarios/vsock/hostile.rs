//! `vsock-hostile`: malformed packets to the device (a buffer shorter than a header, an
//! empty one, `len` beyond the buffer, unknown ops and types, wrong source and destination
//! CIDs, RW / SHUTDOWN / CREDIT_UPDATE for connections that do not exist, and on a real
//! connection to the host's port 6000 RW packets far beyond the host's credit), then a
//! normal connection to port 6000 must carry 64 KiB there and back, and the device status
//! must be clean. Prints `vsock-hostile sent=<n> answers=<packets received> overrun_bytes=<n>
//! overrun_ended=<reset|open>` and `vsock-hostile then connected and echoed <n> bytes`.

use super::{close, connect, round_trip, Error, HOST_PORT};
use crate::machine::Machine;
use crate::time::Deadline;
use crate::virtio::vsock::hdr::{op, Hdr, HDR_LEN, HOST_CID, TYPE_STREAM};
use crate::virtio::vsock::{Event, BUF_ALLOC, MAX_PAYLOAD, TX_BUF};
use crate::vsocks;

/// Bytes of the final, normal connection.
pub const CHECK_BYTES: u64 = 64 * 1024;

fn send(v: &mut crate::virtio::vsock::Vsock<crate::disks::Dev>, b: &[u8]) -> Result<(), Error> {
    let deadline = Deadline::after_ms(2000);
    while !v.send_raw(b)? {
        let _ = v.poll()?;
        if deadline.passed() {
            return Err(Error::Timeout("a free vsock transmit buffer", 2000));
        }
    }
    Ok(())
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.vsock;
    let mut slot = vsocks::lock();
    let sock = vsocks::get(&mut slot, &machine.config.devices, &mut machine.frames)?;
    let cid = sock.vsock.guest_cid();
    let base = Hdr {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port: 777,
        dst_port: HOST_PORT,
        len: 0,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    };
    let mut sent = 0u32;
    let mut pkt = [0u8; TX_BUF as usize];
    {
        let v = &mut sock.vsock;
        // Shorter than a header, and empty.
        send(v, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])?;
        send(v, &[])?;
        sent += 2;
        let mut variants: [Hdr; 11] = [base; 11];
        variants[0].len = 60_000; // beyond the 16 bytes that follow
        variants[0].op = op::RW;
        variants[1].len = u32::MAX;
        variants[1].op = op::RW;
        variants[2].op = 99; // unknown op
        variants[3].type_ = 7; // unknown type
        variants[4].type_ = 2; // seqpacket, not negotiated
        variants[5].src_cid = 999; // not our CID
        variants[6].src_cid = u64::MAX;
        variants[7].dst_cid = 12345; // nobody
        variants[8].dst_cid = cid; // ourselves
        variants[9].op = op::RW; // no such connection
        variants[9].len = 16;
        variants[10].op = op::CREDIT_UPDATE;
        variants[10].buf_alloc = u32::MAX;
        for h in variants {
            h.write(&mut pkt);
            send(v, &pkt[..HDR_LEN + 16])?;
            sent += 1;
        }
        for o in [op::SHUTDOWN, op::RST, op::RESPONSE, op::CREDIT_REQUEST] {
            Hdr { op: o, ..base }.write(&mut pkt);
            send(v, &pkt[..HDR_LEN])?;
            sent += 1;
        }
    }
    // Credit overrun on a real connection: far more than the host's window, at once.
    let id = connect(sock, HOST_PORT)?;
    let (mut overrun, mut ended) = (0u64, "open");
    {
        let v = &mut sock.vsock;
        let window = v.conn(id).map_or(0, |c| c.peer_buf_alloc);
        let target = u64::from(window) + 256 * 1024;
        while overrun < target {
            let Some(h) = v.raw_header(id, op::RW, MAX_PAYLOAD as u32) else {
                ended = "reset";
                break;
            };
            h.write(&mut pkt);
            pkt[HDR_LEN..].fill(0x5a);
            send(v, &pkt)?;
            sent += 1;
            overrun += MAX_PAYLOAD as u64;
            // Throw away whatever the host echoes, so our own window never blocks it.
            while let Some(ev) = v.poll()? {
                if ev == Event::Closed(id) {
                    ended = "reset";
                }
            }
            let mut sink = [0u8; MAX_PAYLOAD];
            while v.recv(id, &mut sink)? > 0 {}
            if ended == "reset" {
                break;
            }
        }
        // Let the device answer what it will.
        let settle = Deadline::after_ms(300);
        while !settle.passed() {
            if let Some(Event::Closed(c)) = v.poll()? {
                if c == id {
                    ended = "reset";
                }
            }
            let mut sink = [0u8; MAX_PAYLOAD];
            while v.recv(id, &mut sink)? > 0 {}
        }
        if ended == "open" {
            v.reset(id)?;
        }
        let s = v.stats;
        crate::say!(
            "vsock-hostile sent={} answers={} overrun_bytes={} overrun_ended={}",
            sent,
            s.rx_packets,
            overrun,
            ended
        );
    }
    super::check_status(sock)?;
    // A normal connection still works.
    let id = connect(sock, HOST_PORT)?;
    round_trip(sock, id, CHECK_BYTES, opts.ms)?;
    close(sock, id)?;
    crate::say!("vsock-hostile then connected and echoed {CHECK_BYTES} bytes");
    super::check_status(sock)
}
