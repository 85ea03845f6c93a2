//! Starting the application processors (APs) and running work on them.
//!
//! The boot CPU prepares, for each AP the MP table lists, a TSS and stacks (from
//! [`Frames`]), copies the real-mode trampoline (`entry.rs`) to [`TRAMPOLINE`], then sends
//! every AP INIT and a STARTUP IPI back to back, so that they start in parallel; an AP
//! that has not reported after [`RETRY_AFTER`] gets a second STARTUP IPI, as the MP
//! specification recommends (KVM's in-kernel LAPIC needs neither that nor the INIT-SIPI
//! delays of real hardware). Each AP takes the next CPU number in its assembly entry
//! (order of arrival, not APIC id), reaches [`ap_main`] at CPL3 on its own stack, records
//! its APIC id read from its LAPIC, and serves its mailbox: [`run_on`] posts a job and
//! sends a wake-up IPI; between jobs the AP sleeps in the wait gate (`hlt`), using no host
//! CPU.

use crate::bootparams::E820;
use crate::frames::Frames;
use crate::layout::{FAULT_STACK_SIZE, KERNEL_STACK_SIZE, MAX_CPUS, TRAMPOLINE, USER_STACK_SIZE};
use crate::mptable::MpTable;
use crate::sync::{RawCell, SpinLock};
use crate::time::{Deadline, SECOND};
use crate::{entry, gates, gdt, lapic};
use core::fmt;
use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// Next CPU number to hand out to an arriving AP (read by `entry.rs` with `lock xadd`).
pub static AP_NEXT: AtomicU32 = AtomicU32::new(0);
/// CPU numbers from this one on have no prepared stacks: such an AP parks in assembly.
pub static AP_LIMIT: AtomicU32 = AtomicU32::new(0);

/// Where an AP's entry assembly finds its stacks (layout shared with `entry.rs`).
#[repr(C)]
pub struct ApBoot {
    kernel_stack_top: u64,
    user_stack_top: u64,
}

/// Per-CPU start-up records, indexed by CPU number; written by the boot CPU before it
/// sends the STARTUP IPIs.
pub static AP_BOOT: RawCell<[ApBoot; MAX_CPUS]> = RawCell::new(
    [const {
        ApBoot {
            kernel_stack_top: 0,
            user_stack_top: 0,
        }
    }; MAX_CPUS],
);

/// Wait this long for all APs before a second STARTUP IPI.
const RETRY_AFTER: u64 = SECOND / 50;
/// Give up on APs that have not reported after this long.
const START_TIMEOUT: u64 = 2 * SECOND;
/// Give up on a job after this long.
const JOB_TIMEOUT: u64 = SECOND;
/// Stack memory per AP: fault stack, then kernel stack, then user stack.
const AP_STACKS: u64 = (FAULT_STACK_SIZE + KERNEL_STACK_SIZE + USER_STACK_SIZE) as u64;

/// A job for [`run_on`]: gets the CPU number, returns a value for the caller.
pub type Job = fn(usize) -> u64;

/// One CPU's state and mailbox.
struct Cpu {
    online: AtomicBool,
    apic_id: AtomicU32,
    /// The job to run, a `Job` as a pointer; set before `request` is bumped.
    job: AtomicPtr<()>,
    /// Bumped by `run_on` to post a job.
    request: AtomicU32,
    /// Set to `request` by the CPU when the job is done.
    done: AtomicU32,
    result: AtomicU64,
}

impl Cpu {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            apic_id: AtomicU32::new(0),
            job: AtomicPtr::new(core::ptr::null_mut()),
            request: AtomicU32::new(0),
            done: AtomicU32::new(0),
            result: AtomicU64::new(0),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
/// CPUs that are up, boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(0);
/// `run_on` callers take turns.
static RUN_LOCK: SpinLock<()> = SpinLock::new(());

/// Why not every AP the MP table lists came up.
#[derive(Debug, Clone, Copy)]
pub enum SmpError {
    /// The trampoline page is not RAM in the e820 map.
    TrampolineNotInRam,
    /// The trampoline does not fit in its page.
    TrampolineTooBig(usize),
    /// RAM for stacks ran out: only `prepared` of `listed` APs were started.
    OutOfMemory { prepared: usize, listed: usize },
    /// Only `up` of `started` APs reported before the timeout.
    Timeout { up: usize, started: usize },
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrampolineNotInRam => {
                write!(f, "trampoline page {TRAMPOLINE:#x} is not e820 RAM")
            }
            Self::TrampolineTooBig(n) => write!(f, "trampoline is {n} bytes, more than a page"),
            Self::OutOfMemory { prepared, listed } => {
                write!(f, "RAM for stacks ran out after {prepared} of {listed} APs")
            }
            Self::Timeout { up, started } => {
                write!(f, "only {up} of {started} started APs reported in time")
            }
        }
    }
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy)]
pub enum RunError {
    /// No such CPU, or it is not up.
    NotOnline(usize),
    /// The CPU did not finish the job in time.
    Timeout(usize),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOnline(cpu) => write!(f, "CPU {cpu} is not up"),
            Self::Timeout(cpu) => write!(f, "CPU {cpu} did not finish its job in time"),
        }
    }
}

/// Number of CPUs up, boot CPU included.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// APIC id of CPU `cpu`, if it is up.
pub fn apic_id(cpu: usize) -> Option<u32> {
    let slot = CPUS.get(cpu)?;
    slot.online
        .load(Ordering::Acquire)
        .then(|| slot.apic_id.load(Ordering::Relaxed))
}

/// The CPUs that are up: `(CPU number, APIC id)`, by CPU number. (Numbers are handed out
/// as APs arrive, so while APs are still starting there can be gaps.)
pub fn up() -> impl Iterator<Item = (usize, u32)> {
    (0..MAX_CPUS).filter_map(|cpu| Some((cpu, apic_id(cpu)?)))
}

/// Is the CPU with this APIC id up?
pub fn is_up(apic: u32) -> bool {
    up().any(|(_, id)| id == apic)
}

/// Register the boot CPU as CPU 0. Before any other function here.
pub fn init_bsp() {
    lapic::enable();
    CPUS[0].apic_id.store(lapic::id(), Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
    ONLINE.store(1, Ordering::Release);
}

fn copy_trampoline(e820: &E820) -> Result<(), SmpError> {
    let code = entry::trampoline();
    if code.len() > 4096 {
        return Err(SmpError::TrampolineTooBig(code.len()));
    }
    if !e820.is_ram(TRAMPOLINE, TRAMPOLINE + 4096) {
        return Err(SmpError::TrampolineNotInRam);
    }
    // SAFETY: the trampoline page is RAM, identity-mapped, and holds nothing the guest
    // still needs (see `layout::TRAMPOLINE`); `code` is not inside it.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE as *mut u8, code.len());
    }
    Ok(())
}

/// Give CPU `cpu` its stacks and TSS; `false` when RAM runs out.
fn prepare(cpu: usize, frames: &mut Frames) -> bool {
    let Some(base) = frames.alloc(AP_STACKS, 4096) else {
        return false;
    };
    let fault_top = base + FAULT_STACK_SIZE as u64;
    let kernel_top = fault_top + KERNEL_STACK_SIZE as u64;
    let user_top = kernel_top + USER_STACK_SIZE as u64;
    // SAFETY: `cpu < MAX_CPUS`; CPU `cpu` has not been started, and only the boot CPU
    // writes these records.
    unsafe {
        (*AP_BOOT.get())[cpu] = ApBoot {
            kernel_stack_top: kernel_top,
            user_stack_top: user_top,
        };
    }
    gdt::install_tss(cpu, kernel_top, fault_top);
    true
}

fn wait_for(count: usize, timeout: u64) {
    let deadline = Deadline::after(timeout);
    while online() < count && !deadline.passed() {
        core::hint::spin_loop();
    }
}

/// Start every AP in `mp` and wait for them to report. Boot CPU only, once.
pub fn start_aps(mp: &MpTable, frames: &mut Frames, e820: &E820) -> Result<(), SmpError> {
    let bsp = lapic::id();
    let aps = || {
        mp.apic_ids()
            .iter()
            .map(|&id| u32::from(id))
            .filter(move |&id| id != bsp)
    };
    let listed = aps().count();
    if listed == 0 {
        return Ok(());
    }
    copy_trampoline(e820)?;
    let prepared = (1..=listed.min(MAX_CPUS - 1))
        .take_while(|&cpu| prepare(cpu, frames))
        .count();
    AP_LIMIT.store(prepared as u32 + 1, Ordering::Relaxed);
    AP_NEXT.store(1, Ordering::Relaxed);
    // The APs read the records above once started by the IPIs below.
    fence(Ordering::SeqCst);
    let page = (TRAMPOLINE >> 12) as u8;
    for apic in aps().take(prepared) {
        lapic::send_init(apic);
        lapic::send_startup(apic, page);
    }
    wait_for(prepared + 1, RETRY_AFTER);
    for apic in aps().take(prepared).filter(|&apic| !is_up(apic)) {
        lapic::send_startup(apic, page);
    }
    wait_for(prepared + 1, START_TIMEOUT);
    if prepared < listed {
        return Err(SmpError::OutOfMemory { prepared, listed });
    }
    let up = online() - 1;
    if up < prepared {
        return Err(SmpError::Timeout {
            up,
            started: prepared,
        });
    }
    Ok(())
}

/// Where each AP arrives at CPL3 (from `entry.rs`), with its CPU number.
pub extern "C" fn ap_main(cpu: u32) -> ! {
    // `entry.rs` hands out numbers below AP_LIMIT <= MAX_CPUS only.
    let Some(slot) = CPUS.get(cpu as usize) else {
        panic!("AP got CPU number {cpu}, beyond {MAX_CPUS}");
    };
    lapic::enable();
    slot.apic_id.store(lapic::id(), Ordering::Relaxed);
    slot.online.store(true, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    let mut seen = 0;
    loop {
        let request = slot.request.load(Ordering::Acquire);
        if request == seen {
            gates::wait_while_equal(&slot.request, seen);
            continue;
        }
        seen = request;
        let job = slot.job.load(Ordering::Acquire);
        // SAFETY: `run_on` stores only `Job` function pointers in `job`, before bumping
        // `request` (Release), which was read above (Acquire).
        let job: Job = unsafe { core::mem::transmute::<*mut (), Job>(job) };
        slot.result.store(job(cpu as usize), Ordering::Relaxed);
        slot.done.store(request, Ordering::Release);
    }
}

/// Run `job` on CPU `cpu` and return its result. Called by the boot CPU (CPU 0); a job
/// for CPU 0 runs directly.
pub fn run_on(cpu: usize, job: Job) -> Result<u64, RunError> {
    if cpu == 0 {
        return Ok(job(0));
    }
    let apic = apic_id(cpu).ok_or(RunError::NotOnline(cpu))?;
    let slot = &CPUS[cpu];
    let _turn = RUN_LOCK.lock();
    let request = match slot.request.load(Ordering::Relaxed).wrapping_add(1) {
        0 => 1,
        n => n,
    };
    slot.job.store(job as *mut (), Ordering::Relaxed);
    slot.request.store(request, Ordering::Release);
    lapic::send_wake(apic);
    let deadline = Deadline::after(JOB_TIMEOUT);
    while slot.done.load(Ordering::Acquire) != request {
        if deadline.passed() {
            return Err(RunError::Timeout(cpu));
        }
        core::hint::spin_loop();
    }
    Ok(slot.result.load(Ordering::Relaxed))
}
