//! PCI scenarios (virtio-pci transport).
//!
//! - `pci-probe`: scans bus 0 through the ECAM of the ACPI MCFG and prints, per function,
//!   `pci <bdf> vendor=0x<v> device=0x<d> class=0x<c> rev=<r> bar0=0x<a>` and for each
//!   virtio function `pci <bdf> virtio type=<n> (<name>) common=0x<o> notify=0x<o>*<mult>
//!   isr=0x<o> device_cfg=0x<o> msix=<entries>`, then `pci functions=<n> virtio=<n>`.
//!   Fails without an MCFG, or when a virtio function's capabilities are unusable.
//! - `pci-hostile`: on the disk (`bulkhead.blk.disk`, which must be virtio-pci) does what
//!   a hostile driver might, checking after each step that the VM goes on and the disk
//!   still reads sector 0 with the same data: moves BAR0 over a page of guest RAM (the RAM
//!   must still read and write as RAM), points queue 0's MSI-X entry at RAM instead of the
//!   LAPIC and has the device interrupt (the page must not change), moves BAR0 over
//!   another virtio-pci function's BAR and back (if there is one), writes all-ones with
//!   every access size at every offset of the first 256 bytes of configuration space, then
//!   restores what it saved. Prints `blk<N> pci-hostile <step> ok` per step.

use super::blk::{self, run_ok};
use crate::disks::{self, DiskError};
use crate::frames::PAGE;
use crate::machine::Machine;
use crate::mmio::Mmio;
use crate::pci::{self, cfg};
use crate::pcibus::{self, Place};
use crate::time::Deadline;
use crate::virtio::blk::Request;
use crate::virtio::pci::{msix, LayoutError};
use crate::virtio::{device_id, Regs};
use core::fmt;

/// Why a PCI scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The ACPI tables have no MCFG (or the guest did not find one).
    NoEcam,
    /// The ECAM is outside the mapped hole.
    Unreachable(pcibus::Unreachable),
    /// A virtio function's capabilities are unusable.
    Layout(pcibus::PciProblem),
    /// The disk is not a virtio-pci function.
    NotPci,
    /// A block-layer failure.
    Blk(blk::Error),
    /// RAM changed under a hostile step.
    RamChanged(&'static str, u64),
    /// After restoring, the function reads differently.
    NotRestored(&'static str),
    /// The disk's data changed.
    DataChanged(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEcam => write!(f, "no PCI ECAM (no ACPI MCFG table)"),
            Self::Unreachable(e) => e.fmt(f),
            Self::Layout(e) => e.fmt(f),
            Self::NotPci => write!(f, "the disk is not a virtio-pci function"),
            Self::Blk(e) => e.fmt(f),
            Self::RamChanged(step, at) => write!(f, "{step}: guest RAM at {at:#x} changed"),
            Self::NotRestored(what) => write!(f, "after restoring, {what} differs"),
            Self::DataChanged(step) => write!(f, "{step}: sector 0 reads differently"),
        }
    }
}

impl From<blk::Error> for Error {
    fn from(e: blk::Error) -> Self {
        Self::Blk(e)
    }
}

impl From<DiskError> for Error {
    fn from(e: DiskError) -> Self {
        Self::Blk(blk::Error::Disk(e))
    }
}

/// `pci-probe`.
pub fn probe(_machine: &mut Machine) -> Result<(), Error> {
    let ecam = disks::lock().ecam().ok_or(Error::NoEcam)?;
    let bus = pcibus::scan(&ecam).map_err(Error::Unreachable)?;
    let (mut functions, mut virtio) = (0, 0);
    let mut problem = None;
    for f in bus.functions() {
        functions += 1;
        let h = f.header;
        let bar0 = pci::bar(&f.regs(), 0).map_or(0, |b| b.address);
        crate::say!(
            "pci {} vendor={:#06x} device={:#06x} class={:#08x} rev={} bar0={bar0:#x}",
            f.bdf,
            h.vendor,
            h.device,
            h.class,
            h.revision
        );
        let Some(kind) = f.virtio_type() else {
            continue;
        };
        virtio += 1;
        match f.virtio() {
            Ok(p) => {
                let l = p.layout;
                crate::say!(
                    "pci {} virtio type={kind} ({}) bar{}={:#x} common={:#x} notify={:#x}*{} isr={:#x} device_cfg={:#x} msix={}",
                    f.bdf,
                    device_id::name(kind),
                    l.bar(),
                    p.bar,
                    l.common.offset,
                    l.notify.offset,
                    l.notify_multiplier,
                    l.isr.offset,
                    l.device.map_or(0, |d| d.offset),
                    l.msix.map_or(0, |m| m.table_size)
                );
            }
            Err(e) => {
                crate::say!("pci {} virtio type={kind}: {e}", f.bdf);
                problem = problem.or(Some(e));
            }
        }
    }
    crate::say!("pci functions={functions} virtio={virtio}");
    match problem {
        Some(e) => Err(Error::Layout(e)),
        None => Ok(()),
    }
}

/// What sector 0 reads (the first 64 bytes), through the disk's slot 0.
fn sector0(disk: &mut disks::Disk) -> Result<[u8; 64], Error> {
    run_ok(disk, &Request::read(0, 1))?;
    let mut out = [0u8; 64];
    out.copy_from_slice(&disk.data(0)[..64]);
    Ok(out)
}

/// A page of RAM filled with a pattern; returns its address.
fn pattern_page(frames: &mut crate::frames::Frames) -> Result<u64, Error> {
    let page =
        frames
            .alloc(PAGE, PAGE)
            .ok_or(Error::Blk(blk::Error::Disk(DiskError::OutOfMemory(
                "pci-hostile",
            ))))?;
    for i in 0..PAGE / 8 {
        // SAFETY: a fresh page from the allocator, identity-mapped, used only here.
        unsafe { ((page + 8 * i) as *mut u64).write_volatile(0x5a5a_0000_0000_0000 | i) };
    }
    Ok(page)
}

/// The page still holds the pattern (`skip` words at the start were written on purpose).
fn pattern_intact(page: u64, skip: u64) -> Option<u64> {
    (skip..PAGE / 8).find_map(|i| {
        // SAFETY: as in `pattern_page`.
        let v = unsafe { ((page + 8 * i) as *const u64).read_volatile() };
        (v != 0x5a5a_0000_0000_0000 | i).then_some(page + 8 * i)
    })
}

/// Another virtio-pci function than `p`, if the bus has one.
fn other_function(
    ecam: Option<crate::acpi::Ecam>,
    p: &pcibus::PciDevice,
) -> Option<pcibus::PciDevice> {
    let bus = pcibus::scan(&ecam?).ok()?;
    let found = bus
        .functions()
        .filter(|f| f.bdf != p.bdf && f.virtio_type().is_some())
        .find_map(|f| f.virtio().ok());
    found
}

/// `pci-hostile`.
pub fn hostile(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let ecam = registry.ecam();
    let disk = registry.open_configured(machine)?;
    let Place::Pci(p) = disk.place() else {
        return Err(Error::NotPci);
    };
    disk.ensure_slots(&mut machine.frames, 1, 512)?;
    let name = disk.name();
    let before = sector0(disk)?;
    // SAFETY: the function's configuration space and BAR, checked reachable by the scan;
    // this scenario is their only user while it runs (the disk is idle between steps).
    let (cfgs, bar) = unsafe { (Mmio::new(p.cfg), Mmio::new(p.bar)) };
    let check = |disk: &mut disks::Disk, step: &'static str| -> Result<(), Error> {
        if sector0(disk)? != before {
            return Err(Error::DataChanged(step));
        }
        crate::say!("{name} pci-hostile {step} ok");
        Ok(())
    };

    // 1. BAR0 over a page of RAM, memory decoding on; then back.
    let page = pattern_page(&mut machine.frames)?;
    let bar_index = p.layout.bar();
    let bar_at = cfg::BAR0 + 4 * u32::from(bar_index);
    let (low, high) = (cfgs.read32(bar_at), cfgs.read32(bar_at + 4));
    cfgs.write32(bar_at, page as u32 | (low & 0xf));
    cfgs.write32(bar_at + 4, (page >> 32) as u32);
    // SAFETY: the page is ours (allocated above).
    unsafe { (page as *mut u64).write_volatile(0x1234_5678) };
    // SAFETY: as above.
    let back = unsafe { (page as *const u64).read_volatile() };
    if back != 0x1234_5678 {
        return Err(Error::RamChanged("bar-over-ram", page));
    }
    if let Some(at) = pattern_intact(page, 1) {
        return Err(Error::RamChanged("bar-over-ram", at));
    }
    cfgs.write32(bar_at, low);
    cfgs.write32(bar_at + 4, high);
    if pci::bar(&cfgs, bar_index).map(|b| b.address) != Ok(p.bar) {
        return Err(Error::NotRestored("BAR"));
    }
    check(disk, "bar-over-ram")?;

    // 1b. BAR0 over another virtio-pci function's BAR (if there is one); then back. The
    //     other function must read the same afterwards.
    let other = other_function(ecam, &p);
    if let Some(o) = other {
        // SAFETY: the other function's BAR, checked reachable by the scan; only read here.
        let obar = unsafe { Mmio::new(o.bar) };
        let status_at = o.layout.common.offset + crate::virtio::pci::common::DEVICE_STATUS;
        let before_other = obar.read8(status_at);
        cfgs.write32(bar_at, o.bar as u32 | (low & 0xf));
        cfgs.write32(bar_at + 4, (o.bar >> 32) as u32);
        let _ = obar.read8(status_at);
        cfgs.write32(bar_at, low);
        cfgs.write32(bar_at + 4, high);
        if obar.read8(status_at) != before_other {
            return Err(Error::NotRestored("the other function's device status"));
        }
        check(disk, "bar-over-bar")?;
    }

    // 2. Queue 0's MSI-X entry (entry 1) aimed at RAM; the device interrupts; then back.
    if let Some(m) = p.layout.msix.filter(|m| m.table_size > 1) {
        let page = pattern_page(&mut machine.frames)?;
        let entry = m.table.offset + msix::ENTRY;
        let saved = [0, 4, 8, 12].map(|o| bar.read32(entry + o));
        bar.write32(entry + 12, msix::MASKED);
        bar.write32(entry, page as u32);
        bar.write32(entry + 4, (page >> 32) as u32);
        bar.write32(entry + 12, 0);
        disk.blk.queue.set_interrupts(true);
        let result = run_ok(disk, &Request::read(0, 1));
        disk.blk.queue.set_interrupts(false);
        let quiet = Deadline::after_ms(20);
        while !quiet.passed() {
            core::hint::spin_loop();
        }
        bar.write32(entry + 12, msix::MASKED);
        for (o, v) in [0, 4, 8, 12].into_iter().zip(saved) {
            bar.write32(entry + o, v);
        }
        result?;
        if let Some(at) = pattern_intact(page, 0) {
            return Err(Error::RamChanged("msix-bad-address", at));
        }
        check(disk, "msix-bad-address")?;
    }

    // 3. All-ones at every offset with every access size, then the saved bytes back (in
    //    dwords, skipping the PCI-cfg capability's data window so that restoring does not
    //    itself write through it).
    let mut saved = [0u32; 64];
    for (i, s) in saved.iter_mut().enumerate() {
        *s = cfgs.read32(4 * i as u32);
    }
    let data_window = p.layout.pci_cfg.map(|c| c + 16);
    for offset in 0..256u32 {
        cfgs.write8(offset, 0xff);
    }
    for offset in (0..256u32).step_by(2) {
        cfgs.write16(offset, 0xffff);
    }
    for offset in (0..256u32).step_by(4) {
        cfgs.write32(offset, 0xffff_ffff);
    }
    for (i, &s) in saved.iter().enumerate() {
        let offset = 4 * i as u32;
        if Some(offset) != data_window {
            cfgs.write32(offset, s);
        }
    }
    let layout = crate::virtio::pci::layout(&cfgs)
        .map_err(|e: LayoutError| Error::Layout(pcibus::PciProblem::Layout(p.bdf, e)))?;
    if layout != p.layout {
        return Err(Error::NotRestored("the capability layout"));
    }
    if pci::bar(&cfgs, bar_index).map(|b| b.address) != Ok(p.bar) {
        return Err(Error::NotRestored("BAR"));
    }
    check(disk, "config-writes")?;
    Ok(())
}
