//! `blk-irq`: the interrupt path, end to end. The device's line (from its
//! `virtio_mmio.device` token) is routed in the IOAPIC to [`vector::VIRTIO`] on this CPU,
//! whose CPL0 handler counts and EOIs; the queue asks for an interrupt at the next used
//! entry (event index, or no VIRTQ_AVAIL_F_NO_INTERRUPT); CPL3 runs with interrupts on
//! (gate function 6). Three one-sector reads, each until both the counter moved and the
//! used ring holds the request:
//!
//! 1. spinning at CPL3, so the interrupt arrives in CPL3 code (`at_cpl3` counts those);
//! 2. and 3. halted in the wait gate (`hlt`), woken by the interrupt.
//!
//! The LAPIC timer, periodic on the wake-up vector, ends every `hlt` at least each
//! [`TICK`] so that the TSC deadline is checked. Then one more read with interrupts
//! suppressed again (`suppressed_interrupts` counts interrupts that came anyway; virtio
//! says a device SHOULD NOT send them, so this is reported, not failed), and InterruptStatus
//! must have shown the used-buffer bit (Linux ignores the interrupt otherwise). Prints
//! `<disk> irq line=<n> vector=0x<v> interrupts=<n> at_cpl3=<n> interrupt_status=0x<x>
//! suppressed_interrupts=<n>`.

use super::Error;
use crate::disks::{self, Disk, DiskError, Waiting, REQUEST_TIMEOUT_MS};
use crate::gates::{self, VIRTIO_IRQS, VIRTIO_IRQS_AT_CPL3};
use crate::idt::vector;
use crate::machine::Machine;
use crate::time::{self, Deadline};
use crate::virtio::blk::{status, Request};
use crate::{ioapic, lapic};
use core::sync::atomic::Ordering;

/// LAPIC timer period that bounds each `hlt`: 10 ms of KVM's 1 GHz APIC timer.
const TICK: u32 = 10_000_000;
/// How long the suppressed read is watched for stray interrupts after it completed.
const QUIET_MS: u64 = 20;
/// InterruptStatus: used buffer.
const INT_VRING: u32 = 1;

/// How a round waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Spin,
    Halt,
}

/// One read with interrupts wanted; returns when the interrupt came and the request is
/// back.
///
/// The used entry is only looked at, not taken, until the interrupt has come: taking it
/// moves `used_event` past it (as Linux does), and a device that checks `used_event` a
/// moment after publishing the entry may then rightly decide that no interrupt is due.
fn round(disk: &mut Disk, line: u32, wait: Wait) -> Result<(), Error> {
    let seen = VIRTIO_IRQS.load(Ordering::SeqCst);
    disk.blk.queue.set_interrupts(true);
    let req = Request::read(0, 1);
    disk.submit(0, &req)?;
    disk.kick();
    let deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    loop {
        let back = disk.blk.queue.has_used();
        let interrupted = VIRTIO_IRQS.load(Ordering::SeqCst) != seen;
        if interrupted && back {
            break;
        }
        if deadline.passed() {
            return Err(if interrupted {
                Error::Disk(DiskError::Timeout(Waiting::Request(req)))
            } else {
                Error::NoInterrupt {
                    line,
                    completed: back,
                }
            });
        }
        match wait {
            Wait::Halt if !interrupted => gates::wait_while_equal(&VIRTIO_IRQS, seen),
            // Spinning, or the interrupt came first: the used entry is about to be visible.
            _ => core::hint::spin_loop(),
        }
    }
    let done = disk.wait(deadline)?;
    if done.status != status::OK {
        return Err(Error::Status {
            request: req,
            status: done.status,
        });
    }
    Ok(())
}

/// Spin for `ms` (interrupts, if on, still come in).
fn quiet(ms: u64) {
    let end = Deadline::after(time::ms(ms));
    while !end.passed() {
        core::hint::spin_loop();
    }
}

/// The rounds, with interrupts on at CPL3; the caller turns everything off again.
fn rounds(disk: &mut Disk, line: u32) -> Result<(u32, u32), Error> {
    gates::interrupts_on();
    round(disk, line, Wait::Spin)?;
    let interrupt_status = disk.blk.transport().interrupt_status();
    disk.blk.transport().interrupt_ack(interrupt_status);
    round(disk, line, Wait::Halt)?;
    round(disk, line, Wait::Halt)?;
    // Suppressed: let stragglers in first, then poll to completion and watch a little.
    disk.blk.queue.set_interrupts(false);
    quiet(QUIET_MS);
    let before = VIRTIO_IRQS.load(Ordering::SeqCst);
    super::run_ok(disk, &Request::read(0, 1))?;
    quiet(QUIET_MS);
    let suppressed = VIRTIO_IRQS.load(Ordering::SeqCst).wrapping_sub(before);
    Ok((interrupt_status, suppressed))
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    if disk.capacity() == 0 {
        return Err(Error::Empty);
    }
    disk.ensure_slots(&mut machine.frames, 1, 512)?;
    let line = disk.spec().irq;
    let irqs = VIRTIO_IRQS.load(Ordering::SeqCst);
    let at_cpl3 = VIRTIO_IRQS_AT_CPL3.load(Ordering::SeqCst);
    ioapic::route(line, vector::VIRTIO, lapic::id())?;
    lapic::start_wake_timer(TICK);
    let result = rounds(disk, line);
    gates::interrupts_off();
    lapic::stop_wake_timer();
    ioapic::mask(line)?;
    disk.blk.queue.set_interrupts(false);
    let (interrupt_status, suppressed) = result?;
    crate::say!(
        "{} irq line={line} vector={:#x} interrupts={} at_cpl3={} interrupt_status={interrupt_status:#x} suppressed_interrupts={suppressed}",
        disk.name(),
        vector::VIRTIO,
        VIRTIO_IRQS.load(Ordering::SeqCst).wrapping_sub(irqs),
        VIRTIO_IRQS_AT_CPL3.load(Ordering::SeqCst).wrapping_sub(at_cpl3),
    );
    if interrupt_status & INT_VRING == 0 {
        return Err(Error::InterruptStatus(interrupt_status));
    }
    Ok(())
}
