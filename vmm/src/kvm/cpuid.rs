//! CPUID for each vCPU: what KVM supports, filtered, with per-vCPU topology.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, each vCPU gets its APIC id (leaves 0x1, 0xb,
//! 0x1f, and AMD's 0x8000_001e), a topology of one socket with one thread per core and
//! `cpus` cores (leaves 0x4, 0xb, 0x1f, 0x8000_0008, 0x8000_001e), the hypervisor bit, and no thermal/power-management or
//! performance-monitoring features (leaves 0x6, 0xa), which the VMM does not emulate.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 0x1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x1 ECX: performance/debug capability MSR (not emulated).
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 0x1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Topology level types of leaves 0xb and 0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items (x2APIC id shift).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `index` of `cpus`.
pub fn filter(entries: &mut [kvm_cpuid_entry2], index: u32, cpus: u32) {
    let apic_id = index;
    let core_shift = bits_for(cpus);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpus.min(255)) << 16);
                e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_PDCM;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package in 31:26, threads
                // sharing this cache in 25:14 (L3 shared by all, lower levels per core).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((cpus - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            0x6 | 0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = cpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 and the APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | (core_shift << 12) | (cpus - 1).min(255);
            }
            0x8000_001e => {
                // AMD (TOPOEXT): the extended APIC id; the core (compute unit) id in
                // EBX 7:0 with one thread per core (15:8 = 0); node 0 of one (ECX 0).
                // KVM's answer carries the host CPU's that ran the ioctl.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// The hypervisor timing leaf (as VMware and Cloud Hypervisor define it): TSC and APIC bus
/// frequencies in kHz, so a guest can time things without calibrating.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// The hypervisor vendor leaf; its EAX is the highest hypervisor leaf.
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// KVM's local APIC timer runs at 1 GHz.
const APIC_BUS_KHZ: u32 = 1_000_000;

/// Adds the timing leaf for a TSC of `tsc_khz` (raising the highest hypervisor leaf to it).
pub fn add_timing_leaf(entries: &mut Vec<kvm_cpuid_entry2>, tsc_khz: u32) {
    entries.retain(|e| e.function != TIMING_LEAF);
    for e in entries.iter_mut().filter(|e| e.function == HYPERVISOR_LEAF) {
        e.eax = e.eax.max(TIMING_LEAF);
    }
    entries.push(kvm_cpuid_entry2 {
        function: TIMING_LEAF,
        eax: tsc_khz,
        ebx: APIC_BUS_KHZ,
        ..Default::default()
    });
}

/// The CPUID of vCPU `index` of `cpus`, from KVM's supported set (`supported`, asked once
/// per VM: see [`super::cpuid_table`]); with the timing leaf when the TSC frequency is known.
pub fn for_vcpu(
    supported: &[kvm_cpuid_entry2],
    index: u32,
    cpus: u32,
    tsc_khz: Option<u32>,
) -> Result<CpuId, kvm_ioctls::Error> {
    let mut entries = supported.to_vec();
    filter(&mut entries, index, cpus);
    if let Some(khz) = tsc_khz {
        add_timing_leaf(&mut entries, khz);
    }
    CpuId::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = vec![entry(1, 0, 0x906ea, 0x0010_0800, ECX_PDCM, 0)];
        filter(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ecx & ECX_PDCM, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![entry(1, 0, 0, 0, 0, EDX_HTT)];
        filter(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_per_vcpu() {
        let mut e = vec![
            entry(0xb, 0, 9, 9, 9, 9),
            entry(0xb, 1, 9, 9, 9, 9),
            entry(0xb, 2, 9, 9, 9, 9),
        ];
        filter(&mut e, 5, 6);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 1, 0x100, 5));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (3, 6, 0x201, 5));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx & 0xff00), (0, 0, 0));
    }

    #[test]
    fn amd_extended_apic_id_is_the_vcpus() {
        // As a host CPU 13 (of a two-thread core, node 1 of two) would have answered.
        let mut e = vec![entry(0x8000_001e, 0, 13, 0x0106, 0x0101, 0)];
        filter(&mut e, 2, 4);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (2, 2, 0, 0));
    }

    #[test]
    fn pmu_and_thermal_leaves_are_hidden() {
        let mut e = vec![entry(0xa, 0, 0x0703_0804, 1, 2, 3), entry(6, 0, 4, 5, 6, 7)];
        filter(&mut e, 0, 1);
        for x in e {
            assert_eq!((x.eax, x.ebx, x.ecx, x.edx), (0, 0, 0, 0));
        }
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let l1 = (1 << 5) | 1;
        let l3 = (3 << 5) | 3;
        let mut e = vec![entry(4, 0, l1, 0, 0, 0), entry(4, 3, l3, 0, 0, 0)];
        filter(&mut e, 0, 4);
        assert_eq!(e[0].eax >> 26, 3);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn timing_leaf_is_added_once_and_announced() {
        let mut e = vec![entry(
            0x4000_0000,
            0,
            0x4000_0001,
            0x4b4d_564b,
            0x564b_4d56,
            0x4d,
        )];
        add_timing_leaf(&mut e, 2_600_000);
        add_timing_leaf(&mut e, 2_600_000);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].eax, TIMING_LEAF);
        assert_eq!(
            (e[1].function, e[1].eax, e[1].ebx),
            (TIMING_LEAF, 2_600_000, 1_000_000)
        );
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
