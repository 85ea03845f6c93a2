//! `net-probe` (part of the default self-test): sets up every virtio-net device (up to
//! four) and prints their identify lines. Sends nothing. Passes when there are none. (The
//! virtio console has its own probe: `console-probe`.)

use super::{identify, Error};
use crate::machine::Machine;
use crate::nics::{self, MAX_NICS};
use crate::virtio::device_id;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let devices = machine.config.devices;
    let mut registry = nics::lock();
    let count = nics::count(&devices, device_id::NET).min(MAX_NICS);
    for n in 0..count {
        let nic = registry.nic(&devices, &mut machine.frames, n)?;
        identify(nic, &machine.config.net);
    }
    Ok(())
}
