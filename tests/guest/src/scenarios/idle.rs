//! `idle`: halt until the host asks the guest to stop with Ctrl+Alt+Del on the i8042
//! keyboard controller (Firecracker's SendCtrlAltDel), then reset through the controller
//! (0xfe to port 0x64), as Linux does, so that the VM stops.
//!
//! IOAPIC pin 1 (the keyboard's IRQ) is routed to the virtio vector (which counts and
//! EOIs), and after every wake-up the controller's status (port 0x64, bit 0 = output buffer
//! full) says whether to read a byte from port 0x60 for the recogniser
//! (`bulkhead_guest::kbd`). Made for many idle VMs on few cores: every wake-up runs the
//! interrupt path at CPL0, emulated on the development hosts, so the scenario sets no timer
//! it does not need. With the keyboard's IRQ routed and no `bulkhead.idle-ms`, nothing but
//! the keyboard wakes it (the vCPU sleeps in `hlt` for good); with `bulkhead.idle-ms` a
//! LAPIC timer wakes it to check the deadline (its period a tenth of the wait, at most
//! [`LONGEST_TIMER_MS`]); a VMM without an i8042 (status 0xff) or without the route is
//! polled every [`POLL_MS`]. Prints `idle: waiting for ctrl-alt-del ms=<ms|forever>`, at the
//! end `idle: keyboard bytes=<read from 0x60> irqs=<interrupts on the vector>
//! routed=<IOAPIC pin 1 routed>`, then `idle: ctrl-alt-del, resetting through the i8042`
//! before the reset; with `bulkhead.idle-ms` and no Ctrl+Alt+Del it passes after that time.

use super::vsock::Error;
use crate::gates::{self, VIRTIO_IRQS};
use crate::idt::vector;
use crate::machine::Machine;
use crate::time::Deadline;
use crate::{ioapic, lapic};
use bulkhead_guest::kbd::CtrlAltDel;
use core::sync::atomic::Ordering;

/// Longest sleep between two looks at a controller whose interrupt is not routed.
pub const POLL_MS: u64 = 100;
/// Longest LAPIC timer period: KVM's LAPIC counts nanoseconds with divide-by-1, in a u32.
pub const LONGEST_TIMER_MS: u64 = 4000;
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

/// The period of the wake-up timer, if one is needed: none when the keyboard interrupt is
/// routed and there is no deadline (`idle_ms` 0); a tenth of the wait (at most
/// [`LONGEST_TIMER_MS`]) with one; [`POLL_MS`] when the controller must be polled.
fn wake_period_ms(routed: bool, idle_ms: u64) -> Option<u64> {
    match (routed, idle_ms) {
        (true, 0) => None,
        // A tenth of the wait: ten wake-ups in all, and a deadline measured on a TSC
        // whose frequency is only assumed is overshot by at most a tenth.
        (true, ms) => Some((ms / 10).clamp(1, LONGEST_TIMER_MS)),
        (false, 0) => Some(POLL_MS),
        (false, ms) => Some(ms.clamp(1, POLL_MS)),
    }
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
    let timer_ms = wake_period_ms(routed, ms);
    if let Some(period) = timer_ms {
        // KVM's LAPIC timer counts nanoseconds with divide-by-1.
        lapic::start_wake_timer((period * 1_000_000) as u32);
    }
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
    if timer_ms.is_some() {
        lapic::stop_wake_timer();
    }
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
