//! libFuzzer target: PCI configuration accesses (ECAM and 0xCF8/0xCFC, any width and offset, any function) and BAR0 accesses wherever the guest moved the BARs, on a host bridge and two virtio-pci functions over a checking fake KVM.
//! Crashes (panics, out-of-memory, timeouts) are bugs in bulkhead-vmm.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_vmm::fuzz::fuzz_pci(data);
});
