//! `net-identify`: prints the identify line of the NIC (MAC, link status, MTU, features
//! offered and accepted, queue sizes) and checks the MAC against `bulkhead.net.mac`.

use super::{identify, Error};
use crate::machine::Machine;
use crate::nics;
use crate::virtio::net::feature;
use crate::virtio::Transport;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let opts = machine.config.net;
    let mut registry = nics::lock();
    let nic = registry.nic(&machine.config.devices, &mut machine.frames, opts.nic)?;
    identify(nic, &opts);
    if let Some(expected) = opts.mac {
        let found = if nic.net.transport().offered() & feature::MAC != 0 {
            nic.net.config.mac
        } else {
            [0; 6]
        };
        if found != expected {
            return Err(Error::Mac { expected, found });
        }
    }
    Ok(())
}
