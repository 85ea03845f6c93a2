//! `vsock-probe`: the vsock device's line, and a sane guest CID.

use super::Error;
use crate::machine::Machine;
use crate::pcibus::Place;
use crate::virtio::Transport;
use crate::vsocks;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let devices = machine.config.devices;
    if vsocks::find(&devices).0.is_none() {
        return Ok(());
    }
    let mut slot = vsocks::lock();
    let sock = vsocks::get(&mut slot, &devices, &mut machine.frames)?;
    let v = &sock.vsock;
    let (rxq, txq, evq) = v.queue_sizes();
    let transport = match sock.place {
        Place::Mmio(_) => "mmio",
        Place::Pci(_) => "pci",
    };
    crate::say!(
        "vsock0 transport={} guest_cid={} features={:#x} accepted={:#x} rx_queue={} tx_queue={} event_queue={} base={:#x} irq={}",
        transport,
        v.guest_cid(),
        v.transport().offered(),
        v.transport().accepted(),
        rxq,
        txq,
        evq,
        sock.place.base(),
        sock.place.irq()
    );
    let cid = v.guest_cid();
    if !(3..u64::from(u32::MAX)).contains(&cid) {
        return Err(Error::BadCid(cid));
    }
    super::check_status(sock)
}
