//! The vmm's part of the start-up trace (`bulkhead run --boot-timer`, or
//! `BULKHEAD_BOOT_TRACE=1` in the environment, which the launcher passes on): when each
//! step of its start happened, CLOCK_MONOTONIC nanoseconds (the clock every process of
//! the host shares, so the launcher's marks and these line up). Marks are atomics set
//! once, from any thread, without allocating; [`print`] writes them to stderr as
//! `bulkhead-trace: <ns> vmm <step>` lines (the launcher relays them as `vmm| ...`).

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that turns tracing on.
pub const ENV: &str = "BULKHEAD_BOOT_TRACE";

/// A step of the vmm's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Step {
    /// `main` was entered (the dynamic loader and Rust's start-up are behind).
    Main,
    /// `/dev/kvm` is open.
    KvmOpened,
    /// Guest memory (memfd) is made and mapped.
    Memory,
    /// The VM exists with its memory region (`KVM_SET_USER_MEMORY_REGION`).
    VmCreated,
    /// The vCPUs exist (all but the boot vCPU's entry state).
    VcpusCreated,
    /// The jail is finished (empty root, identity, landlock).
    Jailed,
    /// The launcher's handshake is done.
    Handshake,
    /// Every backend answered the vhost-user handshake (the virtio devices exist).
    DevicesConnected,
    /// The kernel is loaded and the boot vCPU set to enter it: ready to run.
    Built,
    /// `Ready` was sent to the launcher.
    Ready,
    /// The first vCPU thread runs.
    VcpuThread,
    /// The first vCPU thread has its seccomp filter.
    VcpuConfined,
    /// The guest wrote its first line on the serial console.
    FirstLine,
}

const STEPS: [(Step, &str); 13] = [
    (Step::Main, "main"),
    (Step::KvmOpened, "kvm-opened"),
    (Step::Memory, "guest-memory"),
    (Step::VmCreated, "vm-created"),
    (Step::VcpusCreated, "vcpus-created"),
    (Step::Jailed, "jailed"),
    (Step::Handshake, "launcher-handshake"),
    (Step::DevicesConnected, "devices-connected"),
    (Step::Built, "kernel-loaded"),
    (Step::Ready, "ready"),
    (Step::VcpuThread, "vcpu-thread"),
    (Step::VcpuConfined, "vcpu-confined"),
    (Step::FirstLine, "guest-first-line"),
];

static MARKS: [AtomicU64; STEPS.len()] = [const { AtomicU64::new(0) }; STEPS.len()];

/// Records `step` now, unless it was already recorded.
pub fn mark(step: Step) {
    let slot = &MARKS[step as usize];
    if slot.load(Ordering::Relaxed) == 0 {
        let now = crate::kvm::run_loop::monotonic_ns();
        let _ = slot.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The vmm's CPU time (user + system, all threads) when it said Ready, in microseconds.
pub static READY_CPU_US: AtomicU64 = AtomicU64::new(0);

/// Records the process's CPU time so far as [`READY_CPU_US`].
pub fn record_cpu() {
    if let Some(us) = cpu_us(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID) {
        READY_CPU_US.store(us, Ordering::Relaxed);
    }
}

/// CPU time so far on `clock` (a process's or a thread's CPU-time clock) in µs.
pub fn cpu_us(clock: nix::time::ClockId) -> Option<u64> {
    nix::time::clock_gettime(clock)
        .ok()
        .map(|ts| ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000)
}

/// Whether the environment asks for the trace.
pub fn wanted() -> bool {
    std::env::var_os(ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The recorded steps and the first guest entry, in time order, as trace lines.
pub fn lines() -> Vec<String> {
    let first_entry = crate::kvm::run_loop::FIRST_ENTRY_NS.load(Ordering::Relaxed);
    let mut marks: Vec<(u64, &str)> = STEPS
        .iter()
        .map(|&(step, name)| (MARKS[step as usize].load(Ordering::Relaxed), name))
        .chain(std::iter::once((first_entry, "first-kvm-run")))
        .filter(|&(t, _)| t != 0)
        .collect();
    marks.sort();
    marks
        .into_iter()
        .map(|(t, name)| format!("bulkhead-trace: {t} vmm {name}"))
        .collect()
}

/// Prints [`lines`] to stderr.
pub fn print() {
    for line in lines() {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_its_own_slot() {
        for (i, (step, _)) in STEPS.iter().enumerate() {
            assert_eq!(*step as usize, i, "{step:?}");
        }
    }

    #[test]
    fn marks_are_kept_once_and_printed_in_order() {
        mark(Step::Memory);
        let first = MARKS[Step::Memory as usize].load(Ordering::Relaxed);
        assert_ne!(first, 0);
        mark(Step::Memory);
        assert_eq!(MARKS[Step::Memory as usize].load(Ordering::Relaxed), first);
        mark(Step::Ready);
        let lines = lines();
        let memory = lines.iter().position(|l| l.ends_with(" vmm guest-memory"));
        let ready = lines.iter().position(|l| l.ends_with(" vmm ready"));
        assert!(memory.is_some() && ready.is_some(), "{lines:?}");
        assert!(memory < ready, "{lines:?}");
    }
}
