//! The interrupt descriptor table: CPU exceptions, the CPL0 service gate, the wake-up IPI,
//! virtio interrupts.
//!
//! The entry assembly only loads the IDT register; the boot CPU fills the table in at
//! CPL3 (it is ordinary user-accessible memory), first thing in `bsp_main`, before any
//! gate is used. An exception before that point is a triple fault (the VMM sees a
//! shutdown). Unused vectors stay not-present: raising one is reported as #NP.

use crate::gdt::KERNEL_CODE;
use crate::sync::RawCell;

/// Vectors the guest uses.
pub mod vector {
    /// #DF: runs on the CPU's IST1 stack.
    pub const DOUBLE_FAULT: u8 = 8;
    /// The CPL0 service gate (`gates.rs`): `int3`, the only software interrupt that
    /// reaches a DPL 3 gate on the development hosts (`int n` raises #UD there).
    pub const GATE: u8 = 3;
    /// Virtio devices' interrupt lines, routed here through the IOAPIC (by `blk-irq`), and
    /// virtio-pci queue interrupts (MSI-X entries 1.., programmed at set-up).
    pub const VIRTIO: u8 = 0x40;
    /// Virtio-pci configuration-change interrupts (MSI-X entry 0 of every function).
    pub const VIRTIO_CONFIG: u8 = 0x41;
    /// Inter-processor interrupt that wakes a parked CPU; also the LAPIC timer's vector
    /// when it bounds a wait.
    pub const WAKE: u8 = 0xf0;
    /// LAPIC spurious-interrupt vector.
    pub const SPURIOUS: u8 = 0xff;
}

/// Number of exception vectors, each with a stub 16 bytes after the previous one.
pub const EXCEPTIONS: usize = 32;

/// The IDT. In `.bss`: the entry code loads only its address.
pub static IDT: RawCell<[[u64; 2]; 256]> = RawCell::new([[0; 2]; 256]);

/// Present 64-bit interrupt gate (clears IF on entry), DPL 0: hardware only.
const INTERRUPT_GATE: u64 = 0x8e;
/// The same with DPL 3: callable from CPL3 with `int n`.
const USER_GATE: u64 = 0xee;

fn set(vector: u8, handler: usize, type_attr: u64, ist: u64) {
    let offset = handler as u64;
    let low = (offset & 0xffff)
        | u64::from(KERNEL_CODE) << 16
        | ist << 32
        | type_attr << 40
        | (offset >> 16 & 0xffff) << 48;
    // SAFETY: `vector` indexes the 256-entry table; only the boot CPU writes the IDT, in
    // `init`, before starting other CPUs or taking any interrupt.
    unsafe {
        let entry = IDT.get().cast::<[u64; 2]>().add(usize::from(vector));
        entry.write_volatile([low, offset >> 32]);
    }
}

/// Fill in the IDT. Called once, by the boot CPU, at the start of `bsp_main`.
pub fn init() {
    let stubs = crate::exceptions::stubs();
    for v in 0..EXCEPTIONS {
        let ist = if v == usize::from(vector::DOUBLE_FAULT) {
            1
        } else {
            0
        };
        set(v as u8, stubs + 16 * v, INTERRUPT_GATE, ist);
    }
    set(vector::GATE, crate::gates::dispatcher(), USER_GATE, 0);
    for (v, handler) in crate::gates::interrupt_handlers() {
        set(v, handler, INTERRUPT_GATE, 0);
    }
}
