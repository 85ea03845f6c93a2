//! CPL0 bring-up, in assembly: the boot CPU's entry point, the APs' real-mode trampoline
//! and long-mode entry, and the boot page tables.
//!
//! CPL0 code is emulated instruction by instruction on the development hosts, so this is
//! kept to what only CPL0 can do; everything else happens in Rust at CPL3. Every CPU ends
//! up in the same state:
//! - CR0 = PG|WP|NE|ET|MP|PE, CR4 = PAE|OSFXSR|OSXMMEXCPT (SSE usable by Rust code),
//! - this guest's GDT (kernel code 0x08, kernel data 0x10, user data 0x1b, user code 0x23,
//!   TSS of CPU n at 0x28 + 16 n) and IDT loaded, TR = its own TSS,
//! - CPL3 with interrupts disabled, on its own user stack, in a Rust function.
//!
//! The boot CPU ([`_start`], entered as the Linux 64-bit boot protocol describes: long
//! mode, CPL0, RSI = zero page) switches to its own stacks, control registers, the boot
//! page tables below (an identity map of the first 1 GiB in 2 MiB user-accessible pages,
//! assembled into `.data` so that building it costs no emulated instructions), GDT, TSS and
//! IDT register; masks the 8259 PICs; and `iretq`s to CPL3, where it clears `.bss` and calls
//! `bsp_main(zero_page)`. The IDT itself is filled in by `bsp_main`.
//!
//! An AP starts at the trampoline (copied to `layout::TRAMPOLINE` by `smp`) in real mode,
//! goes straight to long mode on the final page tables, takes the next CPU number from a
//! counter, loads its TSS and stacks from `smp::AP_BOOT` and `iretq`s to `smp::ap_main`.

use crate::gdt::{GDT, GDT_LIMIT, KERNEL_CODE, KERNEL_DATA, TSSES, TSS_BASE, TSS_IST1, TSS_RSP0};
use crate::gdt::{USER_CODE, USER_DATA};
use crate::layout::{cr, FAULT_STACK_SIZE, KERNEL_STACK_SIZE, USER_STACK_SIZE};
use crate::sync::RawCell;
use core::arch::global_asm;

/// A stack: 16-byte aligned, its top is `address + N`.
#[repr(C, align(16))]
pub struct Stack<const N: usize>([u8; N]);

impl<const N: usize> Stack<N> {
    /// A zeroed stack.
    pub const fn new() -> Self {
        Self([0; N])
    }
}

static BSP_USER_STACK: RawCell<Stack<USER_STACK_SIZE>> = RawCell::new(Stack::new());
static BSP_KERNEL_STACK: RawCell<Stack<KERNEL_STACK_SIZE>> = RawCell::new(Stack::new());
static BSP_FAULT_STACK: RawCell<Stack<FAULT_STACK_SIZE>> = RawCell::new(Stack::new());

global_asm!(
    // ---- boot CPU: 64-bit, CPL0, RSI = zero page -------------------------------------
    ".pushsection .text._start, \"ax\"",
    ".code64",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    mov r12, rsi",
    "    lea rsp, [rip + {kstack} + {kstack_size}]",
    "    mov eax, {cr4}",
    "    mov cr4, rax",
    "    mov eax, {cr0}",
    "    mov cr0, rax",
    "    lea rax, [rip + boot_pml4]",
    "    mov cr3, rax",
    "    lgdt [rip + gdt_pointer]",
    "    push {kcode}",
    "    lea rax, [rip + 2f]",
    "    push rax",
    "    retfq",
    "2:  mov eax, {kdata}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    // TSS descriptor of CPU 0: limit 103, base split over bits 16-39, 56-63 and the
    // next quadword, type 0x89 (present, available 64-bit TSS).
    "    lea rax, [rip + {tsses}]",
    "    mov rdx, rax",
    "    shl rdx, 16",
    "    movabs rcx, 0xffffff0000",
    "    and rdx, rcx",
    "    mov rcx, rax",
    "    shr rcx, 24",
    "    shl rcx, 56",
    "    or rdx, rcx",
    "    movabs rcx, 0x0000890000000067",
    "    or rdx, rcx",
    "    mov [rip + {gdt} + {tss_base}], rdx",
    "    shr rax, 32",
    "    mov [rip + {gdt} + {tss_base} + 8], rax",
    "    lea rax, [rip + {kstack} + {kstack_size}]",
    "    mov [rip + {tsses} + {rsp0}], rax",
    "    lea rax, [rip + {fstack} + {fstack_size}]",
    "    mov [rip + {tsses} + {ist1}], rax",
    "    mov eax, {tss_base}",
    "    ltr ax",
    "    lidt [rip + idt_pointer]",
    // Mask both 8259 PICs: their vectors were never programmed.
    "    mov al, 0xff",
    "    out 0x21, al",
    "    out 0xa1, al",
    "    mov rdi, r12",
    "    push {udata}",
    "    lea rax, [rip + {ustack} + {ustack_size}]",
    "    push rax",
    "    push 2",
    "    push {ucode}",
    "    lea rax, [rip + bsp_user_entry]",
    "    push rax",
    "    iretq",
    // CPL3: clear .bss (natively: fast), then Rust.
    "bsp_user_entry:",
    "    mov r12, rdi",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + _end]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    rep stosb",
    "    mov rdi, r12",
    "    call {bsp_main}",
    "    ud2",
    ".popsection",
    // ---- AP: real mode at TRAMPOLINE (CS = TRAMPOLINE >> 4, IP = 0) --------------------
    // Position-independent within its page: data only through CS-relative offsets.
    // Straight from real mode to long mode: PAE and LME first, then PE and PG together.
    ".pushsection .text.trampoline, \"ax\"",
    ".code16",
    ".balign 16",
    ".global ap_trampoline_start",
    "ap_trampoline_start:",
    "    cli",
    "    mov eax, {cr4}",
    "    mov cr4, eax",
    "    mov eax, offset {pml4}",
    "    mov cr3, eax",
    "    mov ecx, 0xc0000080",
    "    mov eax, {efer}",
    "    xor edx, edx",
    "    wrmsr",
    // o32 lgdt cs:[ap_gdtr - ap_trampoline_start], encoded by hand: the assembler takes
    // no label difference in a memory operand. o32 makes it load a 32-bit base.
    "    .byte 0x66, 0x2e, 0x0f, 0x01, 0x16",
    "    .word ap_gdtr - ap_trampoline_start",
    "    mov eax, {cr0}",
    "    mov cr0, eax",
    // jmp far 0x08:ap_long_entry (ptr16:32, operand-size prefix).
    "    .byte 0x66, 0xea",
    "    .long ap_long_entry",
    "    .word {kcode}",
    ".balign 4",
    "ap_gdtr:",
    "    .word {gdt_limit}",
    "    .long {gdt}",
    ".global ap_trampoline_end",
    "ap_trampoline_end:",
    ".code64",
    // ---- AP: 64-bit, CPL0, on the final page tables --------------------------------------
    "ap_long_entry:",
    "    mov eax, {kdata}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    lidt [rip + idt_pointer]",
    "    mov eax, 1",
    "    lock xadd dword ptr [rip + {next}], eax",
    "    cmp eax, dword ptr [rip + {limit}]",
    "    jae 3f",
    // AP_BOOT[n] = {{ kernel stack top, user stack top }}, 16 bytes each.
    "    mov ecx, eax",
    "    shl rcx, 4",
    "    lea rdx, [rip + {boot}]",
    "    add rdx, rcx",
    "    mov rsp, [rdx]",
    "    mov ecx, eax",
    "    shl ecx, 4",
    "    add ecx, {tss_base}",
    "    ltr cx",
    "    mov edi, eax",
    "    push {udata}",
    "    push qword ptr [rdx + 8]",
    "    push 2",
    "    push {ucode}",
    "    lea rax, [rip + ap_user_entry]",
    "    push rax",
    "    iretq",
    // More APs than prepared slots: stay parked.
    "3:  cli",
    "    hlt",
    "    jmp 3b",
    "ap_user_entry:",
    "    call {ap_main}",
    "    ud2",
    ".popsection",
    // ---- data ------------------------------------------------------------------------
    ".pushsection .data.boot, \"aw\"",
    ".balign 16",
    "    .word 0",
    "    .word 0",
    "    .word 0",
    "gdt_pointer:",
    "    .word {gdt_limit}",
    "    .quad {gdt}",
    ".balign 16",
    "    .word 0",
    "    .word 0",
    "    .word 0",
    "idt_pointer:",
    "    .word 4095",
    "    .quad {idt}",
    // Boot page tables: PML4 -> PDPT -> PD, 512 x 2 MiB, present|writable|user|large.
    ".balign 4096",
    "boot_pml4:",
    "    .quad boot_pdpt + 0x7",
    "    .fill 511, 8, 0",
    "boot_pdpt:",
    "    .quad boot_pd + 0x7",
    "    .fill 511, 8, 0",
    "boot_pd:",
    ".set boot_pde, 0x87",
    ".rept 512",
    "    .quad boot_pde",
    ".set boot_pde, boot_pde + 0x200000",
    ".endr",
    ".popsection",
    kstack = sym BSP_KERNEL_STACK,
    kstack_size = const KERNEL_STACK_SIZE,
    fstack = sym BSP_FAULT_STACK,
    fstack_size = const FAULT_STACK_SIZE,
    ustack = sym BSP_USER_STACK,
    ustack_size = const USER_STACK_SIZE,
    cr0 = const cr::CR0,
    cr4 = const cr::CR4,
    efer = const cr::EFER_LME,
    kcode = const KERNEL_CODE,
    kdata = const KERNEL_DATA,
    ucode = const USER_CODE,
    udata = const USER_DATA,
    tss_base = const TSS_BASE,
    rsp0 = const TSS_RSP0,
    ist1 = const TSS_IST1,
    gdt = sym GDT,
    gdt_limit = const GDT_LIMIT,
    tsses = sym TSSES,
    idt = sym crate::idt::IDT,
    pml4 = sym crate::paging::PML4,
    next = sym crate::smp::AP_NEXT,
    limit = sym crate::smp::AP_LIMIT,
    boot = sym crate::smp::AP_BOOT,
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::smp::ap_main,
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The AP trampoline's code, to be copied to `layout::TRAMPOLINE`.
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols label the same section of this image, start before end, and
    // the bytes between them are read-only code.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let end = core::ptr::addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}
