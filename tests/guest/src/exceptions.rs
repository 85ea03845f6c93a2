//! CPU exceptions: CPL0 stubs that record what happened and hand over to a CPL3 reporter.
//!
//! Each of the 32 exception vectors has a 16-byte stub that pushes a dummy error code (if
//! the CPU pushed none) and the vector number. The common part claims the guest's single
//! "fatal error" flag, stores vector, error code, RIP and CR2 in [`EXCEPTION`], then
//! rewrites its interrupt frame to `iretq` into [`report`] at CPL3 on a dedicated stack, so
//! that formatting runs natively in Rust instead of as emulated CPL0 instructions. If the
//! flag was already taken (a second exception while reporting, or a panic being reported),
//! it powers off with status 3 at once.

use crate::entry::Stack;
use crate::gdt::{USER_CODE, USER_DATA};
use crate::status::{self, Status};
use crate::sync::RawCell;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// What the exception stubs record (layout shared with the assembly below).
#[repr(C)]
pub struct ExceptionInfo {
    vector: u64,
    error: u64,
    rip: u64,
    cr2: u64,
}

/// The exception being reported. Written once, by the CPL0 stub that won [`FATAL`].
pub static EXCEPTION: RawCell<ExceptionInfo> = RawCell::new(ExceptionInfo {
    vector: 0,
    error: 0,
    rip: 0,
    cr2: 0,
});

/// Nonzero once a fatal error (exception or panic) is being reported: only the first one
/// is, a later one powers off straight away.
pub static FATAL: AtomicU32 = AtomicU32::new(0);

/// Stack for [`report`], distinct from every stack that may have faulted. 16-byte aligned
/// (`Stack`): the compiler's SSE spills to the stack need it, and a byte array could land
/// anywhere (a misaligned report stack turned every exception report into a second fault).
const REPORT_STACK_SIZE: usize = 32 * 1024;
static REPORT_STACK: RawCell<Stack<REPORT_STACK_SIZE>> = RawCell::new(Stack::new());

global_asm!(
    ".pushsection .text.exceptions, \"ax\"",
    ".code64",
    ".balign 16",
    ".global exception_stubs",
    "exception_stubs:",
    ".set vec, 0",
    ".rept 32",
    // `idt::init` finds vector n's stub at 16 n; `.org` fails the build if a stub outgrew
    // its 16 bytes (it cannot move backwards).
    ".org exception_stubs + vec * 16",
    // Vectors with a CPU-pushed error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14,
    // #AC 17, #CP 21, #VC 29, #SX 30.
    ".if (vec - 8) && (vec - 10) && (vec - 11) && (vec - 12) && (vec - 13) && (vec - 14) && (vec - 17) && (vec - 21) && (vec - 29) && (vec - 30)",
    "    push 0",
    ".endif",
    "    push vec",
    "    jmp exception_common",
    ".set vec, vec + 1",
    ".endr",
    // [rsp] vector, +8 error, +16 RIP, +24 CS, +32 RFLAGS, +40 RSP, +48 SS.
    ".global exception_common",
    "exception_common:",
    "    mov eax, 1",
    "    xchg dword ptr [rip + {fatal}], eax",
    "    test eax, eax",
    "    jnz 2f",
    "    mov rax, [rsp]",
    "    mov [rip + {info}], rax",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {info} + 8], rax",
    "    mov rax, [rsp + 16]",
    "    mov [rip + {info} + 16], rax",
    "    mov rax, cr2",
    "    mov [rip + {info} + 24], rax",
    // Return to CPL3, interrupts off, in `exception_user_entry` on the report stack.
    "    lea rax, [rip + exception_user_entry]",
    "    mov [rsp + 16], rax",
    "    mov qword ptr [rsp + 24], {user_code}",
    "    mov qword ptr [rsp + 32], 2",
    "    lea rax, [rip + {stack} + {stack_size}]",
    "    mov [rsp + 40], rax",
    "    mov qword ptr [rsp + 48], {user_data}",
    "    add rsp, 16",
    "    iretq",
    "2:  mov al, {status}",
    "    out 0xf4, al",
    "    mov al, 0xfe",
    "    out 0x64, al",
    "3:  cli",
    "    hlt",
    "    jmp 3b",
    // CPL3, stack 16-byte aligned: call the reporter the way a call would.
    "exception_user_entry:",
    "    call {report}",
    "    ud2",
    ".popsection",
    fatal = sym FATAL,
    info = sym EXCEPTION,
    stack = sym REPORT_STACK,
    stack_size = const REPORT_STACK_SIZE,
    user_code = const USER_CODE,
    user_data = const USER_DATA,
    status = const Status::Crash as u8,
    report = sym report,
);

extern "C" {
    fn exception_stubs();
}

/// Address of the stub of vector 0; vector `n`'s is `16 * n` bytes further.
pub fn stubs() -> usize {
    exception_stubs as *const () as usize
}

/// Report the recorded exception on the serial port and power off with status 3.
extern "C" fn report() -> ! {
    // SAFETY: the stub that won `FATAL` wrote `EXCEPTION` before jumping here, and no
    // other stub writes it after `FATAL` is taken.
    let info = unsafe { &*EXCEPTION.get() };
    crate::serial::line_fatal(format_args!(
        "FAIL exception vector={} error={:#x} rip={:#x} cr2={:#x}",
        info.vector, info.error, info.rip, info.cr2
    ));
    status::finish_fatal(Status::Crash)
}

/// Claim the right to report a fatal error; `false` if another report is under way.
pub fn claim_fatal() -> bool {
    FATAL.swap(1, Ordering::AcqRel) == 0
}
