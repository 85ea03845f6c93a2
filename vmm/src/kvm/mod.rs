//! KVM state: the VM, its vCPUs, CPUID and MSRs, and the vCPU run loop.

pub mod cpuid;
pub mod cpuid_table;
pub mod irq_routing;
pub mod msrs;
pub mod pause;
pub mod run_loop;
pub mod vcpu;
pub mod vm;
