//! CPL0 services for the CPL3 code, through one software-interrupt gate with DPL 3.
//!
//! On the development hosts CPL0 code is emulated one instruction at a time (about 1.7 us
//! each), and `in`/`out` at CPL3 raise #GP whatever IOPL says. So everything that needs
//! CPL0 (port I/O, CR3, `hlt`, power-off) is a short gate function, and each takes whole
//! requests (a line of text, not a byte) to keep the number of gate calls down.
//!
//! The gate is `int3` (vector 3, #BP): on these hosts `int n` from CPL3 raises #UD for
//! every other vector, while `int3` is delivered through the guest's IDT. EAX selects the
//! function:
//!
//! | EAX | function | arguments |
//! | --- | --- | --- |
//! | 0 | serial write | RSI bytes, RDI length, R8 bytes per LSR poll |
//! | 1 | power off | EDI status (port 0xf4), then i8042 reset, then `hlt` forever |
//! | 2 | load CR3 | RDI page-table root |
//! | 3 | wait | `hlt` with interrupts on if the u32 at RDI still equals ESI |
//! | 4 | port in (byte) | EDI port; result in EAX |
//! | 5 | port out (byte) | EDI port, ESI value |
//! | 6 | interrupts on | sets IF in the caller's RFLAGS: CPL3 code runs interruptible |
//! | 7 | interrupts off | clears it again |
//! | 8 | CPUID | EDI leaf, ESI subleaf; result in EAX, EBX, ECX, EDX |
//!
//! An out-of-range EAX (a stray `int3`) is reported as exception 3. The gate is an
//! interrupt gate (IF clear inside) and runs on the CPU's TSS.RSP0 stack, so the CPL3
//! stack is untouched (`nostack` below). The hardware-interrupt handlers live here too.
//!
//! IF at CPL3: the host does not honour IOPL, so CPL3 code cannot `sti`/`cli` itself;
//! functions 6 and 7 change IF in the RFLAGS image that the gate's `iretq` restores.
//! Only the interrupt test (`blk-irq`) runs with interrupts on; everything else polls.

use crate::idt::vector;
use core::arch::{asm, global_asm};
use core::sync::atomic::AtomicU32;

/// Interrupts taken on the virtio vector ([`vector::VIRTIO`]), counted by its handler.
pub static VIRTIO_IRQS: AtomicU32 = AtomicU32::new(0);
/// Those of them that interrupted CPL3 code (the rest arrived in a CPL0 `hlt`).
pub static VIRTIO_IRQS_AT_CPL3: AtomicU32 = AtomicU32::new(0);
/// Virtio-pci configuration-change interrupts ([`vector::VIRTIO_CONFIG`], MSI-X).
pub static VIRTIO_CONFIG_IRQS: AtomicU32 = AtomicU32::new(0);

/// COM1 transmit holding register.
const COM1: u16 = 0x3f8;
/// COM1 line status register; bit 5 = transmit holding register empty.
const COM1_LSR: u16 = COM1 + 5;
/// The bulkhead VMM exits with the byte written here.
const POWER_OFF_PORT: u16 = 0xf4;
/// LAPIC end-of-interrupt register.
const LAPIC_EOI: u64 = crate::layout::LAPIC_BASE + 0xb0;

/// Gate function numbers (EAX).
mod function {
    pub const SERIAL_WRITE: u32 = 0;
    pub const POWER_OFF: u32 = 1;
    pub const LOAD_CR3: u32 = 2;
    pub const WAIT: u32 = 3;
    pub const PORT_IN: u32 = 4;
    pub const PORT_OUT: u32 = 5;
    pub const INTERRUPTS_ON: u32 = 6;
    pub const INTERRUPTS_OFF: u32 = 7;
    pub const CPUID: u32 = 8;
    /// Number of functions.
    pub const COUNT: u32 = 9;
}

global_asm!(
    ".pushsection .text.gates, \"ax\"",
    ".code64",
    ".balign 16",
    ".global gate_dispatch",
    "gate_dispatch:",
    "    cmp eax, {count}",
    "    jae 9f",
    "    lea r11, [rip + gate_table]",
    "    jmp qword ptr [r11 + rax * 8]",
    "9:  push 0",
    "    push {bp}",
    "    jmp exception_common",
    // Serial write: RSI bytes, RDI length, R8 burst (>= 1). Before each burst, wait for
    // LSR.THRE (the transmitter FIFO is empty), then `rep outsb` the burst.
    "gate_serial_write:",
    "    cld",
    "2:  test rdi, rdi",
    "    jz 5f",
    "    mov edx, {lsr}",
    "3:  in al, dx",
    "    test al, 0x20",
    "    jz 3b",
    "    mov rcx, r8",
    "    cmp rcx, rdi",
    "    jbe 4f",
    "    mov rcx, rdi",
    "4:  sub rdi, rcx",
    "    mov edx, {com1}",
    "    rep outsb",
    "    jmp 2b",
    "5:  iretq",
    // Power off: status to the bulkhead VMM's port, then the i8042 reset line (other
    // VMMs), then stop for good.
    "gate_power_off:",
    "    mov eax, edi",
    "    out {power_off}, al",
    "    mov al, 0xfe",
    "    out 0x64, al",
    "6:  cli",
    "    hlt",
    "    jmp 6b",
    "gate_load_cr3:",
    "    mov cr3, rdi",
    "    iretq",
    // Wait: `sti; hlt` only if the word still holds the value the caller saw. IF is clear
    // from the gate entry up to `sti`, and `sti` delays interrupts by one instruction, so
    // a wake-up IPI sent after the caller's check cannot be lost: it ends the `hlt`.
    "gate_wait:",
    "    cmp dword ptr [rdi], esi",
    "    jne 7f",
    "    sti",
    "    hlt",
    "7:  iretq",
    "gate_port_in:",
    "    mov edx, edi",
    "    xor eax, eax",
    "    in al, dx",
    "    iretq",
    "gate_port_out:",
    "    mov edx, edi",
    "    mov eax, esi",
    "    out dx, al",
    "    iretq",
    // Interrupt frame: [rsp] RIP, +8 CS, +16 RFLAGS, +24 RSP, +32 SS. IF is bit 9.
    "gate_interrupts_on:",
    "    or qword ptr [rsp + 16], 0x200",
    "    iretq",
    "gate_interrupts_off:",
    "    and qword ptr [rsp + 16], -0x201",
    "    iretq",
    // CPUID at CPL0: on the development hosts CPL3 code runs natively and its CPUID is
    // not intercepted, so it sees the host's CPUID, not the VMM's.
    "gate_cpuid:",
    "    mov eax, edi",
    "    mov ecx, esi",
    "    cpuid",
    "    iretq",
    // Virtio device interrupt (IOAPIC, edge): count it, and whether it interrupted CPL3
    // (the CS image's RPL), then EOI. The driver looks at its used ring itself.
    ".balign 16",
    ".global interrupt_virtio",
    "interrupt_virtio:",
    "    lock inc dword ptr [rip + {virtio_irqs}]",
    "    test byte ptr [rsp + 8], 3",
    "    jz 8f",
    "    lock inc dword ptr [rip + {virtio_irqs_cpl3}]",
    "8:  push rax",
    "    movabs rax, {eoi}",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    // Virtio-pci configuration change (MSI-X, edge): count it, EOI.
    ".balign 16",
    ".global interrupt_virtio_config",
    "interrupt_virtio_config:",
    "    lock inc dword ptr [rip + {virtio_config_irqs}]",
    "    push rax",
    "    movabs rax, {eoi}",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    // Wake-up IPI: its only job is to end a `hlt`; acknowledge it at the LAPIC.
    ".balign 16",
    ".global interrupt_wake",
    "interrupt_wake:",
    "    push rax",
    "    movabs rax, {eoi}",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    // Spurious LAPIC interrupt: no EOI.
    ".balign 16",
    ".global interrupt_spurious",
    "interrupt_spurious:",
    "    iretq",
    ".popsection",
    ".pushsection .rodata.gates, \"a\"",
    ".balign 8",
    "gate_table:",
    "    .quad gate_serial_write",
    "    .quad gate_power_off",
    "    .quad gate_load_cr3",
    "    .quad gate_wait",
    "    .quad gate_port_in",
    "    .quad gate_port_out",
    "    .quad gate_interrupts_on",
    "    .quad gate_interrupts_off",
    "    .quad gate_cpuid",
    ".popsection",
    count = const function::COUNT,
    bp = const vector::GATE,
    lsr = const COM1_LSR,
    com1 = const COM1,
    power_off = const POWER_OFF_PORT,
    eoi = const LAPIC_EOI,
    virtio_irqs = sym VIRTIO_IRQS,
    virtio_irqs_cpl3 = sym VIRTIO_IRQS_AT_CPL3,
    virtio_config_irqs = sym VIRTIO_CONFIG_IRQS,
);

extern "C" {
    fn gate_dispatch();
    fn interrupt_wake();
    fn interrupt_spurious();
    fn interrupt_virtio();
    fn interrupt_virtio_config();
}

/// The gate's entry point, for the IDT.
pub fn dispatcher() -> usize {
    gate_dispatch as *const () as usize
}

/// The hardware-interrupt handlers (DPL 0), for the IDT.
pub fn interrupt_handlers() -> [(u8, usize); 4] {
    [
        (
            vector::VIRTIO_CONFIG,
            interrupt_virtio_config as *const () as usize,
        ),
        (vector::WAKE, interrupt_wake as *const () as usize),
        (vector::SPURIOUS, interrupt_spurious as *const () as usize),
        (vector::VIRTIO, interrupt_virtio as *const () as usize),
    ]
}

/// Write `bytes` to COM1, polling the line status register before every `burst` bytes.
pub fn serial_write(bytes: &[u8], burst: usize) {
    // SAFETY: the gate reads `bytes.len()` bytes from `bytes`, a valid slice, and changes
    // only the registers declared here; the interrupt switches to the TSS.RSP0 stack.
    unsafe {
        asm!(
            "int3",
            inout("eax") function::SERIAL_WRITE => _,
            inout("rsi") bytes.as_ptr() => _,
            inout("rdi") bytes.len() => _,
            in("r8") burst.max(1),
            out("rcx") _,
            out("rdx") _,
            out("r11") _,
            options(nostack, readonly, preserves_flags)
        );
    }
}

/// Stop the VM with `status`: port 0xf4 (bulkhead), then an i8042 reset (other VMMs).
pub fn power_off(status: u8) -> ! {
    // SAFETY: the gate never returns; it only does port I/O and halts.
    unsafe {
        asm!(
            "int3",
            in("eax") function::POWER_OFF,
            in("edi") u32::from(status),
            options(nostack, noreturn)
        );
    }
}

/// Switch to the page tables rooted at `pml4` (physical address).
///
/// # Safety
/// The new tables must map everything the running code and its data use, at the same
/// addresses.
pub unsafe fn load_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the new tables keep this CPU's code and data mapped.
    unsafe {
        asm!(
            "int3",
            in("eax") function::LOAD_CR3,
            in("rdi") pml4,
            out("r11") _,
            options(nostack, preserves_flags)
        );
    }
}

/// Halt this CPU until an interrupt arrives, unless `word` no longer holds `seen`.
///
/// A store to `word` followed by a wake-up IPI (`lapic::send_wake`) can therefore not be
/// missed. Spurious returns are possible: callers re-check `word` in a loop.
pub fn wait_while_equal(word: &AtomicU32, seen: u32) {
    // SAFETY: the gate reads the u32 at `word` (a valid reference) and halts; it changes
    // no memory and only the registers declared here.
    unsafe {
        asm!(
            "int3",
            in("eax") function::WAIT,
            in("rdi") word.as_ptr(),
            in("esi") seen,
            out("r11") _,
            // Not `readonly`: other CPUs change memory while this one sleeps.
            options(nostack, preserves_flags)
        );
    }
}

/// Read a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u32;
    // SAFETY: the gate reads one port and returns the byte in EAX; ports are not memory.
    unsafe {
        asm!(
            "int3",
            inout("eax") function::PORT_IN => value,
            in("edi") u32::from(port),
            out("edx") _,
            out("r11") _,
            options(nostack, nomem, preserves_flags)
        );
    }
    value as u8
}

/// Write a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the gate writes one port; it changes only the registers declared here.
    unsafe {
        asm!(
            "int3",
            inout("eax") function::PORT_OUT => _,
            in("edi") u32::from(port),
            in("esi") u32::from(value),
            out("edx") _,
            out("r11") _,
            options(nostack, nomem, preserves_flags)
        );
    }
}

/// Let interrupts in while this CPU runs CPL3 code (IF set on the gate's return).
pub fn interrupts_on() {
    // SAFETY: the gate only sets IF in its own interrupt frame; every vector that can
    // then arrive has a handler (`idt::init`) that returns to the interrupted code.
    unsafe {
        asm!(
            "int3",
            inout("eax") function::INTERRUPTS_ON => _,
            out("r11") _,
            options(nostack, nomem)
        );
    }
}

/// Keep interrupts out of CPL3 code again (the default).
pub fn interrupts_off() {
    // SAFETY: the gate only clears IF in its own interrupt frame.
    unsafe {
        asm!(
            "int3",
            inout("eax") function::INTERRUPTS_OFF => _,
            out("r11") _,
            options(nostack, nomem)
        );
    }
}

/// CPUID as the VMM defines it (executed at CPL0): (EAX, EBX, ECX, EDX) of `leaf`,
/// `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: the gate runs CPUID, which only writes EAX-EDX; RBX (reserved by the
    // compiler) is saved in a scratch register around the call and swapped back.
    unsafe {
        asm!(
            "mov {saved}, rbx",
            "int3",
            "xchg {saved}, rbx",
            saved = out(reg) ebx,
            inout("eax") function::CPUID => eax,
            in("edi") leaf,
            in("esi") subleaf,
            out("ecx") ecx,
            out("edx") edx,
            out("r11") _,
            options(nostack, nomem, preserves_flags)
        );
    }
    [eax, ebx as u32, ecx, edx]
}
