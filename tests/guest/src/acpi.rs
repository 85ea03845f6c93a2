//! The virtio-mmio devices the ACPI tables describe, found the way a kernel finds them:
//! RSDP (the zero page's `acpi_rsdp_addr`, else a search of 0xe0000..0x100000 as Linux
//! falls back to), XSDT (or RSDT), FADT, its DSDT. And the PCI Express configuration space
//! (ECAM) that the MCFG table lists ([`mcfg`]), where the PCI devices are found.
//!
//! The DSDT is not interpreted: a tiny scan finds each `Name (_HID, "LNRO0005")` and, in
//! the bytes up to the next one, the device's `Name (_UID, integer)` and `Name (_CRS,
//! ResourceTemplate)`, whose resource descriptors are parsed properly (a 32-bit fixed
//! memory range and an extended interrupt). That is enough for tables laid out as bulkhead
//! and Firecracker write them (`_HID` first in each device); it is no AML interpreter.
//! Every table's signature and checksum is checked and every read is bounds-checked.
//! Guest memory is read through `read(address, length)`, `None` for unmapped ranges.

use core::fmt;

/// Most devices reported.
pub const MAX_DEVICES: usize = 32;
/// Where Linux looks for the RSDP when the boot protocol does not say.
const RSDP_SEARCH: (u64, u64) = (0xe_0000, 0x10_0000);
/// Length of an ACPI 2.0+ RSDP.
const RSDP_LEN: usize = 36;
/// Length of the ACPI 1.0 part of the RSDP, which the first checksum covers.
const RSDP_V1_LEN: usize = 20;
/// Length of a system description table's header.
const HEADER_LEN: usize = 36;
/// Offsets in the FADT of the 32-bit DSDT pointer and of the 64-bit `X_DSDT`.
const FADT_DSDT: usize = 40;
const FADT_X_DSDT: usize = 140;
/// The AML of `Name (_HID, "LNRO0005")`: NameOp, name, StringPrefix, the string, NUL.
const HID_LNRO0005: &[u8] = b"\x08_HID\x0dLNRO0005\x00";
/// The AML of `Name (_UID, ` and `Name (_CRS, Buffer`.
const UID_NAME: &[u8] = b"\x08_UID";
const CRS_BUFFER: &[u8] = b"\x08_CRS\x11";
/// Large resource descriptors: 32-bit fixed memory range, extended interrupt.
const MEMORY32_FIXED: u8 = 0x86;
const EXTENDED_IRQ: u8 = 0x89;
/// Small resource descriptor: end tag.
const END_TAG: u8 = 0x79;

/// One LNRO0005 device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmioDevice {
    /// `_UID`, if it is an integer.
    pub uid: Option<u64>,
    /// The 32-bit fixed memory range: base, length, and whether it is read-write.
    pub base: u32,
    /// Its length.
    pub size: u32,
    /// Read-write (else read-only).
    pub writable: bool,
    /// The interrupt.
    pub irq: u32,
    /// Edge-triggered (else level).
    pub edge: bool,
    /// Active low (else active high).
    pub active_low: bool,
}

impl fmt::Display for MmioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uid {
            Some(uid) => write!(f, "uid={uid}")?,
            None => write!(f, "uid=none")?,
        }
        write!(
            f,
            " base={:#x} size={:#x} {} irq={} {} {}",
            self.base,
            self.size,
            if self.writable { "rw" } else { "ro" },
            self.irq,
            if self.edge { "edge" } else { "level" },
            if self.active_low {
                "active-low"
            } else {
                "active-high"
            },
        )
    }
}

/// The LNRO0005 devices of a DSDT, in table order.
pub struct MmioDevices {
    list: [MmioDevice; MAX_DEVICES],
    len: usize,
}

impl MmioDevices {
    /// The devices found.
    pub fn as_slice(&self) -> &[MmioDevice] {
        &self.list[..self.len]
    }
}

/// Why the devices could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP where the zero page says, or none in 0xe0000..0x100000.
    NoRsdp,
    /// A table that is unreadable, too short, of the wrong signature or bad checksum.
    BadTable(u64, [u8; 4]),
    /// The XSDT lists no FADT.
    NoFadt,
    /// An LNRO0005 device (its index) without a usable `_CRS`.
    BadDevice(usize),
    /// More devices than [`MAX_DEVICES`].
    TooManyDevices,
    /// The XSDT lists no MCFG.
    NoMcfg,
    /// The MCFG has no allocation for segment 0 that covers bus 0.
    NoBus0,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no ACPI RSDP"),
            Self::BadTable(a, sig) => write!(
                f,
                "no valid {} table at {a:#x}",
                core::str::from_utf8(sig).unwrap_or("????")
            ),
            Self::NoFadt => write!(f, "the XSDT lists no FADT"),
            Self::BadDevice(i) => write!(f, "LNRO0005 device {i} has no usable _CRS"),
            Self::TooManyDevices => write!(f, "more than {MAX_DEVICES} LNRO0005 devices"),
            Self::NoMcfg => write!(f, "the XSDT lists no MCFG (no PCI Express ECAM)"),
            Self::NoBus0 => write!(f, "the MCFG has no ECAM for segment 0, bus 0"),
        }
    }
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) == 0
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The virtio-mmio devices of the DSDT, from the RSDP at `rsdp_hint` (0: search for it).
pub fn virtio_mmio_devices<'a>(
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
    rsdp_hint: u64,
) -> Result<MmioDevices, AcpiError> {
    let rsdp = find_rsdp(&read, rsdp_hint)?;
    let fadt = find_fadt(&read, rsdp)?;
    let x_dsdt = u64_at(fadt, FADT_X_DSDT).unwrap_or(0);
    let dsdt_addr = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(u32_at(fadt, FADT_DSDT).unwrap_or(0))
    };
    let dsdt = table(&read, dsdt_addr, *b"DSDT")?;
    scan_dsdt(&dsdt[HEADER_LEN..])
}

/// A valid RSDP: signature, both checksums (the second over its stated length).
fn rsdp_at<'a>(read: &impl Fn(u64, usize) -> Option<&'a [u8]>, addr: u64) -> Option<&'a [u8]> {
    let v1 = read(addr, RSDP_V1_LEN)?;
    if &v1[..8] != b"RSD PTR " || !sums_to_zero(v1) {
        return None;
    }
    if v1[15] < 2 {
        return Some(v1);
    }
    let full = read(addr, RSDP_LEN)?;
    sums_to_zero(full).then_some(full)
}

fn find_rsdp<'a>(
    read: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    hint: u64,
) -> Result<&'a [u8], AcpiError> {
    if hint != 0 {
        return rsdp_at(read, hint).ok_or(AcpiError::NoRsdp);
    }
    (RSDP_SEARCH.0..RSDP_SEARCH.1)
        .step_by(16)
        .find_map(|a| rsdp_at(read, a))
        .ok_or(AcpiError::NoRsdp)
}

/// The whole table at `addr`, if its signature is `signature` and its checksum holds.
fn table<'a>(
    read: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    addr: u64,
    signature: [u8; 4],
) -> Result<&'a [u8], AcpiError> {
    let bad = AcpiError::BadTable(addr, signature);
    let header = read(addr, HEADER_LEN).ok_or(bad)?;
    let len = u32_at(header, 4).ok_or(bad)? as usize;
    if header[..4] != signature || len < HEADER_LEN {
        return Err(bad);
    }
    let whole = read(addr, len).ok_or(bad)?;
    if sums_to_zero(whole) {
        Ok(whole)
    } else {
        Err(bad)
    }
}

/// The FADT the XSDT (revision 2+) or RSDT lists.
fn find_fadt<'a>(
    read: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    rsdp: &[u8],
) -> Result<&'a [u8], AcpiError> {
    find_table(read, rsdp, *b"FACP")?.ok_or(AcpiError::NoFadt)
}

/// The table with `signature` that the XSDT (revision 2+) or RSDT lists, if any.
fn find_table<'a>(
    read: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    rsdp: &[u8],
    signature: [u8; 4],
) -> Result<Option<&'a [u8]>, AcpiError> {
    let (root, entry_len) = match u64_at(rsdp, 24) {
        Some(xsdt) if rsdp[15] >= 2 && xsdt != 0 => (table(read, xsdt, *b"XSDT")?, 8),
        _ => {
            let rsdt = u64::from(u32_at(rsdp, 16).unwrap_or(0));
            (table(read, rsdt, *b"RSDT")?, 4)
        }
    };
    for entry in root[HEADER_LEN..].chunks_exact(entry_len) {
        let addr = match entry_len {
            8 => u64_at(entry, 0),
            _ => u32_at(entry, 0).map(u64::from),
        }
        .unwrap_or(0);
        if read(addr, 4) == Some(&signature[..]) {
            return table(read, addr, signature).map(Some);
        }
    }
    Ok(None)
}

/// Offset of the first allocation in the MCFG (after the header and 8 reserved bytes).
const MCFG_ENTRIES: usize = HEADER_LEN + 8;
/// Bytes per MCFG allocation: base (u64), segment (u16), start bus, end bus, 4 reserved.
const MCFG_ENTRY: usize = 16;

/// An ECAM region from the MCFG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecam {
    /// Physical base: the configuration space of `start_bus`, device 0, function 0.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus.
    pub start_bus: u8,
    /// Last bus.
    pub end_bus: u8,
}

impl Ecam {
    /// Bytes the region spans (1 MiB per bus).
    pub fn size(&self) -> u64 {
        (u64::from(self.end_bus.saturating_sub(self.start_bus)) + 1) << 20
    }
}

/// The ECAM for segment 0, bus 0, from the MCFG the XSDT lists (RSDP at `rsdp_hint`, 0:
/// search for it), as Linux's `pci_mmcfg` code reads it.
pub fn mcfg<'a>(
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
    rsdp_hint: u64,
) -> Result<Ecam, AcpiError> {
    let rsdp = find_rsdp(&read, rsdp_hint)?;
    let mcfg = find_table(&read, rsdp, *b"MCFG")?.ok_or(AcpiError::NoMcfg)?;
    mcfg.get(MCFG_ENTRIES..)
        .unwrap_or(&[])
        .chunks_exact(MCFG_ENTRY)
        .map(|e| Ecam {
            base: u64_at(e, 0).unwrap_or(0),
            segment: u16::from_le_bytes([e[8], e[9]]),
            start_bus: e[10],
            end_bus: e[11],
        })
        .find(|e| e.segment == 0 && e.start_bus == 0 && e.end_bus >= e.start_bus)
        .ok_or(AcpiError::NoBus0)
}

/// Each `_HID "LNRO0005"` in `aml` and what follows it up to the next one.
fn scan_dsdt(aml: &[u8]) -> Result<MmioDevices, AcpiError> {
    let mut out = MmioDevices {
        list: [MmioDevice::default(); MAX_DEVICES],
        len: 0,
    };
    let mut rest = aml;
    while let Some(at) = find(rest, HID_LNRO0005) {
        rest = &rest[at + HID_LNRO0005.len()..];
        let end = find(rest, HID_LNRO0005).unwrap_or(rest.len());
        let index = out.len;
        let device = device(&rest[..end]).ok_or(AcpiError::BadDevice(index))?;
        *out.list.get_mut(index).ok_or(AcpiError::TooManyDevices)? = device;
        out.len += 1;
    }
    Ok(out)
}

/// The device whose objects (after its `_HID`) are `aml`.
fn device(aml: &[u8]) -> Option<MmioDevice> {
    let mut d = MmioDevice {
        uid: find(aml, UID_NAME).and_then(|at| integer(&aml[at + UID_NAME.len()..])),
        ..MmioDevice::default()
    };
    let at = find(aml, CRS_BUFFER)? + CRS_BUFFER.len();
    let resources = buffer(&aml[at..])?;
    let (mut memory, mut interrupt) = (false, false);
    let mut i = 0;
    loop {
        let tag = *resources.get(i)?;
        if tag & 0x80 == 0 {
            // Small descriptor: length in bits 0-2.
            if tag & 0x78 == END_TAG & 0x78 {
                break;
            }
            i += 1 + usize::from(tag & 7);
            continue;
        }
        let len = usize::from(u16::from_le_bytes(
            resources.get(i + 1..i + 3)?.try_into().ok()?,
        ));
        let body = resources.get(i + 3..i + 3 + len)?;
        match tag {
            MEMORY32_FIXED if len >= 9 => {
                d.writable = body[0] & 1 == 1;
                d.base = u32_at(body, 1)?;
                d.size = u32_at(body, 5)?;
                memory = true;
            }
            EXTENDED_IRQ if len >= 6 && body[1] >= 1 => {
                d.edge = body[0] & 2 != 0;
                d.active_low = body[0] & 4 != 0;
                d.irq = u32_at(body, 2)?;
                interrupt = true;
            }
            _ => {}
        }
        i += 3 + len;
    }
    (memory && interrupt).then_some(d)
}

/// An AML integer: Zero, One, Ones, or a byte/word/dword/qword constant.
fn integer(aml: &[u8]) -> Option<u64> {
    let le = |n: usize| {
        let b = aml.get(1..1 + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    match *aml.first()? {
        0x00 => Some(0),
        0x01 => Some(1),
        0xff => Some(u64::MAX),
        0x0a => le(1),
        0x0b => le(2),
        0x0c => le(4),
        0x0e => le(8),
        _ => None,
    }
}

/// The bytes of a buffer whose BufferOp came just before `aml`: PkgLength, BufferSize
/// (an integer), then the bytes.
fn buffer(aml: &[u8]) -> Option<&[u8]> {
    let lead = *aml.first()?;
    let follow = usize::from(lead >> 6);
    let mut pkg_len = if follow == 0 {
        usize::from(lead & 0x3f)
    } else {
        usize::from(lead & 0x0f)
    };
    for k in 0..follow {
        pkg_len |= usize::from(*aml.get(1 + k)?) << (4 + 8 * k);
    }
    let pkg = aml.get(..pkg_len)?;
    let size_at = 1 + follow;
    let size = usize::try_from(integer(pkg.get(size_at..)?)?).ok()?;
    let size_len = match pkg[size_at] {
        0x0a => 2,
        0x0b => 3,
        0x0c => 5,
        0x0e => 9,
        _ => 1,
    };
    let data = &pkg[size_at + size_len..];
    data.get(..size.min(data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory from 0 to 1 MiB.
    struct Mem(Vec<u8>);

    impl Mem {
        fn new() -> Mem {
            Mem(vec![0; 0x10_0000])
        }

        fn put(&mut self, addr: u64, bytes: &[u8]) {
            let a = addr as usize;
            self.0[a..a + bytes.len()].copy_from_slice(bytes);
        }

        fn read<'a>(&'a self) -> impl Fn(u64, usize) -> Option<&'a [u8]> + 'a {
            move |addr, len| self.0.get(addr as usize..addr as usize + len)
        }
    }

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        t[at] = t.iter().fold(0u8, |s, x| s.wrapping_add(*x)).wrapping_neg();
    }

    fn sdt(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = signature.to_vec();
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(&[2, 0]);
        t.extend_from_slice(b"BULKHDBKHDTEST\x01\x00\x00\x00RVAT\x00\x00\x00\x01");
        assert_eq!(t.len(), HEADER_LEN);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    /// A device as bulkhead's vmm writes it (vmm/src/boot/dsdt.rs, checked there against
    /// iasl): `_HID`, `_UID`, `_CCA`, `_CRS` with Memory32Fixed and an extended interrupt.
    fn device_aml(uid: u8, base: u32, irq: u32, irq_flags: u8) -> Vec<u8> {
        let mut body = format!("VR{uid:02X}").into_bytes();
        body.extend_from_slice(HID_LNRO0005);
        body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x0a, uid]);
        body.extend_from_slice(b"\x08_CCA\x01");
        let mut res = vec![0x86, 9, 0, 1];
        res.extend_from_slice(&base.to_le_bytes());
        res.extend_from_slice(&0x1000u32.to_le_bytes());
        res.extend_from_slice(&[0x89, 6, 0, irq_flags, 1]);
        res.extend_from_slice(&irq.to_le_bytes());
        res.extend_from_slice(&[0x79, 0]);
        body.extend_from_slice(CRS_BUFFER);
        body.extend_from_slice(&[(3 + res.len()) as u8, 0x0a, res.len() as u8]);
        body.extend_from_slice(&res);
        let len = body.len() + 2;
        let mut dev = vec![0x5b, 0x82, 0x40 | (len & 0xf) as u8, (len >> 4) as u8];
        dev.extend_from_slice(&body);
        dev
    }

    /// RSDP at 0xe0000, XSDT, FADT and a DSDT holding `aml`; returns memory.
    fn tables(aml: &[u8]) -> Mem {
        let mut m = Mem::new();
        let dsdt = sdt(b"DSDT", aml);
        m.put(0xe_1000, &dsdt);
        let mut fadt_body = vec![0u8; 276 - HEADER_LEN];
        fadt_body[FADT_X_DSDT - HEADER_LEN..FADT_X_DSDT - HEADER_LEN + 8]
            .copy_from_slice(&0xe_1000u64.to_le_bytes());
        m.put(0xe_0100, &sdt(b"FACP", &fadt_body));
        m.put(0xe_0400, &sdt(b"APIC", &[0; 8]));
        let mut xsdt_body = 0xe_0400u64.to_le_bytes().to_vec();
        xsdt_body.extend_from_slice(&0xe_0100u64.to_le_bytes());
        m.put(0xe_0040, &sdt(b"XSDT", &xsdt_body));
        let mut rsdp = b"RSD PTR \x00BULKHD\x02".to_vec();
        rsdp.extend_from_slice(&0u32.to_le_bytes());
        rsdp.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
        rsdp.extend_from_slice(&0xe_0040u64.to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        fix_checksum(&mut rsdp[..RSDP_V1_LEN], 8);
        fix_checksum(&mut rsdp, 32);
        m.put(0xe_0000, &rsdp);
        m
    }

    fn scope(devices: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = b"\\_SB_"
            .iter()
            .copied()
            .chain(devices.iter().flatten().copied())
            .collect();
        let len = body.len() + 2;
        let mut s = vec![0x10, 0x40 | (len & 0xf) as u8, (len >> 4) as u8];
        s.extend_from_slice(&body);
        s
    }

    #[test]
    fn finds_each_device_by_hint_and_by_search() {
        let aml = scope(&[
            device_aml(0, 0xd000_0000, 5, 0x03),
            device_aml(1, 0xd000_1000, 6, 0x03),
            device_aml(2, 0xd000_2000, 7, 0x07),
        ]);
        let m = tables(&aml);
        for hint in [0xe_0000, 0] {
            let found = virtio_mmio_devices(m.read(), hint).unwrap();
            let d = found.as_slice();
            assert_eq!(d.len(), 3);
            assert_eq!(
                d[0].to_string(),
                "uid=0 base=0xd0000000 size=0x1000 rw irq=5 edge active-high"
            );
            assert_eq!(
                d[1].to_string(),
                "uid=1 base=0xd0001000 size=0x1000 rw irq=6 edge active-high"
            );
            assert_eq!(
                d[2].to_string(),
                "uid=2 base=0xd0002000 size=0x1000 rw irq=7 edge active-low"
            );
        }
    }

    #[test]
    fn an_empty_dsdt_has_no_devices() {
        let m = tables(&[]);
        assert!(virtio_mmio_devices(m.read(), 0)
            .unwrap()
            .as_slice()
            .is_empty());
    }

    #[test]
    fn bad_tables_and_devices_are_errors_not_panics() {
        let good = scope(&[device_aml(0, 0xd000_0000, 5, 0x03)]);
        // A wrong hint, and no RSDP at all.
        let m = tables(&good);
        assert_eq!(
            virtio_mmio_devices(m.read(), 0xe_0010).err(),
            Some(AcpiError::NoRsdp)
        );
        assert_eq!(
            virtio_mmio_devices(Mem::new().read(), 0).err(),
            Some(AcpiError::NoRsdp)
        );
        // A DSDT with a bad checksum.
        let mut m = tables(&good);
        m.0[0xe_1000 + 40] ^= 1;
        assert_eq!(
            virtio_mmio_devices(m.read(), 0).err(),
            Some(AcpiError::BadTable(0xe_1000, *b"DSDT"))
        );
        // A device whose _CRS is cut short, at every length.
        let dev = device_aml(0, 0xd000_0000, 5, 0x03);
        let crs = find(&dev, CRS_BUFFER).unwrap();
        for cut in crs..dev.len() {
            let m = tables(&dev[..cut]);
            assert_eq!(
                virtio_mmio_devices(m.read(), 0).err(),
                Some(AcpiError::BadDevice(0)),
                "cut at {cut}"
            );
        }
    }

    /// `tables`, plus an MCFG with `entries` listed in the XSDT.
    fn tables_with_mcfg(entries: &[(u64, u16, u8, u8)]) -> Mem {
        let mut m = tables(&[]);
        let mut body = vec![0u8; 8];
        for &(base, segment, start, end) in entries {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&segment.to_le_bytes());
            body.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        }
        m.put(0xe_2000, &sdt(b"MCFG", &body));
        let mut xsdt_body = 0xe_0400u64.to_le_bytes().to_vec();
        xsdt_body.extend_from_slice(&0xe_0100u64.to_le_bytes());
        xsdt_body.extend_from_slice(&0xe_2000u64.to_le_bytes());
        m.put(0xe_0040, &sdt(b"XSDT", &xsdt_body));
        m
    }

    #[test]
    fn the_mcfg_gives_the_ecam_of_bus_0() {
        let m = tables_with_mcfg(&[(0xe000_0000, 0, 0, 0)]);
        let e = mcfg(m.read(), 0).unwrap();
        assert_eq!(
            e,
            Ecam {
                base: 0xe000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0
            }
        );
        assert_eq!(e.size(), 1 << 20);
        // Another segment first, then ours.
        let m = tables_with_mcfg(&[(0x1_0000_0000, 1, 0, 255), (0xb000_0000, 0, 0, 3)]);
        assert_eq!(mcfg(m.read(), 0).unwrap().base, 0xb000_0000);
        // No bus 0 / no MCFG / a broken one.
        let m = tables_with_mcfg(&[(0xe000_0000, 0, 1, 4)]);
        assert_eq!(mcfg(m.read(), 0), Err(AcpiError::NoBus0));
        let m = tables_with_mcfg(&[]);
        assert_eq!(mcfg(m.read(), 0), Err(AcpiError::NoBus0));
        assert_eq!(mcfg(tables(&[]).read(), 0), Err(AcpiError::NoMcfg));
        let mut m = tables_with_mcfg(&[(0xe000_0000, 0, 0, 0)]);
        m.0[0xe_2000 + 50] ^= 1;
        assert_eq!(
            mcfg(m.read(), 0),
            Err(AcpiError::BadTable(0xe_2000, *b"MCFG"))
        );
    }

    #[test]
    fn too_many_devices() {
        let devices: Vec<_> = (0..=MAX_DEVICES as u8)
            .map(|i| device_aml(i, 0xd000_0000 + u32::from(i) * 0x1000, 5, 3))
            .collect();
        let m = tables(&scope(&devices));
        assert_eq!(
            virtio_mmio_devices(m.read(), 0).err(),
            Some(AcpiError::TooManyDevices)
        );
    }
}
