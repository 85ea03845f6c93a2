//! The virtio-pci modern transport (virtio 1.2, 4.1): a PCI function with vendor 0x1af4
//! and device 0x1040 + virtio type, whose vendor-specific capabilities say where in its
//! BAR the common configuration, the notify area, the ISR and the device configuration
//! are; plus an MSI-X capability for its interrupts.
//!
//! [`layout`] walks the capability list (through the function's configuration space,
//! [`Regs`] over ECAM in the guest) and checks what it finds; [`PciTransport`] drives the
//! device through the structures in the BAR (another [`Regs`]). Nothing here hard-codes an
//! offset inside the BAR: every structure is where its capability says.
//!
//! Interrupts: with an [`MsiTarget`], negotiation enables MSI-X (function masked while the
//! table is written), points table entry 0 (the configuration-change vector) and every
//! other entry (one per queue) at a LAPIC with the target's IDT vectors, unmasks them,
//! and sets `msix_config` = 0; each queue set up gets `queue_msix_vector` = 1 + its index.
//! The device answers 0xffff ([`NO_VECTOR`]) for a vector it cannot use; what it read back
//! is kept ([`PciTransport::config_vector`], [`PciTransport::queue_vector`]). The driver
//! still polls its used rings, so a refused vector costs only the interrupt.

use super::queue::QueueMemory;
use super::transport::{handshake, InitError, Negotiated, Transport};
use super::Regs;
use crate::pci::{self, CapError, CAP_MSIX, CAP_VENDOR};
use core::cell::Cell;
use core::fmt;

/// PCI vendor ID of virtio devices.
pub const VENDOR: u16 = 0x1af4;
/// Modern (virtio 1.x only) devices: device ID 0x1040 + virtio device type.
pub const DEVICE_BASE: u16 = 0x1040;
/// A vector number a device could not use (`msix_config`, `queue_msix_vector`).
pub const NO_VECTOR: u16 = 0xffff;
/// Queues per device this transport keeps notify addresses and vectors for.
pub const MAX_QUEUES: usize = 8;
/// MSI-X table entries programmed at most (configuration + [`MAX_QUEUES`]).
pub const MAX_VECTORS: u16 = MAX_QUEUES as u16 + 1;

/// `cfg_type` of the virtio capabilities.
pub mod cfg_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// PCI configuration access (a window into the BARs through configuration space).
    pub const PCI_CFG: u8 = 5;
}

/// Offsets in the common configuration structure.
pub mod common {
    /// u32: which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u32 = 0x00;
    /// u32: device features.
    pub const DEVICE_FEATURE: u32 = 0x04;
    /// u32: which 32 bits `DRIVER_FEATURE` sets.
    pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
    /// u32: accepted features.
    pub const DRIVER_FEATURE: u32 = 0x0c;
    /// u16: MSI-X vector for configuration changes.
    pub const MSIX_CONFIG: u32 = 0x10;
    /// u16: number of queues.
    pub const NUM_QUEUES: u32 = 0x12;
    /// u8: device status.
    pub const DEVICE_STATUS: u32 = 0x14;
    /// u8: configuration generation.
    pub const CONFIG_GENERATION: u32 = 0x15;
    /// u16: the queue the fields below refer to.
    pub const QUEUE_SELECT: u32 = 0x16;
    /// u16: queue size (reads the maximum until written).
    pub const QUEUE_SIZE: u32 = 0x18;
    /// u16: MSI-X vector of the queue.
    pub const QUEUE_MSIX_VECTOR: u32 = 0x1a;
    /// u16: 1 = enabled.
    pub const QUEUE_ENABLE: u32 = 0x1c;
    /// u16: where in the notify area this queue is notified (times the multiplier).
    pub const QUEUE_NOTIFY_OFF: u32 = 0x1e;
    /// u64: descriptor table.
    pub const QUEUE_DESC: u32 = 0x20;
    /// u64: driver area (avail ring).
    pub const QUEUE_DRIVER: u32 = 0x28;
    /// u64: device area (used ring).
    pub const QUEUE_DEVICE: u32 = 0x30;
    /// Bytes up to and including `QUEUE_DEVICE`: what a driver needs at least.
    pub const MIN_LEN: u32 = 0x38;
}

/// MSI-X capability and table (PCI local bus 3.0, 6.8.2).
pub mod msix {
    /// Message Control (u16, at cap + 2): table size - 1 in bits 0-10.
    pub const CONTROL: u32 = 2;
    /// Table offset | BIR (u32, at cap + 4).
    pub const TABLE: u32 = 4;
    /// PBA offset | BIR (u32, at cap + 8).
    pub const PBA: u32 = 8;
    /// Message Control: MSI-X enabled.
    pub const ENABLE: u16 = 1 << 15;
    /// Message Control: every vector masked.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// Bytes per table entry: address low, address high, data, vector control.
    pub const ENTRY: u32 = 16;
    /// Vector control: masked.
    pub const MASKED: u32 = 1;
}

/// Where a structure is: BAR, offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Region {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length.
    pub length: u32,
}

impl Region {
    fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }
}

/// The MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Msix {
    /// Offset of the capability in configuration space.
    pub cap: u32,
    /// Table entries.
    pub table_size: u16,
    /// The table.
    pub table: Region,
    /// The pending-bit array.
    pub pba: Region,
}

/// What the capability list says about a virtio-pci function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Layout {
    /// Common configuration.
    pub common: Region,
    /// Notify area.
    pub notify: Region,
    /// Bytes between the notify addresses of consecutive `queue_notify_off` values.
    pub notify_multiplier: u32,
    /// ISR status.
    pub isr: Region,
    /// Device-specific configuration (a device may have none).
    pub device: Option<Region>,
    /// Offset of the PCI configuration access capability, if there is one.
    pub pci_cfg: Option<u32>,
    /// MSI-X, if the function has it.
    pub msix: Option<Msix>,
}

impl Layout {
    /// The BAR every structure is in.
    pub fn bar(&self) -> u8 {
        self.common.bar
    }

    /// Bytes of the BAR the structures span (from 0).
    pub fn extent(&self) -> u64 {
        let mut end = self.common.end().max(self.notify.end()).max(self.isr.end());
        if let Some(d) = self.device {
            end = end.max(d.end());
        }
        if let Some(m) = self.msix {
            end = end.max(m.table.end()).max(m.pba.end());
        }
        end
    }
}

/// Why a function cannot be driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The capability list or a BAR is unusable.
    Cap(CapError),
    /// A required capability (common, notify, ISR) is missing.
    Missing(&'static str),
    /// A capability shorter than its structure (`cap_len`), or a structure too short.
    TooShort(&'static str, u32),
    /// A structure in another BAR than the common configuration's (this driver maps one).
    OtherBar(&'static str, u8),
    /// The notify multiplier is not a multiple of 2 (virtio 1.2, 4.1.4.4).
    OddMultiplier(u32),
    /// MSI-X table size 0 is not possible; a table or PBA past 4 GiB is a lie.
    BadMsix,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cap(e) => e.fmt(f),
            Self::Missing(what) => write!(f, "no {what} capability"),
            Self::TooShort(what, len) => write!(f, "{what} capability too short ({len} bytes)"),
            Self::OtherBar(what, bar) => write!(
                f,
                "{what} is in BAR{bar}, not in the common configuration's BAR"
            ),
            Self::OddMultiplier(m) => write!(f, "notify_off_multiplier {m} is odd"),
            Self::BadMsix => write!(f, "unusable MSI-X capability"),
        }
    }
}

impl From<CapError> for LayoutError {
    fn from(e: CapError) -> Self {
        Self::Cap(e)
    }
}

/// Read the function's capability list: the first virtio capability of each type, the
/// MSI-X capability. Every structure must be in the common configuration's BAR.
pub fn layout<C: Regs>(cfg: &C) -> Result<Layout, LayoutError> {
    let mut out = Layout::default();
    let (mut common, mut notify, mut isr) = (None, None, None);
    let mut problem = None;
    pci::walk_caps(cfg, |cap| {
        match cap.id {
            CAP_VENDOR => {
                let o = cap.offset;
                let cap_len = u32::from(cfg.read8(o + 2));
                let kind = cfg.read8(o + 3);
                let region = Region {
                    bar: cfg.read8(o + 4),
                    offset: cfg.read32(o + 8),
                    length: cfg.read32(o + 12),
                };
                let short = |what| Some(LayoutError::TooShort(what, cap_len));
                match kind {
                    cfg_type::COMMON if common.is_none() => {
                        if cap_len < 16 || region.length < common::MIN_LEN {
                            problem = problem.or(short("common configuration"));
                        }
                        common = Some(region);
                    }
                    cfg_type::NOTIFY if notify.is_none() => {
                        if cap_len < 20 {
                            problem = problem.or(short("notify"));
                        } else {
                            out.notify_multiplier = cfg.read32(o + 16);
                        }
                        notify = Some(region);
                    }
                    cfg_type::ISR if isr.is_none() => {
                        if cap_len < 16 || region.length < 1 {
                            problem = problem.or(short("ISR"));
                        }
                        isr = Some(region);
                    }
                    cfg_type::DEVICE if out.device.is_none() => {
                        if cap_len < 16 {
                            problem = problem.or(short("device configuration"));
                        }
                        out.device = Some(region);
                    }
                    cfg_type::PCI_CFG if out.pci_cfg.is_none() => out.pci_cfg = Some(o),
                    _ => {}
                }
            }
            CAP_MSIX if out.msix.is_none() => {
                let o = cap.offset;
                let table_size = (cfg.read16(o + msix::CONTROL) & 0x7ff) + 1;
                let table = cfg.read32(o + msix::TABLE);
                let pba = cfg.read32(o + msix::PBA);
                out.msix = Some(Msix {
                    cap: o,
                    table_size,
                    table: Region {
                        bar: (table & 7) as u8,
                        offset: table & !7,
                        length: u32::from(table_size) * msix::ENTRY,
                    },
                    pba: Region {
                        bar: (pba & 7) as u8,
                        offset: pba & !7,
                        length: u32::from(table_size).div_ceil(64) * 8,
                    },
                });
            }
            _ => {}
        }
        true
    })?;
    if let Some(p) = problem {
        return Err(p);
    }
    out.common = common.ok_or(LayoutError::Missing("common configuration"))?;
    out.notify = notify.ok_or(LayoutError::Missing("notify"))?;
    out.isr = isr.ok_or(LayoutError::Missing("ISR"))?;
    if out.notify_multiplier % 2 != 0 {
        return Err(LayoutError::OddMultiplier(out.notify_multiplier));
    }
    let bar = out.common.bar;
    let mut regions = [
        ("notify", Some(out.notify)),
        ("ISR", Some(out.isr)),
        ("device configuration", out.device),
        ("MSI-X table", out.msix.map(|m| m.table)),
        ("MSI-X PBA", out.msix.map(|m| m.pba)),
    ]
    .into_iter();
    if let Some((what, r)) = regions.find_map(|(w, r)| r.filter(|r| r.bar != bar).map(|r| (w, r))) {
        return Err(LayoutError::OtherBar(what, r.bar));
    }
    if bar > 5 {
        return Err(LayoutError::Cap(CapError::BadBar(bar)));
    }
    if out.extent() > u64::from(u32::MAX) {
        return Err(LayoutError::BadMsix);
    }
    Ok(out)
}

/// Where MSI-X messages go: the LAPIC message address and the IDT vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiTarget {
    /// Message address: 0xfee0_0000 | destination APIC id << 12 (physical, fixed).
    pub address: u32,
    /// Message data for the configuration-change vector (entry 0): the IDT vector.
    pub config_data: u32,
    /// Message data for the queue vectors (entries 1..).
    pub queue_data: u32,
}

impl MsiTarget {
    /// Messages to the LAPIC with `apic_id`: fixed delivery, edge, physical destination.
    pub fn lapic(apic_id: u8, config_vector: u8, queue_vector: u8) -> Self {
        Self {
            address: 0xfee0_0000 | u32::from(apic_id) << 12,
            config_data: u32::from(config_vector),
            queue_data: u32::from(queue_vector),
        }
    }
}

/// A virtio-pci function, driven through its BAR (`bar`: offsets from the BAR's base)
/// and its configuration space (`cfg`, for MSI-X's Message Control).
pub struct PciTransport<R> {
    bar: R,
    cfg: R,
    layout: Layout,
    device_id: u32,
    negotiated: Negotiated,
    msi: Option<MsiTarget>,
    /// Notify offset in the BAR per queue, once set up.
    notify_at: [Cell<u32>; MAX_QUEUES],
    /// What `msix_config` read back (NO_VECTOR until negotiated).
    config_vector: Cell<u16>,
    /// What each `queue_msix_vector` read back.
    queue_vectors: [Cell<u16>; MAX_QUEUES],
}

impl<R: Regs> PciTransport<R> {
    /// The virtio device of type `device_id` whose structures `layout` describes, with
    /// `bar` mapping the BAR they are in and `cfg` its configuration space. With `msi`,
    /// negotiation sets up MSI-X (see the module).
    pub fn new(bar: R, cfg: R, layout: Layout, device_id: u32, msi: Option<MsiTarget>) -> Self {
        Self {
            bar,
            cfg,
            layout,
            device_id,
            negotiated: Negotiated::default(),
            msi,
            notify_at: [const { Cell::new(u32::MAX) }; MAX_QUEUES],
            config_vector: Cell::new(NO_VECTOR),
            queue_vectors: [const { Cell::new(NO_VECTOR) }; MAX_QUEUES],
        }
    }

    /// The capability layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `num_queues` from the common configuration.
    pub fn num_queues(&self) -> u16 {
        self.bar.read16(self.common(common::NUM_QUEUES))
    }

    /// The MSI-X vector `msix_config` read back after negotiation ([`NO_VECTOR`]: none).
    pub fn config_vector(&self) -> u16 {
        self.config_vector.get()
    }

    /// The MSI-X vector queue `index` read back at set-up ([`NO_VECTOR`]: none).
    pub fn queue_vector(&self, index: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(index))
            .map_or(NO_VECTOR, Cell::get)
    }

    /// The MSI-X target, if interrupts were asked for.
    pub fn msi(&self) -> Option<MsiTarget> {
        self.msi
    }

    fn common(&self, field: u32) -> u32 {
        self.layout.common.offset + field
    }

    fn write64(&self, field: u32, value: u64) {
        self.bar.write32(self.common(field), value as u32);
        self.bar
            .write32(self.common(field) + 4, (value >> 32) as u32);
    }

    /// Enable MSI-X with the function masked, point every entry (up to [`MAX_VECTORS`])
    /// at the target and unmask it, then unmask the function.
    fn program_msix(&self, m: &Msix, target: &MsiTarget) {
        let control_at = m.cap + msix::CONTROL;
        let control = self.cfg.read16(control_at);
        self.cfg
            .write16(control_at, control | msix::ENABLE | msix::FUNCTION_MASK);
        for entry in 0..m.table_size.min(MAX_VECTORS) {
            let at = m.table.offset + u32::from(entry) * msix::ENTRY;
            let data = if entry == 0 {
                target.config_data
            } else {
                target.queue_data
            };
            self.bar.write32(at, target.address);
            self.bar.write32(at + 4, 0);
            self.bar.write32(at + 8, data);
            self.bar.write32(at + 12, 0);
        }
        self.cfg
            .write16(control_at, (control | msix::ENABLE) & !msix::FUNCTION_MASK);
    }

    fn try_setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError> {
        let slot = usize::from(index);
        if slot >= MAX_QUEUES {
            return Err(InitError::TooManyQueues(index));
        }
        self.bar.write16(self.common(common::QUEUE_SELECT), index);
        if self.bar.read16(self.common(common::QUEUE_ENABLE)) != 0 {
            return Err(InitError::QueueBusy(index));
        }
        if self.bar.read16(self.common(common::QUEUE_SIZE)) == 0 {
            return Err(InitError::NoQueue(index));
        }
        self.bar.write16(self.common(common::QUEUE_SIZE), size);
        if let (Some(m), Some(_)) = (self.layout.msix, self.msi) {
            let vector = if index + 1 < m.table_size.min(MAX_VECTORS) {
                index + 1
            } else {
                NO_VECTOR
            };
            self.bar
                .write16(self.common(common::QUEUE_MSIX_VECTOR), vector);
            let back = self.bar.read16(self.common(common::QUEUE_MSIX_VECTOR));
            self.queue_vectors[slot].set(back);
        }
        self.write64(common::QUEUE_DESC, mem.desc);
        self.write64(common::QUEUE_DRIVER, mem.avail);
        self.write64(common::QUEUE_DEVICE, mem.used);
        let off = u64::from(self.bar.read16(self.common(common::QUEUE_NOTIFY_OFF)))
            * u64::from(self.layout.notify_multiplier);
        if off + 2 > u64::from(self.layout.notify.length) {
            return Err(InitError::NotifyOutside(index, off));
        }
        self.notify_at[slot].set(self.layout.notify.offset + off as u32);
        self.bar.write16(self.common(common::QUEUE_ENABLE), 1);
        if self.bar.read16(self.common(common::QUEUE_ENABLE)) != 1 {
            return Err(InitError::QueueNotReady(index));
        }
        Ok(())
    }

    /// Where in the device configuration `offset` of `width` bytes is, if it is inside.
    fn device_at(&self, offset: u32, width: u32) -> Option<u32> {
        let d = self.layout.device?;
        (offset.checked_add(width)? <= d.length).then(|| d.offset + offset)
    }
}

impl<R: Regs> Transport for PciTransport<R> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn status(&self) -> u32 {
        u32::from(self.bar.read8(self.common(common::DEVICE_STATUS)))
    }

    fn set_status(&self, bits: u32) {
        self.bar
            .write8(self.common(common::DEVICE_STATUS), bits as u8);
    }

    fn device_features(&self) -> u64 {
        let mut offered = 0u64;
        for half in 0..2u32 {
            self.bar
                .write32(self.common(common::DEVICE_FEATURE_SELECT), half);
            offered |=
                u64::from(self.bar.read32(self.common(common::DEVICE_FEATURE))) << (32 * half);
        }
        offered
    }

    fn set_driver_features(&self, features: u64) {
        for half in 0..2u32 {
            self.bar
                .write32(self.common(common::DRIVER_FEATURE_SELECT), half);
            self.bar.write32(
                self.common(common::DRIVER_FEATURE),
                (features >> (32 * half)) as u32,
            );
        }
    }

    fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    fn set_negotiated(&mut self, n: Negotiated) {
        self.negotiated = n;
    }

    fn negotiate(&mut self, want: u64) -> Result<u64, InitError> {
        for q in &self.notify_at {
            q.set(u32::MAX);
        }
        for v in &self.queue_vectors {
            v.set(NO_VECTOR);
        }
        self.config_vector.set(NO_VECTOR);
        let accepted = handshake(self, want)?;
        if let (Some(m), Some(target)) = (self.layout.msix, self.msi) {
            self.program_msix(&m, &target);
            self.bar.write16(self.common(common::MSIX_CONFIG), 0);
            let back = self.bar.read16(self.common(common::MSIX_CONFIG));
            self.config_vector.set(back);
        }
        Ok(accepted)
    }

    fn queue_max(&self, index: u16) -> u32 {
        self.bar.write16(self.common(common::QUEUE_SELECT), index);
        u32::from(self.bar.read16(self.common(common::QUEUE_SIZE)))
    }

    fn setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError> {
        let result = self.try_setup_queue(index, size, mem);
        if result.is_err() {
            self.fail();
        }
        result
    }

    fn notify(&self, index: u16) {
        // A queue that was never set up has no notify address: nothing to tell.
        if let Some(at) = self.notify_at.get(usize::from(index)).map(Cell::get) {
            if at != u32::MAX {
                self.bar.write16(at, index);
            }
        }
    }

    fn interrupt_status(&self) -> u32 {
        u32::from(self.bar.read8(self.layout.isr.offset))
    }

    fn interrupt_ack(&self, _bits: u32) {}

    fn config_generation(&self) -> u32 {
        u32::from(self.bar.read8(self.common(common::CONFIG_GENERATION)))
    }

    fn config8(&self, offset: u32) -> u8 {
        self.device_at(offset, 1).map_or(0, |at| self.bar.read8(at))
    }

    fn config16(&self, offset: u32) -> u16 {
        self.device_at(offset, 2)
            .map_or(0, |at| self.bar.read16(at))
    }

    fn config32(&self, offset: u32) -> u32 {
        self.device_at(offset, 4)
            .map_or(0, |at| self.bar.read32(at))
    }
}

/// The virtio device type of a PCI function with these IDs, if it is a modern virtio
/// device (transitional IDs 0x1000..0x1040 are not: this driver has no legacy interface).
pub fn virtio_type(vendor: u16, device: u16) -> Option<u32> {
    if vendor != VENDOR {
        return None;
    }
    let t = device.checked_sub(DEVICE_BASE)?;
    (t > 0 && t < 0x40).then_some(u32::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::blk::{self, Blk, Request, Slot};
    use crate::virtio::mock::{Dma, FakeRegs, MockBlk, QueueArea};
    use crate::virtio::mock_pci::{at, FakeBar, FakeCfg};
    use crate::virtio::{console, feature, queue, status};

    /// A transport over a fake function; `Box::leak` so the driver may hold references.
    fn transport(
        dev: FakeRegs,
        device_type: u16,
        msi: Option<MsiTarget>,
    ) -> (
        &'static FakeBar,
        &'static FakeCfg,
        PciTransport<&'static dyn Regs>,
    ) {
        let bar: &'static FakeBar = Box::leak(Box::new(FakeBar::new(dev)));
        let cfg: &'static FakeCfg = Box::leak(Box::new(FakeCfg::virtio(device_type, 0xc000_0000)));
        let l = layout(cfg).unwrap();
        let t = PciTransport::new(
            bar as &dyn Regs,
            cfg as &dyn Regs,
            l,
            u32::from(device_type),
            msi,
        );
        (bar, cfg, t)
    }

    #[test]
    fn layout_comes_from_the_capabilities() {
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        let l = layout(&cfg).unwrap();
        assert_eq!(
            l.common,
            Region {
                bar: 0,
                offset: at::COMMON,
                length: 0x40
            }
        );
        assert_eq!(l.notify.offset, at::NOTIFY);
        assert_eq!(l.notify_multiplier, at::NOTIFY_MULTIPLIER);
        assert_eq!(l.isr.offset, at::ISR);
        assert_eq!(l.device.unwrap().offset, at::DEVICE);
        assert_eq!(l.pci_cfg, Some(0x98));
        let m = l.msix.unwrap();
        assert_eq!((m.cap, m.table_size), (0x40, at::VECTORS));
        assert_eq!((m.table.offset, m.pba.offset), (at::TABLE, at::PBA));
        assert_eq!(l.extent(), u64::from(at::PBA) + 8);
        assert_eq!(virtio_type(0x1af4, 0x1042), Some(2));
        assert_eq!(virtio_type(0x1af4, 0x1001), None, "transitional");
        assert_eq!(virtio_type(0x1af4, 0x1040), None);
        assert_eq!(virtio_type(0x8086, 0x1042), None);
    }

    #[test]
    fn broken_layouts_are_refused() {
        // The ISR capability turned into an unknown type: no ISR.
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        cfg.set8(0x78 + 3, 7);
        assert_eq!(layout(&cfg), Err(LayoutError::Missing("ISR")));
        // The notify area in BAR 2.
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        cfg.set8(0x60 + 4, 2);
        assert_eq!(layout(&cfg), Err(LayoutError::OtherBar("notify", 2)));
        // A common configuration too short for the queue addresses.
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        cfg.set32(0x50 + 12, 0x20);
        assert!(matches!(layout(&cfg), Err(LayoutError::TooShort(..))));
        // An odd multiplier.
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        cfg.set32(0x60 + 16, 3);
        assert_eq!(layout(&cfg), Err(LayoutError::OddMultiplier(3)));
        // An MSI-X table past 4 GiB.
        let cfg = FakeCfg::virtio(2, 0xc000_0000);
        cfg.set32(0x44, 0xffff_fff8);
        assert_eq!(layout(&cfg), Err(LayoutError::BadMsix));
    }

    #[test]
    fn handshake_queues_notify_and_msix() {
        let target = MsiTarget::lapic(3, 0x41, 0x40);
        let (bar, cfg, mut t) = transport(FakeRegs::blk(1 << 20), 2, Some(target));
        let accepted = t
            .negotiate(feature::VERSION_1 | feature::EVENT_IDX)
            .unwrap();
        assert_eq!(accepted, feature::VERSION_1 | feature::EVENT_IDX);
        assert_eq!(bar.dev.state.borrow().driver_features, accepted);
        // MSI-X: enabled, function unmasked, each entry at APIC 3 with its vector.
        let control = cfg.get(0x42, 2) as u16;
        assert_eq!(control & (msix::ENABLE | msix::FUNCTION_MASK), msix::ENABLE);
        {
            let s = bar.state.borrow();
            for entry in 0..usize::from(at::VECTORS) {
                let e = &s.table[entry * 4..entry * 4 + 4];
                let data = if entry == 0 { 0x41 } else { 0x40 };
                assert_eq!(e, [0xfee0_3000, 0, data, 0], "entry {entry}");
            }
            assert_eq!(s.msix_config, 0);
        }
        assert_eq!(t.config_vector(), 0);
        let mem = QueueMemory {
            desc: 0x1_0000_1000,
            avail: 0x2000,
            used: 0x3000,
        };
        assert_eq!(t.queue_max(0), 256);
        t.setup_queue(0, 128, &mem).unwrap();
        assert_eq!(t.queue_vector(0), 1);
        t.driver_ok().unwrap();
        {
            let s = bar.dev.state.borrow();
            assert_eq!(s.status_writes, vec![0, 1, 3, 11, 15]);
            assert_eq!(s.queue_num, 128);
            assert_eq!(
                (s.queue_desc, s.queue_driver, s.queue_device),
                (0x1_0000_1000, 0x2000, 0x3000)
            );
            assert!(s.queue_ready);
        }
        t.notify(0);
        t.notify(5);
        assert_eq!(
            bar.state.borrow().notifies,
            vec![(0, 0)],
            "queue 5 was never set up"
        );
        // ISR: one 8-bit read, which clears it.
        assert_eq!(t.interrupt_status(), 1);
        assert_eq!(t.interrupt_status(), 0);
        assert_eq!(bar.state.borrow().isr_reads, 2);
    }

    #[test]
    fn refused_vectors_read_back_as_no_vector() {
        let target = MsiTarget::lapic(0, 0x41, 0x40);
        let (bar, _, mut t) = transport(FakeRegs::net([2, 0, 0, 0, 0, 1]), 1, Some(target));
        bar.state.borrow_mut().refuse_from = Some(2);
        t.negotiate(!0).unwrap();
        let (a, b) = (QueueArea::new(256), QueueArea::new(256));
        t.setup_queue(0, 256, &a.memory()).unwrap();
        t.setup_queue(1, 256, &b.memory()).unwrap();
        assert_eq!(t.config_vector(), 0);
        assert_eq!(t.queue_vector(0), 1);
        assert_eq!(t.queue_vector(1), NO_VECTOR, "vector 2 refused");
        // Each queue is notified at notify offset + queue_notify_off * multiplier.
        t.notify(1);
        t.notify(0);
        assert_eq!(
            bar.state.borrow().notifies,
            vec![(at::NOTIFY_MULTIPLIER, 1), (0, 0)]
        );
        // A reset forgets them.
        t.negotiate(!0).unwrap();
        assert_eq!(t.queue_vector(0), NO_VECTOR);
    }

    #[test]
    fn without_msi_no_vector_is_written() {
        let (bar, cfg, mut t) = transport(FakeRegs::blk(8), 2, None);
        t.negotiate(!0).unwrap();
        let a = QueueArea::new(256);
        t.setup_queue(0, 256, &a.memory()).unwrap();
        assert_eq!(cfg.get(0x42, 2) as u16 & msix::ENABLE, 0);
        assert_eq!(bar.state.borrow().queue_vectors[0], NO_VECTOR);
        assert_eq!(t.queue_vector(0), NO_VECTOR);
    }

    #[test]
    fn a_notify_offset_outside_the_area_fails_the_queue() {
        let (bar, _, mut t) = transport(FakeRegs::blk(8), 2, None);
        bar.state.borrow_mut().notify_off = Some(0x400);
        t.negotiate(!0).unwrap();
        let a = QueueArea::new(256);
        assert_eq!(
            t.setup_queue(0, 256, &a.memory()),
            Err(InitError::NotifyOutside(0, 0x1000))
        );
        assert_eq!(t.status() & status::FAILED, status::FAILED);
    }

    #[test]
    fn the_blk_driver_runs_over_pci() {
        let (bar, _, t) = transport(FakeRegs::blk(4096), 2, None);
        let area = QueueArea::new(queue::MAX_SIZE);
        // SAFETY: the area is sized for MAX_SIZE and outlives the driver.
        let mut blk = unsafe { Blk::init(t, area.memory(), &[], blk::WANTED) }.unwrap();
        assert_eq!(blk.config.capacity, 4096);
        assert_eq!(blk.config.seg_max, 126);
        let mut dev = MockBlk::new(area.memory(), 256, blk.has(feature::EVENT_IDX), 4096);
        let (meta, data) = (Dma::new(4096), Dma::new(8192));
        // SAFETY: both allocations outlive the slot and serve only it.
        let slot = unsafe { Slot::new(meta.addr(), data.addr(), 8192) };
        // SAFETY: the slot is idle.
        unsafe { blk::fill_pattern(&mut slot.data_mut()[..4096], 8 * 512) };
        for req in [Request::write(8, 8), Request::read(8, 8)] {
            // SAFETY: the slot's memory is live and idle.
            let head = unsafe { blk.submit(&slot, &req) }.unwrap();
            blk.kick();
            dev.serve();
            assert_eq!(blk.poll().unwrap().unwrap().head, head);
            assert_eq!(slot.status(), blk::status::OK);
        }
        // SAFETY: idle again.
        let back = unsafe { &slot.data_mut()[..4096] };
        assert_eq!(blk::check_pattern(back, 8 * 512), None);
        assert!(!bar.state.borrow().notifies.is_empty());
        assert!(bar.state.borrow().notifies.iter().all(|&n| n == (0, 0)));
    }

    #[test]
    fn console_config_changes_are_seen_over_pci() {
        let (bar, _, t) = transport(FakeRegs::console(80, 25), 3, None);
        let (rq, tq) = (QueueArea::new(256), QueueArea::new(256));
        let rb = Dma::new((console::RX_BUF as usize) * usize::from(console::RX_COUNT));
        let tb = Dma::new((console::TX_BUF as usize) * usize::from(console::TX_COUNT));
        let mem = console::ConsoleMemory {
            rx_queue: rq.memory(),
            tx_queue: tq.memory(),
            rx_bufs: rb.addr(),
            tx_bufs: tb.addr(),
        };
        // SAFETY: the memory outlives the driver.
        let mut c = unsafe { console::Console::init(t, mem) }.unwrap();
        assert_eq!((c.config.cols, c.config.rows), (80, 25));
        assert_eq!(c.poll_config().unwrap(), None);
        bar.dev.resize_console(132, 43);
        let seen = c.poll_config().unwrap().unwrap();
        assert_eq!((seen.cols, seen.rows), (132, 43));
    }
}
