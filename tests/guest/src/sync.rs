//! Sharing primitives for a guest without an operating system: a cell for data that CPL0
//! assembly or other CPUs also touch, and a spin lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// Memory shared with CPL0 assembly, the CPU itself (descriptor tables, page tables) or
/// other CPUs, accessed through raw pointers.
///
/// `RawCell` gives no synchronisation of its own: each user states, in its `// SAFETY:`
/// comments, which CPU writes the contents and when (typically: the boot CPU, before it
/// starts the CPUs that read them).
#[repr(transparent)]
pub struct RawCell<T>(UnsafeCell<T>);

// SAFETY: every access goes through `get()`, a raw pointer; the users document the
// ordering that makes their accesses race-free.
unsafe impl<T> Sync for RawCell<T> {}

impl<T> RawCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Raw pointer to the contents.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// A test-and-set spin lock around a `T`.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time (`lock`), or to a fatal-error
// reporter that has stopped waiting (`lock_or_steal`, documented there).
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Wait for the lock and take it.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        SpinGuard { lock: self }
    }

    /// Take the lock, or after `spins` failed attempts take it anyway.
    ///
    /// Only for reporting a fatal error (exception, panic) just before power-off: the
    /// holder may be the very code that faulted and will never release it. A stolen lock
    /// can interleave the reporter's output with the holder's; nothing else is at stake.
    pub fn lock_or_steal(&self, spins: u32) -> SpinGuard<'_, T> {
        for _ in 0..spins {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
            core::hint::spin_loop();
        }
        self.locked.swap(true, Ordering::Acquire);
        SpinGuard { lock: self }
    }
}

/// Holder of a [`SpinLock`]; releases it when dropped.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this holder owns the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this holder owns the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
