//! The local APIC, driven from CPL3 through its user-accessible, uncached MMIO page.

use crate::idt::vector;
use crate::layout::LAPIC_BASE;

const ID: u64 = 0x20;
const SPURIOUS: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL_COUNT: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;

/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode: periodic.
const TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration: by 1.
const DIVIDE_BY_1: u32 = 0xb;

/// SVR bit 8: APIC software-enabled.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR: delivery mode INIT, level assert (bit 14).
const ICR_INIT: u32 = 0x4500;
/// ICR: delivery mode STARTUP, level assert; low byte = start page number.
const ICR_STARTUP: u32 = 0x4600;
/// ICR: delivery mode fixed, level assert; low byte = vector.
const ICR_FIXED: u32 = 0x4000;
/// ICR bit 12: the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
/// Polls of ICR_PENDING before sending anyway (KVM's in-kernel LAPIC never sets it).
const ICR_POLLS: u32 = 1000;

fn read(reg: u64) -> u32 {
    // SAFETY: the LAPIC page is mapped user-accessible and uncached by `paging`;
    // reading a LAPIC register has no side effect on memory.
    unsafe { ((LAPIC_BASE + reg) as *const u32).read_volatile() }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`; the registers written here affect only interrupt delivery.
    unsafe { ((LAPIC_BASE + reg) as *mut u32).write_volatile(value) }
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Software-enable this CPU's LAPIC (needed to receive fixed IPIs).
pub fn enable() {
    write(SPURIOUS, SVR_ENABLE | u32::from(vector::SPURIOUS));
}

fn send(apic_id: u32, command: u32) {
    for _ in 0..ICR_POLLS {
        if read(ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, command);
}

/// Send INIT to `apic_id`.
pub fn send_init(apic_id: u32) {
    send(apic_id, ICR_INIT);
}

/// Send a STARTUP IPI: `apic_id` starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send(apic_id, ICR_STARTUP | u32::from(page));
}

/// Send the wake-up IPI to `apic_id`.
pub fn send_wake(apic_id: u32) {
    send(apic_id, ICR_FIXED | u32::from(vector::WAKE));
}

/// Start this CPU's LAPIC timer, periodic, on the wake-up vector (EOI only): a `hlt`
/// then ends at least every `count` timer ticks (1 ns each in KVM's LAPIC), so a wait for
/// an interrupt can check its deadline.
pub fn start_wake_timer(count: u32) {
    write(TIMER_DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, TIMER_PERIODIC | u32::from(vector::WAKE));
    write(TIMER_INITIAL_COUNT, count);
}

/// Stop this CPU's LAPIC timer.
pub fn stop_wake_timer() {
    write(TIMER_INITIAL_COUNT, 0);
    write(LVT_TIMER, LVT_MASKED | u32::from(vector::WAKE));
}
