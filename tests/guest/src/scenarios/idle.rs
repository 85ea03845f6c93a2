//! `idle`: halt until the host asks the guest to stop with Ctrl+Alt+Del on the i8042
//! keyboard controller (Firecracker's SendCtrlAltDel), then reset through the controller
//! (0xfe to port 0x64), as Linux does, so that the VM stops.
//!
//! IOAPIC pin 1 (the keyboard's IRQ) is routed to the virtio vector (which counts and
//! EOIs), a periodic LAPIC timer bounds each `hlt` to [`POLL_MS`], and after every wake-up
//! the controller's status (port 0x64, bit 0 = output buffer full) says whether to read a
//! byte from port 0x60 for the recogniser (`bulkhead_guest::kbd`). A VMM without an i8042
//! (status 0xff) is only polled. Prints `idle: waiting for ctrl-alt-del ms=<ms|forever>`,
//! at the end `idle: keyboard bytes=<read from 0x60> irqs=<interrupts on the vector>
//! routed=<IOAPIC pin 1 routed>`, then `idle: ctrl-alt-del, resetting through the i8042`
//! before the reset; with
//! `bulkhead.idle-ms` and no Ctrl+Alt+Del it passes after that time.

use super::vsock::Error;
use crate::gates::{self, VIRTIO_IRQS};
use crate::idt::vector;
use crate::machine::Machine;
use crate::time::Deadline;
use crate::{ioapic, lapic};
use bulkhead_guest::kbd::CtrlAltDel;
use core::sync::atomic::Ordering;

/// Longest sleep between two looks at the controller.
pub const POLL_MS: u64 = 100;
/// i8042 data port.
const DATA: u16 = 0x60;
/// i8042 status (read) and command (write) port.
const STATUS: u16 = 0x64;
/// Status: output buffer full.
const OUT_FULL: u8 = 1;
/// Command: pulse the CPU reset line.
const RESET: u8 = 0xfe;
/// The keyboard's ISA IRQ.
const KBD_PIN: u32 = 1;

/// Read what the controller holds; true on Ctrl+Alt+Del. Counts the bytes read.
fn drain(kbd: &mut CtrlAltDel, bytes: &mut u32) -> bool {
    // At most the controller's buffer per wake-up (Firecracker's holds 16 bytes).
    for _ in 0..16 {
        let status = gates::inb(STATUS);
        if status == 0xff || status & OUT_FULL == 0 {
            return false;
        }
        *bytes += 1;
        if kbd.feed(gates::inb(DATA)) {
            return true;
        }
    }
    false
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let ms = machine.config.idle_ms;
    let deadline = (ms > 0).then(|| Deadline::after_ms(ms));
    match deadline {
        Some(_) => crate::say!("idle: waiting for ctrl-alt-del ms={ms}"),
        None => crate::say!("idle: waiting for ctrl-alt-del ms=forever"),
    }
    let routed = ioapic::route(KBD_PIN, vector::VIRTIO, lapic::id()).is_ok();
    // KVM's LAPIC timer counts nanoseconds with divide-by-1.
    lapic::start_wake_timer((POLL_MS * 1_000_000) as u32);
    gates::interrupts_on();
    let mut kbd = CtrlAltDel::new();
    let irqs_before = VIRTIO_IRQS.load(Ordering::SeqCst);
    let mut bytes = 0u32;
    let hit = loop {
        let seen = VIRTIO_IRQS.load(Ordering::SeqCst);
        if drain(&mut kbd, &mut bytes) {
            break true;
        }
        if deadline.is_some_and(|d| d.passed()) {
            break false;
        }
        gates::wait_while_equal(&VIRTIO_IRQS, seen);
    };
    gates::interrupts_off();
    lapic::stop_wake_timer();
    if routed {
        let _ = ioapic::mask(KBD_PIN);
    }
    let irqs = VIRTIO_IRQS.load(Ordering::SeqCst).wrapping_sub(irqs_before);
    crate::say!("idle: keyboard bytes={bytes} irqs={irqs} routed={routed}");
    if !hit {
        return Ok(());
    }
    crate::say!("idle: ctrl-alt-del, resetting through the i8042");
    gates::outb(STATUS, RESET);
    let grace = Deadline::after_ms(1000);
    while !grace.passed() {
        core::hint::spin_loop();
    }
    Err(Error::ResetIgnored)
}
