//! The virtio-mmio transport, version 2 ("modern"; virtio 1.2, 4.2), over [`Regs`].
//!
//! Devices are announced on the kernel command line the way Linux reads them
//! (`virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, [`parse_device`]). Bringing one up:
//! [`MmioTransport::probe`] checks MagicValue, Version and DeviceID; the [`Transport`]
//! handshake (`negotiate`) resets the device and goes through ACKNOWLEDGE, DRIVER, the 64
//! feature bits (two 32-bit halves through the feature-select registers) and FEATURES_OK,
//! checking that the device kept it; `setup_queue` hands over each queue's three areas and
//! sets QueueReady; `driver_ok` ends the handshake. Any failure after the reset sets
//! FAILED.
//!
//! Every register access here is an exit to the VMM (tens of microseconds on the
//! development hosts) except QueueNotify, an ioeventfd: so the driver touches registers
//! only at set-up, and on the data path only to notify.

use super::queue::QueueMemory;
pub use super::transport::InitError;
use super::transport::{handshake, Negotiated, Transport};
use super::Regs;
use core::fmt;

/// Register offsets.
pub mod reg {
    /// "virt" in little-endian ASCII.
    pub const MAGIC: u32 = 0x000;
    /// 2 for this (modern) layout; 1 is the legacy one.
    pub const VERSION: u32 = 0x004;
    /// Device type; 0 = no device behind this slot.
    pub const DEVICE_ID: u32 = 0x008;
    /// Vendor.
    pub const VENDOR_ID: u32 = 0x00c;
    /// 32 feature bits, selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u32 = 0x010;
    /// Which half of the device's features `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u32 = 0x014;
    /// 32 accepted feature bits, selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u32 = 0x020;
    /// Which half `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u32 = 0x024;
    /// Queue the queue registers below refer to.
    pub const QUEUE_SEL: u32 = 0x030;
    /// Largest size of the selected queue; 0 = no such queue.
    pub const QUEUE_NUM_MAX: u32 = 0x034;
    /// Size the driver chose.
    pub const QUEUE_NUM: u32 = 0x038;
    /// 1 = the device may use the queue.
    pub const QUEUE_READY: u32 = 0x044;
    /// Write a queue index: new buffers (an ioeventfd in bulkhead: no exit).
    pub const QUEUE_NOTIFY: u32 = 0x050;
    /// Bit 0 used buffer, bit 1 configuration change.
    pub const INTERRUPT_STATUS: u32 = 0x060;
    /// Acknowledge the bits written.
    pub const INTERRUPT_ACK: u32 = 0x064;
    /// Device status (`virtio::status`); writing 0 resets.
    pub const STATUS: u32 = 0x070;
    /// Descriptor table address, low half.
    pub const QUEUE_DESC_LOW: u32 = 0x080;
    /// Descriptor table address, high half.
    pub const QUEUE_DESC_HIGH: u32 = 0x084;
    /// Avail ring ("driver area") address, low half.
    pub const QUEUE_DRIVER_LOW: u32 = 0x090;
    /// Avail ring address, high half.
    pub const QUEUE_DRIVER_HIGH: u32 = 0x094;
    /// Used ring ("device area") address, low half.
    pub const QUEUE_DEVICE_LOW: u32 = 0x0a0;
    /// Used ring address, high half.
    pub const QUEUE_DEVICE_HIGH: u32 = 0x0a4;
    /// Changes whenever the configuration space changes.
    pub const CONFIG_GENERATION: u32 = 0x0fc;
    /// Device-specific configuration space.
    pub const CONFIG: u32 = 0x100;
}

/// MagicValue: "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// The register layout this driver speaks.
pub const VERSION: u32 = 2;
/// Bytes of register space a device needs at least (registers up to the config space).
pub const MIN_SIZE: u64 = 0x100;
/// InterruptStatus / InterruptACK bit: a used buffer was returned.
pub const INT_VRING: u32 = 1 << 0;
/// InterruptStatus / InterruptACK bit: the configuration space changed.
pub const INT_CONFIG: u32 = 1 << 1;

/// A virtio-mmio device announced on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Base of its register block.
    pub base: u64,
    /// Size of its register block.
    pub size: u64,
    /// Its interrupt line (an IOAPIC pin in bulkhead).
    pub irq: u32,
}

/// Linux's `memparse`: a number in C notation (`0x` hex, leading `0` octal, else decimal)
/// with an optional K/M/G/T/P/E suffix (binary multiples, either case). Returns the value
/// and the rest of the string.
fn memparse(s: &[u8]) -> Option<(u64, &[u8])> {
    let (radix, digits) = if let Some(hex) = s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X"))
    {
        (16, hex)
    } else if s.len() > 1 && s[0] == b'0' && s[1].is_ascii_digit() {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let n = digits
        .iter()
        .take_while(|&&c| char::from(c).is_digit(radix))
        .count();
    if n == 0 {
        return None;
    }
    let mut value = 0u64;
    for &c in &digits[..n] {
        let digit = char::from(c).to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))?;
    }
    let rest = &digits[n..];
    let shift = match rest.first().map(u8::to_ascii_uppercase) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => return Some((value, rest)),
    };
    let scaled = value.checked_mul(1u64 << shift)?;
    Some((scaled, &rest[1..]))
}

/// Parse the value of a `virtio_mmio.device=` token: `<size>@<base>:<irq>[:<id>]`, size
/// and base as Linux's `memparse` reads them (`4K`, `0x1000`, `0xd0000000`), irq decimal,
/// the optional platform-device id ignored. `None` if malformed, if the size is zero or if
/// the block would wrap around the address space.
pub fn parse_device(value: &[u8]) -> Option<DeviceSpec> {
    let (size, rest) = memparse(value)?;
    let (base, rest) = memparse(rest.strip_prefix(b"@")?)?;
    let rest = rest.strip_prefix(b":")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let irq = parse_decimal(&rest[..digits])?;
    match &rest[digits..] {
        [] => {}
        [b':', id @ ..] if parse_id(id) => {}
        _ => return None,
    }
    if size == 0 || base.checked_add(size).is_none() {
        return None;
    }
    Some(DeviceSpec { base, size, irq })
}

fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u32, |n, &c| {
        n.checked_mul(10)?.checked_add(char::from(c).to_digit(10)?)
    })
}

/// Linux reads the id with `%d`: an optional minus sign, then decimal digits.
fn parse_id(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    parse_decimal(digits).is_some()
}

/// Why a device could not be probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// MagicValue is not "virt".
    Magic(u32),
    /// Version 1 (legacy) or unknown.
    Version(u32),
    /// DeviceID 0: a placeholder slot with no device.
    NoDevice,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Magic(m) => write!(f, "MagicValue is {m:#010x}, not {MAGIC:#010x}"),
            Self::Version(1) => write!(f, "legacy virtio-mmio (Version 1) is not supported"),
            Self::Version(v) => write!(f, "unknown virtio-mmio Version {v}"),
            Self::NoDevice => write!(f, "DeviceID 0 (no device in this slot)"),
        }
    }
}

/// A virtio-mmio device.
pub struct MmioTransport<R> {
    regs: R,
    device_id: u32,
    vendor_id: u32,
    negotiated: Negotiated,
}

impl<R: Regs> MmioTransport<R> {
    /// Check that `regs` is a version-2 virtio-mmio device with a device behind it.
    pub fn probe(regs: R) -> Result<Self, ProbeError> {
        let magic = regs.read32(reg::MAGIC);
        if magic != MAGIC {
            return Err(ProbeError::Magic(magic));
        }
        let version = regs.read32(reg::VERSION);
        if version != VERSION {
            return Err(ProbeError::Version(version));
        }
        let device_id = regs.read32(reg::DEVICE_ID);
        if device_id == 0 {
            return Err(ProbeError::NoDevice);
        }
        let vendor_id = regs.read32(reg::VENDOR_ID);
        Ok(Self {
            regs,
            device_id,
            vendor_id,
            negotiated: Negotiated::default(),
        })
    }

    /// VendorID.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    fn try_setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError> {
        self.regs.write32(reg::QUEUE_SEL, u32::from(index));
        if self.regs.read32(reg::QUEUE_READY) != 0 {
            return Err(InitError::QueueBusy(index));
        }
        if self.regs.read32(reg::QUEUE_NUM_MAX) == 0 {
            return Err(InitError::NoQueue(index));
        }
        self.regs.write32(reg::QUEUE_NUM, u32::from(size));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, mem.desc),
            (reg::QUEUE_DRIVER_LOW, mem.avail),
            (reg::QUEUE_DEVICE_LOW, mem.used),
        ] {
            self.regs.write32(low, addr as u32);
            self.regs.write32(low + 4, (addr >> 32) as u32);
        }
        self.regs.write32(reg::QUEUE_READY, 1);
        if self.regs.read32(reg::QUEUE_READY) != 1 {
            return Err(InitError::QueueNotReady(index));
        }
        Ok(())
    }
}

impl<R: Regs> Transport for MmioTransport<R> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn status(&self) -> u32 {
        self.regs.read32(reg::STATUS)
    }

    fn set_status(&self, bits: u32) {
        self.regs.write32(reg::STATUS, bits);
    }

    fn device_features(&self) -> u64 {
        let mut offered = 0u64;
        for half in 0..2u32 {
            self.regs.write32(reg::DEVICE_FEATURES_SEL, half);
            offered |= u64::from(self.regs.read32(reg::DEVICE_FEATURES)) << (32 * half);
        }
        offered
    }

    fn set_driver_features(&self, features: u64) {
        for half in 0..2u32 {
            self.regs.write32(reg::DRIVER_FEATURES_SEL, half);
            self.regs
                .write32(reg::DRIVER_FEATURES, (features >> (32 * half)) as u32);
        }
    }

    fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    fn set_negotiated(&mut self, n: Negotiated) {
        self.negotiated = n;
    }

    fn negotiate(&mut self, want: u64) -> Result<u64, InitError> {
        handshake(self, want)
    }

    fn queue_max(&self, index: u16) -> u32 {
        self.regs.write32(reg::QUEUE_SEL, u32::from(index));
        self.regs.read32(reg::QUEUE_NUM_MAX)
    }

    fn setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError> {
        let result = self.try_setup_queue(index, size, mem);
        if result.is_err() {
            self.fail();
        }
        result
    }

    fn notify(&self, index: u16) {
        self.regs.write32(reg::QUEUE_NOTIFY, u32::from(index));
    }

    fn interrupt_status(&self) -> u32 {
        self.regs.read32(reg::INTERRUPT_STATUS)
    }

    fn interrupt_ack(&self, bits: u32) {
        self.regs.write32(reg::INTERRUPT_ACK, bits);
    }

    fn config_generation(&self) -> u32 {
        self.regs.read32(reg::CONFIG_GENERATION)
    }

    fn config8(&self, offset: u32) -> u8 {
        self.regs.read8(reg::CONFIG + offset)
    }

    fn config16(&self, offset: u32) -> u16 {
        self.regs.read16(reg::CONFIG + offset)
    }

    fn config32(&self, offset: u32) -> u32 {
        self.regs.read32(reg::CONFIG + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mock::FakeRegs;
    use crate::virtio::{feature, status, Transport};

    #[test]
    fn device_tokens_as_linux_reads_them() {
        let spec = |base, size, irq| Some(DeviceSpec { base, size, irq });
        assert_eq!(parse_device(b"4K@0xd0000000:5"), spec(0xd000_0000, 4096, 5));
        assert_eq!(
            parse_device(b"0x1000@0xd0001000:6"),
            spec(0xd000_1000, 4096, 6)
        );
        assert_eq!(
            parse_device(b"4k@0xD0002000:17:3"),
            spec(0xd000_2000, 4096, 17)
        );
        assert_eq!(
            parse_device(b"512@3489660928:5:-1"),
            spec(0xd000_0000, 512, 5)
        );
        assert_eq!(parse_device(b"1M@0x1G:9"), spec(1 << 30, 1 << 20, 9));
        assert_eq!(parse_device(b"010@0:0"), spec(0, 8, 0));
    }

    #[test]
    fn malformed_device_tokens() {
        for bad in [
            "",
            "4K",
            "4K@",
            "4K@0xd0000000",
            "4K@0xd0000000:",
            "4K@0xd0000000:x",
            "4K@0xd0000000:5:",
            "4K@0xd0000000:5:a",
            "4K@0xd0000000:5 ",
            "4K 0xd0000000:5",
            "0@0xd0000000:5",
            "4Q@0xd0000000:5",
            "@0xd0000000:5",
            "4K@0x:5",
            "4K@0xffffffffffffffff:5",
            "99999999999999999999@0:5",
            "16E@0:5",
            "4K@0xd0000000:99999999999",
            "09@0:0",
        ] {
            assert_eq!(parse_device(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn probe_checks_magic_version_and_device() {
        let regs = FakeRegs::blk(1 << 20);
        let t = MmioTransport::probe(&regs).unwrap();
        assert_eq!(t.device_id(), 2);
        regs.state.borrow_mut().magic = 0x1234;
        assert_eq!(
            MmioTransport::probe(&regs).err(),
            Some(ProbeError::Magic(0x1234))
        );
        regs.state.borrow_mut().magic = MAGIC;
        regs.state.borrow_mut().version = 1;
        let e = MmioTransport::probe(&regs).err().unwrap();
        assert_eq!(e, ProbeError::Version(1));
        assert!(e.to_string().contains("legacy"));
        regs.state.borrow_mut().version = 2;
        regs.state.borrow_mut().device_id = 0;
        assert_eq!(
            MmioTransport::probe(&regs).err(),
            Some(ProbeError::NoDevice)
        );
    }

    #[test]
    fn handshake_in_order_without_the_vhost_user_bit() {
        let regs = FakeRegs::blk(1 << 20);
        let offered = feature::VERSION_1
            | feature::EVENT_IDX
            | feature::VHOST_USER_PROTOCOL_FEATURES
            | feature::RING_PACKED
            | 1 << 9;
        regs.state.borrow_mut().features = offered;
        let mut t = MmioTransport::probe(&regs).unwrap();
        let want = feature::VERSION_1 | feature::EVENT_IDX | 1 << 9 | 1 << 13 | 1 << 30;
        let accepted = t.negotiate(want).unwrap();
        assert_eq!(
            accepted,
            feature::VERSION_1 | feature::EVENT_IDX | 1 << 9,
            "offered & wanted, never bit 30"
        );
        assert_eq!(t.offered(), offered);
        assert_eq!(regs.state.borrow().driver_features, accepted);
        let mem = QueueMemory {
            desc: 0x1_0000_1000,
            avail: 0x2000,
            used: 0x3000,
        };
        assert_eq!(t.queue_max(0), 256);
        t.setup_queue(0, 128, &mem).unwrap();
        t.driver_ok().unwrap();
        let s = regs.state.borrow();
        assert_eq!(s.status_writes, vec![0, 1, 3, 11, 15]);
        assert_eq!(s.queue_num, 128);
        assert_eq!(
            (s.queue_desc, s.queue_driver, s.queue_device),
            (0x1_0000_1000, 0x2000, 0x3000)
        );
        assert!(s.queue_ready);
    }

    #[test]
    fn no_version_1_is_refused_and_marked_failed() {
        let regs = FakeRegs::blk(1 << 20);
        regs.state.borrow_mut().features = 1 << 9;
        let mut t = MmioTransport::probe(&regs).unwrap();
        assert_eq!(t.negotiate(!0), Err(InitError::NotVersion1(1 << 9)));
        assert_eq!(regs.state.borrow().status & status::FAILED, status::FAILED);
    }

    #[test]
    fn features_ok_must_stick() {
        let regs = FakeRegs::blk(1 << 20);
        regs.state.borrow_mut().refuse_features = true;
        let mut t = MmioTransport::probe(&regs).unwrap();
        let e = t.negotiate(!0).unwrap_err();
        assert!(matches!(e, InitError::FeaturesRefused { .. }), "{e:?}");
        assert_eq!(regs.state.borrow().status & status::FAILED, status::FAILED);
    }

    #[test]
    fn reset_must_read_zero() {
        let regs = FakeRegs::blk(1 << 20);
        regs.state.borrow_mut().stuck_status = Some(0x40);
        let mut t = MmioTransport::probe(&regs).unwrap();
        assert_eq!(t.negotiate(!0), Err(InitError::Reset(0x40)));
    }

    #[test]
    fn missing_or_busy_queue() {
        let regs = FakeRegs::blk(1 << 20);
        let mut t = MmioTransport::probe(&regs).unwrap();
        t.negotiate(!0).unwrap();
        let mem = QueueMemory {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        };
        assert_eq!(t.setup_queue(1, 8, &mem), Err(InitError::NoQueue(1)));
        t.negotiate(!0).unwrap();
        regs.state.borrow_mut().queue_ready = true;
        assert_eq!(t.setup_queue(0, 8, &mem), Err(InitError::QueueBusy(0)));
    }

    #[test]
    fn config_read_retries_until_the_generation_is_stable() {
        let regs = FakeRegs::blk(0x1_2345_6789);
        regs.state.borrow_mut().generation_bumps = 3;
        let t = MmioTransport::probe(&regs).unwrap();
        let mut reads = 0;
        let capacity = t
            .read_config(|c| {
                reads += 1;
                c.u64(0)
            })
            .unwrap();
        assert_eq!(capacity, 0x1_2345_6789);
        // Two field reads per attempt, each a change: stable on the third attempt.
        assert_eq!(reads, 3);
        regs.state.borrow_mut().generation_bumps = 1000;
        assert_eq!(t.read_config(|c| c.u8(0)), Err(InitError::ConfigUnstable));
    }

    #[test]
    fn config_fields_have_their_width() {
        let regs = FakeRegs::blk(8);
        let t = MmioTransport::probe(&regs).unwrap();
        t.read_config(|c| (c.u16(34), c.u8(32), c.u32(20))).unwrap();
        let widths = regs.state.borrow().config_widths.clone();
        assert_eq!(widths, vec![(34, 2), (32, 1), (20, 4)]);
    }
}
