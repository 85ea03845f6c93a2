//! `vsock-echo`: listen on port 5000 and write back every byte of every stream (up to
//! [`MAX_CONNS`] at once) until the host closes it. A stream whose peer shut down its
//! sending side gets, once everything is echoed, SHUTDOWN both ways, and ends with the
//! peer's RST (or ours after [`CLOSE_MS`]). Prints `vsock-echo listening port=5000
//! cid=<cid> streams=<wanted> ms=<ms>` (connect then), and at the end `vsock-echo
//! streams=<accepted> ended=<n> resets=<n> bytes=<n> max_concurrent=<n> dropped=<n>
//! overruns=<n> credit_updates=<n> ms=<ms>`; passes once `bulkhead.vsock-streams`
//! streams ended.

use super::{Error, ECHO_PORT};
use crate::machine::Machine;
use crate::time::{self, Deadline};
use crate::virtio::vsock::conn::State;
use crate::virtio::vsock::hdr::shutdown;
use crate::virtio::vsock::{Event, MAX_CONNS, MAX_PAYLOAD};
use crate::vsocks;

/// How long a stream we shut down may wait for the peer's RST.
pub const CLOSE_MS: u64 = 1000;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.vsock;
    let mut slot = vsocks::lock();
    let sock = vsocks::get(&mut slot, &machine.config.devices, &mut machine.frames)?;
    let v = &mut sock.vsock;
    v.listen(ECHO_PORT)?;
    crate::say!(
        "vsock-echo listening port={} cid={} streams={} ms={}",
        ECHO_PORT,
        v.guest_cid(),
        opts.streams,
        opts.ms
    );
    let start = time::now();
    let deadline = Deadline::after_ms(opts.ms);
    let mut closing_since = [0u64; MAX_CONNS];
    let (mut accepted, mut ended, mut resets, mut dropped) = (0u32, 0u32, 0u32, 0u32);
    let (mut live, mut max_live, mut bytes) = (0u32, 0u32, 0u64);
    let mut ours = [false; MAX_CONNS];
    let mut buf = [0u8; MAX_PAYLOAD];
    while ended < opts.streams && !deadline.passed() {
        let mut busy = false;
        while let Some(ev) = v.poll()? {
            busy = true;
            match ev {
                Event::Accepted(id) => {
                    accepted += 1;
                    live += 1;
                    max_live = max_live.max(live);
                    ours[id] = true;
                    closing_since[id] = 0;
                }
                Event::Closed(id) if ours[id] => {
                    ours[id] = false;
                    live = live.saturating_sub(1);
                    ended += 1;
                    if closing_since[id] == 0 {
                        resets += 1;
                    }
                }
                Event::TransportReset => {
                    resets += live;
                    ended += live;
                    live = 0;
                    ours = [false; MAX_CONNS];
                }
                Event::Dropped => dropped += 1,
                _ => {}
            }
        }
        for id in 0..MAX_CONNS {
            if !ours[id] {
                continue;
            }
            let Some(&c) = v.conn(id) else { continue };
            if c.state == State::Established {
                let n = v.peek(id, &mut buf);
                if n > 0 {
                    let m = v.send(id, &buf[..n])?;
                    v.consume(id, m)?;
                    bytes += m as u64;
                    busy |= m > 0;
                }
                let drained = v.conn(id).is_some_and(|c| c.pending() == 0);
                if c.peer_shutdown & shutdown::SEND != 0 && drained {
                    v.shutdown(id, shutdown::BOTH)?;
                    closing_since[id] = time::now().max(1);
                }
            } else if c.state == State::Closing
                && closing_since[id] != 0
                && time::now().wrapping_sub(closing_since[id]) > time::ms(CLOSE_MS)
            {
                v.reset(id)?;
                ours[id] = false;
                live = live.saturating_sub(1);
                ended += 1;
            }
        }
        if !busy {
            core::hint::spin_loop();
        }
    }
    let ms = time::cycles_to_us(time::now().wrapping_sub(start)) / 1000;
    let s = v.stats;
    crate::say!(
        "vsock-echo streams={} ended={} resets={} bytes={} max_concurrent={} dropped={} overruns={} credit_updates={} ms={}",
        accepted,
        ended,
        resets,
        bytes,
        max_live,
        dropped,
        s.overruns,
        s.credit_updates,
        ms
    );
    if ended < opts.streams {
        return Err(Error::TooFewStreams {
            ended,
            wanted: opts.streams,
        });
    }
    super::check_status(sock)
}
