//! `net-macswap`: for a backend that sends every frame back with its MAC addresses swapped
//! (`dpdk-testpmd --forward-mode=macswap`), sends `FRAMES` sequenced frames to a made-up
//! MAC (`PEER`), sizes cycling through `bulkhead.net.sizes`, at most `WINDOW` in flight,
//! and checks that each comes back exactly once, intact, with the addresses swapped. Prints
//! `net<N> macswap sent=S returned=R avg-rtt-us=A max-rtt-us=M`.
//!
//! The frames: `bulkhead_guest::macswap`.

use super::{iface, Error};
use crate::machine::Machine;
use crate::nics;
use crate::time;
use bulkhead_guest::macswap::{
    build, check, payload_len, Mismatch, FRAMES, RETURN_TIMEOUT_MS, WINDOW,
};

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.net;
    let mut registry = nics::lock();
    let nic = registry.nic(&machine.config.devices, &mut machine.frames, opts.nic)?;
    let ours = iface(nic, &opts).mac;
    // Send time of each frame in flight (0: not sent or back).
    let mut sent_at = [0u64; FRAMES as usize];
    let mut back = [false; FRAMES as usize];
    let (mut sent, mut returned, mut rtt_sum, mut rtt_max) = (0u32, 0u32, 0u64, 0u64);
    let mut failure = None;
    while returned < FRAMES && failure.is_none() {
        while sent < FRAMES && sent - returned < WINDOW {
            let len = payload_len(opts.sizes(), sent);
            let queued = nic.net.send(|buf| build(buf, ours, sent, len))?;
            if !queued {
                break;
            }
            sent_at[sent as usize] = time::now();
            sent += 1;
        }
        nic.net.kick_tx();
        nic.net.tx.reclaim()?;
        let mut took = false;
        while let Some(rx) = nic.net.poll_rx()? {
            took = true;
            let result = match &rx {
                Ok(frame) => check(nic.net.frame(frame), ours),
                Err(_) => Err(Mismatch::Unexpected("over several buffers or malformed")),
            };
            if let Ok(frame) = rx {
                nic.net.recycle(frame)?;
            }
            match result {
                Ok(seq) if seq >= sent => {
                    failure = Some(Mismatch::Unexpected("a sequence number never sent"));
                }
                Ok(seq) if back[seq as usize] => failure = Some(Mismatch::Duplicate(seq)),
                Ok(seq) => {
                    back[seq as usize] = true;
                    returned += 1;
                    let rtt = time::cycles_to_us(time::now().saturating_sub(sent_at[seq as usize]));
                    rtt_sum += rtt;
                    rtt_max = rtt_max.max(rtt);
                }
                Err(e) => failure = Some(e),
            }
            if failure.is_some() {
                break;
            }
        }
        if took {
            nic.net.kick_rx();
        }
        // The oldest frame still out decides the timeout.
        if let Some(seq) = (0..sent).find(|&s| !back[s as usize]) {
            let oldest = sent_at[seq as usize];
            if time::now().saturating_sub(oldest) > time::ms(RETURN_TIMEOUT_MS) {
                failure = Some(Mismatch::Lost(seq));
            }
        }
        core::hint::spin_loop();
    }
    crate::say!(
        "net{} macswap sent={sent} returned={returned} avg-rtt-us={} max-rtt-us={rtt_max}",
        nic.index,
        rtt_sum / u64::from(returned.max(1))
    );
    match failure {
        Some(m) => Err(Error::Macswap(m)),
        None => Ok(()),
    }
}
