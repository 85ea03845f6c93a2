//! Time from the time-stamp counter (RDTSC works at CPL3).
//!
//! The TSC frequency comes from the hypervisor's CPUID leaf 0x4000_0010 (EAX = TSC kHz;
//! the convention VMware started and KVM-based VMMs follow) when leaf 1 flags a
//! hypervisor and leaf 0x4000_0000 says the leaf exists. CPUID goes through the gate: on
//! the development hosts a CPL3 CPUID runs natively and answers with the host's leaves. Otherwise the guest assumes
//! 4 GHz ([`SECOND`]): timeouts then last longer on slower TSCs, which only matters when
//! something has already failed, and benchmark figures say `tsc=assumed`.

use crate::gates::cpuid;
use core::sync::atomic::{AtomicU64, Ordering};

/// One nominal second when the frequency is unknown: 4e9 TSC cycles.
pub const SECOND: u64 = 4_000_000_000;

/// Hypervisor CPUID leaves start here; EAX of this leaf is the highest one.
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// Timing leaf: EAX = TSC frequency in kHz.
const TIMING_LEAF: u32 = 0x4000_0010;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;

/// TSC kHz from CPUID, 0 if unknown.
static CPUID_KHZ: AtomicU64 = AtomicU64::new(0);

/// Read the TSC frequency from CPUID, if the hypervisor tells it. Boot CPU, once, early.
pub fn init() {
    if cpuid(1, 0)[2] & HYPERVISOR_BIT == 0 {
        return;
    }
    // Leaves from 0x4000_0000 on are reserved for hypervisors.
    let max = cpuid(HYPERVISOR_LEAF, 0)[0];
    if !(TIMING_LEAF..HYPERVISOR_LEAF + 0x1_0000).contains(&max) {
        return;
    }
    let khz = cpuid(TIMING_LEAF, 0)[0];
    CPUID_KHZ.store(u64::from(khz), Ordering::Relaxed);
}

/// TSC frequency in kHz: from CPUID, or the assumed 4 GHz.
pub fn tsc_khz() -> u64 {
    match CPUID_KHZ.load(Ordering::Relaxed) {
        0 => SECOND / 1000,
        khz => khz,
    }
}

/// Where [`tsc_khz`] comes from: `cpuid` or `assumed`.
pub fn tsc_source() -> &'static str {
    if CPUID_KHZ.load(Ordering::Relaxed) == 0 {
        "assumed"
    } else {
        "cpuid"
    }
}

/// TSC cycles in `ms` milliseconds.
pub fn ms(ms: u64) -> u64 {
    ms.saturating_mul(tsc_khz())
}

/// Microseconds in `cycles` TSC cycles.
pub fn cycles_to_us(cycles: u64) -> u64 {
    (u128::from(cycles) * 1000 / u128::from(tsc_khz())) as u64
}

/// Current TSC value.
pub fn now() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear, so it works at CPL3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in TSC time.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `cycles` from now.
    pub fn after(cycles: u64) -> Self {
        Self(now().saturating_add(cycles))
    }

    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::after(self::ms(ms))
    }

    /// Has it passed?
    pub fn passed(self) -> bool {
        now() >= self.0
    }
}
