//! The C memory functions (`memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`) that compiled
//! Rust code calls.
//!
//! The guest links no libc, and the prebuilt `compiler_builtins` of the
//! `x86_64-unknown-linux-gnu` target leaves these to libc. They are written with x86 string
//! instructions in inline assembly so that the compiler cannot turn their bodies back into
//! calls to themselves. They run only at CPL3 (natively on the development hosts); the
//! CPL0 assembly never calls into Rust.

use core::arch::asm;

/// Copy `n` bytes from `src` to `dest`; the ranges must not overlap.
///
/// # Safety
/// `src` is readable and `dest` writable for `n` bytes (the C contract of `memcpy`).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; the direction
    // flag is clear at every Rust call boundary (System V ABI).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Copy `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// `src` is readable and `dest` writable for `n` bytes (the C contract of `memmove`).
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or past the end of the source: a forward copy is safe.
        // SAFETY: same contract as `memcpy`, which copies forwards byte by byte.
        return unsafe { memcpy(dest, src, n) };
    }
    if n == 0 {
        return dest;
    }
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; copying from the
    // last byte down (direction flag set, then cleared again) handles `dest` above `src`.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dest
}

/// Fill `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
/// `dest` is writable for `n` bytes (the C contract of `memset`).
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is writable; the direction flag is clear.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Compare `n` bytes: negative, zero or positive as in C.
///
/// # Safety
/// Both ranges are readable for `n` bytes (the C contract of `memcmp`).
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both ranges are readable for `n` bytes.
        // Volatile reads keep the compiler from recognising this loop as `memcmp` itself.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compare `n` bytes for equality only (zero when equal).
///
/// # Safety
/// Both ranges are readable for `n` bytes (the C contract of `bcmp`).
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}
