//! The vCPU threads: each runs `KVM_RUN` until the VM stops, handing exits to
//! [`handle_exit`], a free function that tests call with made-up exits.
//!
//! Stopping: the main thread sets the shared stop flag and sends [`kick_signal`] to each
//! vCPU thread until it has finished; the signal's no-op handler makes a `KVM_RUN` in
//! progress return `EINTR`, and the loop sees the flag before it enters again.

use bulkhead_ratelimit::{debug_limited, trace_limited};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use nix::time::{clock_gettime, ClockId};

use crate::devices::bus::{Bus, Unclaimed};
use crate::devices::VmStop;
use crate::pci::PciBus;

use super::pause::Pause;

/// The port and MMIO buses the vCPUs dispatch to.
#[derive(Default, Clone)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
    /// The PCI bus (with `--transport pci`): MMIO no fixed device claims goes to the BARs
    /// wherever the guest put them.
    pub pci: Option<Arc<PciBus>>,
}

impl IoBuses {
    fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<Option<VmStop>, Unclaimed> {
        match self.mmio.write(addr, data) {
            Err(Unclaimed) if self.pci.as_ref().is_some_and(|p| p.bar_write(addr, data)) => {
                Ok(None)
            }
            r => r,
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio.read(addr, data) || self.pci.as_ref().is_some_and(|p| p.bar_read(addr, data))
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Stop the VM.
    Stop(VmStop),
}

/// CLOCK_MONOTONIC time (ns) at which the first vCPU first entered the guest; 0 before.
/// Read by `bulkhead bench` through `bulkhead run --report-stats`.
pub static FIRST_ENTRY_NS: AtomicU64 = AtomicU64::new(0);

/// Exits handled in user space since the process started, by kind (for `bulkhead bench`:
/// the block data path should cause none).
pub static EXIT_COUNTS: ExitCounts = ExitCounts::new();

/// Counters of vCPU exits to the vmm.
pub struct ExitCounts {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Every other exit.
    pub other: AtomicU64,
}

impl ExitCounts {
    const fn new() -> Self {
        ExitCounts {
            pio: AtomicU64::new(0),
            mmio: AtomicU64::new(0),
            other: AtomicU64::new(0),
        }
    }

    fn count(&self, exit: &VcpuExit<'_>) {
        let counter = match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &self.pio,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &self.mmio,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The current CLOCK_MONOTONIC time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux; were it to fail, 0 reads as "not yet".
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// The state of a vCPU's run loop.
enum VcpuState {
    Running,
    Finished,
}

/// Handles one exit of vCPU `index`.
pub fn handle_exit(index: u32, exit: VcpuExit<'_>, io: &IoBuses) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => match io.pio.write(u64::from(port), data) {
            Ok(Some(stop)) => ExitAction::Stop(stop),
            Ok(None) => ExitAction::Continue,
            Err(_unclaimed) => {
                trace_limited!("vcpu{index}: write to unclaimed port {port:#x} ignored");
                ExitAction::Continue
            }
        },
        VcpuExit::IoIn(port, data) => {
            io.pio.read(u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => match io.mmio_write(addr, data) {
            Ok(Some(stop)) => ExitAction::Stop(stop),
            Ok(None) => ExitAction::Continue,
            Err(_unclaimed) => {
                debug_limited!("vcpu{index}: write to unclaimed MMIO address {addr:#x} ignored");
                ExitAction::Continue
            }
        },
        VcpuExit::MmioRead(addr, data) => {
            if !io.mmio_read(addr, data) {
                debug_limited!("vcpu{index}: read of unclaimed MMIO address {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Stop(VmStop::TripleFault { vcpu: index }),
        VcpuExit::InternalError => ExitAction::Stop(VmStop::Error {
            vcpu: index,
            what: "KVM internal error (KVM_EXIT_INTERNAL_ERROR; on hosts without hardware \
                   virtualisation often an instruction KVM cannot emulate)"
                .into(),
        }),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Stop(VmStop::Error {
            vcpu: index,
            what: format!(
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, reason {reason:#x}, host cpu {cpu})"
            ),
        }),
        VcpuExit::SystemEvent(kind, _) => {
            log::info!("vcpu{index}: system event {kind}: stopping");
            ExitAction::Stop(VmStop::Reset)
        }
        other => ExitAction::Stop(VmStop::Error {
            vcpu: index,
            what: format!("unexpected exit {other:?}"),
        }),
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (process-wide) no-op handler for [`kick_signal`].
pub fn install_kick_handler() -> io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Starts vCPU `index` on a thread named `vcpu<index>`, which installs `filter` (the vCPU
/// role's, compiled) before it enters the guest. The first [`VmStop`] it decides on
/// is sent on `events`; it parks before entering the guest while `pause` says so.
pub fn spawn(
    index: u32,
    mut vcpu: VcpuFd,
    filter: Arc<Option<bulkhead_seccomp::Filter>>,
    io: Arc<IoBuses>,
    stop: Arc<AtomicBool>,
    pause: Arc<Pause>,
    events: Sender<VmStop>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            crate::trace::mark(crate::trace::Step::VcpuThread);
            // Confined before the guest runs: every exit is guest-controlled input.
            if let Err(e) = bulkhead_seccomp::thread::confine_current_thread_compiled(
                || format!("vcpu{index}"),
                bulkhead_seccomp::Role::Vcpu,
                filter.as_ref().as_ref(),
            ) {
                let _ = events.send(VmStop::Error {
                    vcpu: index,
                    what: format!("installing its seccomp filter: {e}"),
                });
                return;
            }
            crate::trace::mark(crate::trace::Step::VcpuConfined);
            let mut state = VcpuState::Running;
            while let VcpuState::Running = state {
                pause.park_if_paused(&stop);
                state = step(index, &mut vcpu, &io, &stop, &events);
            }
        })
}

fn step(
    index: u32,
    vcpu: &mut VcpuFd,
    io: &IoBuses,
    stop: &AtomicBool,
    events: &Sender<VmStop>,
) -> VcpuState {
    if stop.load(Ordering::Acquire) {
        return VcpuState::Finished;
    }
    if FIRST_ENTRY_NS.load(Ordering::Relaxed) == 0 {
        let _ = FIRST_ENTRY_NS.compare_exchange(
            0,
            monotonic_ns(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    let action = match vcpu.run() {
        Ok(exit) => {
            EXIT_COUNTS.count(&exit);
            handle_exit(index, exit, io)
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
        Err(e) => ExitAction::Stop(VmStop::Error {
            vcpu: index,
            what: format!("KVM_RUN failed: {e}"),
        }),
    };
    match action {
        ExitAction::Continue => VcpuState::Running,
        ExitAction::Stop(reason) => {
            let reason = match reason {
                VmStop::Error { vcpu: v, what } => VmStop::Error {
                    vcpu: v,
                    what: with_rip(vcpu, what),
                },
                r => r,
            };
            // The receiver is gone only when the VM is already stopping.
            let _ = events.send(reason);
            VcpuState::Finished
        }
    }
}

fn with_rip(vcpu: &VcpuFd, what: String) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!("{what} at rip {:#x}", r.rip),
        Err(_) => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::exit_port::{ExitPort, EXIT_PORT};
    use std::sync::Mutex;

    fn buses() -> IoBuses {
        let mut io = IoBuses::default();
        io.pio
            .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))
            .unwrap();
        io
    }

    #[test]
    fn exit_port_write_stops_with_status() {
        let a = handle_exit(0, VcpuExit::IoOut(0xf4, &[3]), &buses());
        assert_eq!(a, ExitAction::Stop(VmStop::GuestStatus(3)));
    }

    #[test]
    fn unclaimed_io_is_harmless() {
        let io = buses();
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x80, &[1]), &io),
            ExitAction::Continue
        );
        let mut d = [0u8; 2];
        assert_eq!(
            handle_exit(0, VcpuExit::IoIn(0x61, &mut d), &io),
            ExitAction::Continue
        );
        assert_eq!(d, [0xff, 0xff]);
        let mut d = [0u8; 4];
        assert_eq!(
            handle_exit(1, VcpuExit::MmioRead(0xd000_0000, &mut d), &io),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(1, VcpuExit::MmioWrite(0xd000_0000, &d), &io),
            ExitAction::Continue
        );
    }

    #[test]
    fn unclaimed_mmio_goes_to_the_pci_bars_and_fixed_devices_come_first() {
        use crate::pci::function::{BarRange, PciFunction};
        struct Bar(Vec<(u64, Vec<u8>)>);
        impl PciFunction for Bar {
            fn config_read(&mut self, _: usize, _: &mut [u8]) {}
            fn config_write(&mut self, _: usize, _: &[u8]) {}
            fn bar_ranges(&self) -> Vec<BarRange> {
                vec![BarRange {
                    bar: 0,
                    base: 0xc000_0000,
                    size: 0x1000,
                }]
            }
            fn bar_read(&mut self, _: u8, offset: u64, data: &mut [u8]) {
                data.fill(offset as u8);
            }
            fn bar_write(&mut self, _: u8, offset: u64, data: &[u8]) {
                self.0.push((offset, data.to_vec()));
            }
        }
        let f = Arc::new(Mutex::new(Bar(vec![])));
        let mut pci = crate::pci::PciBus::default();
        pci.insert(1, f.clone());
        let mut io = buses();
        io.pci = Some(Arc::new(pci));
        let mut d = [0u8; 2];
        assert_eq!(
            handle_exit(0, VcpuExit::MmioRead(0xc000_0012, &mut d), &io),
            ExitAction::Continue
        );
        assert_eq!(d, [0x12, 0x12]);
        handle_exit(0, VcpuExit::MmioWrite(0xc000_0004, &[7]), &io);
        handle_exit(0, VcpuExit::MmioWrite(0xc000_1000, &[8]), &io);
        assert_eq!(
            f.lock().unwrap().0,
            vec![(4, vec![7])],
            "past the BAR: nothing"
        );
        // A fixed device at the same address wins.
        io.mmio
            .insert(0xc000_0000, 0x10, Arc::new(Mutex::new(ExitPort)))
            .unwrap();
        handle_exit(0, VcpuExit::MmioWrite(0xc000_0004, &[9]), &io);
        assert_eq!(f.lock().unwrap().0.len(), 1);
    }

    #[test]
    fn triple_fault_and_internal_error_stop() {
        let io = buses();
        assert_eq!(
            handle_exit(2, VcpuExit::Shutdown, &io),
            ExitAction::Stop(VmStop::TripleFault { vcpu: 2 })
        );
        assert!(matches!(
            handle_exit(1, VcpuExit::InternalError, &io),
            ExitAction::Stop(VmStop::Error { vcpu: 1, .. })
        ));
    }
}
