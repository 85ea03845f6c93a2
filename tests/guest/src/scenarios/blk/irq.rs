//! `blk-irq`: the interrupt path, end to end. A virtio-mmio device's line (from its
//! `virtio_mmio.device` token) is routed in the IOAPIC to [`vector::VIRTIO`] on this CPU; a
//! virtio-pci function's queue 0 MSI-X entry already points there (programmed at set-up,
//! `queue_msix_vector` read back); the vector's CPL0 handler counts and EOIs; the queue asks for an interrupt at the next used
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
//! says a device SHOULD NOT send them, so this is reported, not failed), and on virtio-mmio
//! InterruptStatus must have shown the used-buffer bit (Linux ignores the interrupt
//! otherwise; with MSI-X the ISR is not used). Prints `<disk> irq line=<n> vector=0x<v>
//! interrupts=<n> at_cpl3=<n> interrupt_status=0x<x> suppressed_interrupts=<n>`, on
//! virtio-pci `<disk> irq msix_vector=<n> vector=0x<v> interrupts=<n> at_cpl3=<n>
//! suppressed_interrupts=<n>`.

use super::Error;
use crate::disks::{self, Disk, DiskError, Waiting, REQUEST_TIMEOUT_MS};
use crate::gates::{self, VIRTIO_IRQS, VIRTIO_IRQS_AT_CPL3};
use crate::idt::vector;
use crate::machine::Machine;
use crate::pcibus::Place;
use crate::time::{self, Deadline};
use crate::virtio::blk::{status, Request};
use crate::virtio::pci::NO_VECTOR;
use crate::virtio::{Either, Transport};
use crate::{ioapic, lapic};
use core::sync::atomic::Ordering;

/// LAPIC timer period that bounds each `hlt`: 10 ms of KVM's 1 GHz APIC timer.
const TICK: u32 = 10_000_000;
/// How long the suppressed read is watched for stray interrupts after it completed.
const QUIET_MS: u64 = 20;
/// InterruptStatus: used buffer.
const INT_VRING: u32 = 1;

/// Where the interrupt comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// An IOAPIC pin (virtio-mmio).
    Pin(u32),
    /// An MSI-X table entry (virtio-pci).
    Msix(u16),
}

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Pin(p) => write!(f, "line {p}"),
            Self::Msix(v) => write!(f, "MSI-X vector {v}"),
        }
    }
}

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
fn round(disk: &mut Disk, line: Source, wait: Wait) -> Result<(), Error> {
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
fn rounds(disk: &mut Disk, line: Source) -> Result<(u32, u32), Error> {
    gates::interrupts_on();
    round(disk, line, Wait::Spin)?;
    // Virtio-mmio: InterruptStatus, then InterruptACK, as Linux's handler does. With MSI-X
    // the ISR is not used (virtio 1.2, 4.1.5.4): 0 is reported.
    let mut interrupt_status = 0;
    if let Source::Pin(_) = line {
        interrupt_status = disk.blk.transport().interrupt_status();
        disk.blk.transport().interrupt_ack(interrupt_status);
    }
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
    let line = match (disk.place(), disk.blk.transport()) {
        (Place::Mmio(spec), _) => Source::Pin(spec.irq),
        (Place::Pci(_), Either::Pci(t)) if t.msi().is_some() => match t.queue_vector(0) {
            NO_VECTOR => return Err(Error::NoMsixVector),
            v => Source::Msix(v),
        },
        (Place::Pci(_), _) => return Err(Error::NoMsixVector),
    };
    let irqs = VIRTIO_IRQS.load(Ordering::SeqCst);
    let at_cpl3 = VIRTIO_IRQS_AT_CPL3.load(Ordering::SeqCst);
    if let Source::Pin(pin) = line {
        ioapic::route(pin, vector::VIRTIO, lapic::id())?;
    }
    lapic::start_wake_timer(TICK);
    let result = rounds(disk, line);
    gates::interrupts_off();
    lapic::stop_wake_timer();
    if let Source::Pin(pin) = line {
        ioapic::mask(pin)?;
    }
    disk.blk.queue.set_interrupts(false);
    let (interrupt_status, suppressed) = result?;
    let interrupts = VIRTIO_IRQS.load(Ordering::SeqCst).wrapping_sub(irqs);
    let at_cpl3 = VIRTIO_IRQS_AT_CPL3
        .load(Ordering::SeqCst)
        .wrapping_sub(at_cpl3);
    match line {
        Source::Pin(pin) => {
            crate::say!(
                "{} irq line={pin} vector={:#x} interrupts={interrupts} at_cpl3={at_cpl3} interrupt_status={interrupt_status:#x} suppressed_interrupts={suppressed}",
                disk.name(),
                vector::VIRTIO,
            );
            if interrupt_status & INT_VRING == 0 {
                return Err(Error::InterruptStatus(interrupt_status));
            }
        }
        Source::Msix(v) => crate::say!(
            "{} irq msix_vector={v} vector={:#x} interrupts={interrupts} at_cpl3={at_cpl3} suppressed_interrupts={suppressed}",
            disk.name(),
            vector::VIRTIO,
        ),
    }
    Ok(())
}
