//! The ACPI tables, checked by an independent tool: ACPICA's `iasl` (Debian package
//! acpica-tools) disassembles every table the vmm writes into guest memory, and the
//! disassembled DSDT must compile again without a warning.
//!
//! The tables are read back from guest memory the way a kernel finds them: the RSDP, the
//! XSDT's entries, the FADT's `X_DSDT`. On the mmio transport the devices are the slots the
//! builder assigns (`virtio::slot`, which also gives the command line's
//! `virtio_mmio.device=` tokens); on PCI, the host bridge, its ECAM reservation and the
//! MCFG.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_vmm::boot::acpi;
use bulkhead_vmm::config::Transport;
use bulkhead_vmm::layout;
use bulkhead_vmm::virtio::{self, MmioSlot};
use skip::SkipKind;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A directory of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-{what}-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn iasl_installed() -> bool {
    Command::new("iasl").arg("-v").output().is_ok()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The whole table at `addr`, by its header's length.
fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let len = u32_at(&read(mem, addr, 8), 4) as usize;
    read(mem, addr, len)
}

/// A table as found in guest memory, and iasl's disassembly of it.
struct Table {
    signature: [u8; 4],
    addr: u64,
    bytes: Vec<u8>,
    dsl: String,
}

/// Every table reachable from the RSDP at `rsdp`: the XSDT, what it lists, and the DSDT
/// the FADT points at (its 64-bit `X_DSDT`, at offset 140).
fn tables(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Vec<Table> {
    let rsdp = read(mem, rsdp.0, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    let at = |addr: u64| {
        let bytes = table(mem, addr);
        Table {
            signature: bytes[..4].try_into().unwrap(),
            addr,
            bytes,
            dsl: String::new(),
        }
    };
    let xsdt = at(u64_at(&rsdp, 24));
    let mut out = Vec::new();
    for entry in xsdt.bytes[36..].chunks(8) {
        let t = at(u64::from_le_bytes(entry.try_into().unwrap()));
        if &t.signature == b"FACP" {
            out.push(at(u64_at(&t.bytes, 140)));
        }
        out.push(t);
    }
    out.push(xsdt);
    out
}

/// Runs `iasl` with `args` in `dir`; returns its stdout and stderr together, after
/// checking it succeeded.
fn iasl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?} failed:\n{text}");
    text
}

/// Writes the tables for `cpus` vCPUs and `slots` into guest memory, disassembles each
/// with `iasl -d`, and returns the disassembly by signature, after checking iasl found
/// nothing to complain about and the DSDT compiles again.
fn disassemble(cpus: u8, slots: &[MmioSlot], transport: Transport) -> Option<Vec<Table>> {
    if !iasl_installed() {
        skip::skip_or_fail(
            SkipKind::MissingTool,
            "iasl is not installed (apt-get install acpica-tools)",
        );
        return None;
    }
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), layout::HIMEM_START as usize)]).unwrap();
    let rsdp = acpi::write(&mem, cpus, slots, transport).unwrap();
    let dir = TempDir::new("acpi-iasl");
    let mut out = Vec::new();
    for mut t in tables(&mem, rsdp) {
        let name = String::from_utf8_lossy(&t.signature).to_lowercase();
        std::fs::write(dir.0.join(format!("{name}.dat")), &t.bytes).unwrap();
        let log = iasl(&dir.0, &["-d", &format!("{name}.dat")]);
        for word in ["Error", "Warning", "Invalid", "Unknown"] {
            assert!(
                !log.contains(word),
                "iasl -d {name}.dat says {word}:\n{log}"
            );
        }
        t.dsl = std::fs::read_to_string(dir.0.join(format!("{name}.dsl"))).unwrap();
        for word in ["Invalid", "Incorrect checksum"] {
            assert!(!t.dsl.contains(word), "{name}.dsl says {word}:\n{}", t.dsl);
        }
        out.push(t);
    }
    // The disassembled DSDT is valid ASL: it compiles again with no error or warning.
    // (iasl 20200925 disassembles a DSDT without AML to a block it never closes, so an
    // empty one is only disassembled.)
    if !slots.is_empty() || transport == Transport::Pci {
        let log = iasl(&dir.0, &["-p", "dsdt-again", "dsdt.dsl"]);
        assert!(
            log.contains("Compilation successful. 0 Errors, 0 Warnings"),
            "iasl dsdt.dsl:\n{log}"
        );
    }
    Some(out)
}

fn find<'a>(tables: &'a [Table], sig: &[u8; 4]) -> &'a Table {
    tables
        .iter()
        .find(|t| &t.signature == sig)
        .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(sig)))
}

/// The `Field Name : Value` lines of iasl's disassembly of a data table (FADT, MADT,
/// XSDT), in order, the `[offset]` prefix dropped; decoded flag bits included.
fn fields(dsl: &str) -> Vec<(String, String)> {
    dsl.lines()
        .filter(|l| !l.trim_start().starts_with(['/', '*']))
        .filter_map(|l| {
            let l = l.split_once(']').map_or(l, |(_, rest)| rest);
            let (k, v) = l.split_once(" : ")?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The value of every field called `name`, in order.
fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The ASL iasl prints for one slot's device, from `Device (VRxx)` to its closing brace.
fn expected_device(slot: &MmioSlot) -> String {
    format!(
        r#"        Device (VR{index:02X})
        {{
            Name (_HID, "LNRO0005")  // _HID: Hardware ID
            Name (_UID, {uid})  // _UID: Unique ID
            Name (_CCA, One)  // _CCA: Cache Coherency Attribute
            Name (_CRS, ResourceTemplate ()  // _CRS: Current Resource Settings
            {{
                Memory32Fixed (ReadWrite,
                    {base:#010X},         // Address Base
                    0x00001000,         // Address Length
                    )
                Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )
                {{
                    {irq:#010X},
                }}
            }})
        }}
"#,
        index = slot.index,
        uid = match slot.index {
            0 => "Zero".to_string(),
            1 => "One".to_string(),
            n => format!("{n:#04X}"),
        },
        base = slot.base,
        irq = slot.irq,
    )
    .replace("0X", "0x")
}

fn slots(count: usize) -> Vec<MmioSlot> {
    (0..count)
        .map(|i| virtio::slot(i).expect("a slot"))
        .collect()
}

fn check_devices(dsdt: &str, slots: &[MmioSlot]) {
    assert!(dsdt.contains("    Scope (\\_SB)\n"), "{dsdt}");
    for slot in slots {
        let want = expected_device(slot);
        assert!(
            dsdt.contains(&want),
            "device {} not in the disassembly as\n{want}\ndisassembly:\n{dsdt}",
            slot.index
        );
    }
    assert_eq!(
        dsdt.matches("\"LNRO0005\"").count(),
        slots.len(),
        "one LNRO0005 device per slot:\n{dsdt}"
    );
}

/// Disk, net and console (three slots), two vCPUs: each slot is an LNRO0005 device with its
/// window and interrupt, and the FADT, MADT and XSDT disassemble to what the vmm meant.
#[test]
fn iasl_finds_each_virtio_mmio_device_and_sane_fadt_and_madt() {
    let slots = slots(3);
    let Some(tables) = disassemble(2, &slots, Transport::Mmio) else {
        return;
    };
    let dsdt = find(&tables, b"DSDT");
    check_devices(&dsdt.dsl, &slots);

    let fadt = fields(&find(&tables, b"FACP").dsl);
    for (name, want) in [
        ("Hardware Reduced (V5)", "1"),
        ("8042 Present on ports 60/64 (V2)", "1"),
        ("VGA Not Present (V4)", "1"),
        ("CMOS RTC Not Present (V5)", "1"),
    ] {
        assert_eq!(values(&fadt, name), [want], "FADT {name}: {fadt:?}");
    }
    // The 32-bit DSDT pointer is unused, the 64-bit one is where the DSDT was found.
    assert_eq!(
        values(&fadt, "DSDT Address"),
        ["00000000".to_string(), format!("{:016X}", dsdt.addr)],
        "FADT: {fadt:?}"
    );

    let madt = fields(&find(&tables, b"APIC").dsl);
    assert_eq!(values(&madt, "Local Apic Address"), ["FEE00000"]);
    assert_eq!(values(&madt, "PC-AT Compatibility"), ["1"]);
    assert_eq!(
        values(&madt, "Subtable Type"),
        [
            "00 [Processor Local APIC]",
            "00 [Processor Local APIC]",
            "01 [I/O APIC]",
            "02 [Interrupt Source Override]",
            "04 [Local APIC NMI]",
        ],
        "MADT: {madt:?}"
    );
    assert_eq!(values(&madt, "Local Apic ID"), ["00", "01"]);
    assert_eq!(values(&madt, "Processor Enabled"), ["1", "1"]);
    assert_eq!(values(&madt, "I/O Apic ID"), ["02"]);
    assert_eq!(values(&madt, "Address"), ["FEC00000"]);
    // ISA IRQ 0 (the PIT) arrives on GSI 2; the NMI on every processor's LINT1.
    assert_eq!(values(&madt, "Source"), ["00"]);
    assert_eq!(values(&madt, "Interrupt"), ["00000000", "00000002"]);
    assert_eq!(values(&madt, "Interrupt Input LINT"), ["01"]);

    let xsdt = fields(&find(&tables, b"XSDT").dsl);
    let listed: Vec<_> = tables
        .iter()
        .filter(|t| [b"FACP", b"APIC"].contains(&&t.signature))
        .map(|t| format!("{:016X}", t.addr))
        .collect();
    let xsdt_entries: Vec<_> = xsdt
        .iter()
        .filter(|(k, _)| k.starts_with("ACPI Table Address"))
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(xsdt_entries, listed, "XSDT: {xsdt:?}");
}

/// The most devices the IOAPIC's pins allow, with the most vCPUs: every one is there.
#[test]
fn iasl_finds_every_device_at_the_most_slots() {
    let slots: Vec<_> = (0..).map_while(virtio::slot).collect();
    assert_eq!(slots.len(), 19);
    let Some(tables) = disassemble(254, &slots, Transport::Mmio) else {
        return;
    };
    check_devices(&find(&tables, b"DSDT").dsl, &slots);
}

/// No devices: an empty but valid DSDT.
#[test]
fn iasl_accepts_a_dsdt_without_devices() {
    let Some(tables) = disassemble(1, &[], Transport::Mmio) else {
        return;
    };
    let dsdt = &find(&tables, b"DSDT").dsl;
    assert!(!dsdt.contains("LNRO0005"), "{dsdt}");
    assert!(dsdt.contains("DefinitionBlock"), "{dsdt}");
}

/// The host bridge as iasl prints it: PNP0A08 (compatible PNP0A03), segment 0, bus 0, and
/// its windows (bus 0 only, the I/O a PC bridge forwards around its consumed config ports,
/// the 32-bit BAR window from the layout).
fn expected_host_bridge() -> String {
    format!(
        r#"        Device (PCI0)
        {{
            Name (_HID, EisaId ("PNP0A08") /* PCI Express Bus */)  // _HID: Hardware ID
            Name (_CID, EisaId ("PNP0A03") /* PCI Bus */)  // _CID: Compatible ID
            Name (_SEG, Zero)  // _SEG: PCI Segment
            Name (_BBN, Zero)  // _BBN: BIOS Bus Number
            Name (_UID, Zero)  // _UID: Unique ID
            Name (_CCA, One)  // _CCA: Cache Coherency Attribute
            Name (_CRS, ResourceTemplate ()  // _CRS: Current Resource Settings
            {{
                WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
                    0x0000,             // Granularity
                    0x0000,             // Range Minimum
                    0x0000,             // Range Maximum
                    0x0000,             // Translation Offset
                    0x0001,             // Length
                    ,, )
                IO (Decode16,
                    0x0CF8,             // Range Minimum
                    0x0CF8,             // Range Maximum
                    0x01,               // Alignment
                    0x08,               // Length
                    )
                WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
                    0x0000,             // Granularity
                    0x0000,             // Range Minimum
                    0x0CF7,             // Range Maximum
                    0x0000,             // Translation Offset
                    0x0CF8,             // Length
                    ,, , TypeStatic, DenseTranslation)
                WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
                    0x0000,             // Granularity
                    0x0D00,             // Range Minimum
                    0xFFFF,             // Range Maximum
                    0x0000,             // Translation Offset
                    0xF300,             // Length
                    ,, , TypeStatic, DenseTranslation)
                DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
                    0x00000000,         // Granularity
                    {first:#010X},         // Range Minimum
                    {last:#010X},         // Range Maximum
                    0x00000000,         // Translation Offset
                    {len:#010X},         // Length
                    ,, , AddressRangeMemory, TypeStatic)
            }})
        }}
"#,
        first = layout::PCI_MMIO_START,
        last = layout::PCI_MMIO_END - 1,
        len = layout::PCI_MMIO_END - layout::PCI_MMIO_START,
    )
    .replace("0X", "0x")
}

/// The PNP0C02 device reserving the ECAM, as iasl prints it.
fn expected_ecam_reservation() -> String {
    format!(
        r#"        Device (MRES)
        {{
            Name (_HID, EisaId ("PNP0C02") /* PNP Motherboard Resources */)  // _HID: Hardware ID
            Name (_UID, Zero)  // _UID: Unique ID
            Name (_CRS, ResourceTemplate ()  // _CRS: Current Resource Settings
            {{
                Memory32Fixed (ReadWrite,
                    {base:#010X},         // Address Base
                    {size:#010X},         // Address Length
                    )
            }})
        }}
"#,
        base = layout::PCI_ECAM_START,
        size = layout::PCI_ECAM_SIZE,
    )
    .replace("0X", "0x")
}

/// The XSDT's entries as iasl decodes them, and the address of each table found.
fn xsdt_lists(tables: &[Table]) -> (Vec<String>, Vec<String>) {
    let xsdt = fields(&find(tables, b"XSDT").dsl);
    let listed = xsdt
        .iter()
        .filter(|(k, _)| k.starts_with("ACPI Table Address"))
        .map(|(_, v)| v.clone())
        .collect();
    let found = tables
        .iter()
        .filter(|t| ![b"XSDT", b"DSDT"].contains(&&t.signature))
        .map(|t| format!("{:016X}", t.addr))
        .collect();
    (listed, found)
}

/// PCI, two vCPUs: the DSDT has the host bridge with its windows and the PNP0C02 ECAM
/// reservation and no virtio-mmio device; the XSDT lists an MCFG whose one allocation is
/// the ECAM for bus 0 of segment 0; the FADT leaves MSI supported.
#[test]
fn iasl_finds_the_pci_host_bridge_its_ecam_and_the_mcfg() {
    let Some(tables) = disassemble(2, &[], Transport::Pci) else {
        return;
    };
    let dsdt = &find(&tables, b"DSDT").dsl;
    assert!(dsdt.contains("    Scope (\\_SB)\n"), "{dsdt}");
    for want in [expected_host_bridge(), expected_ecam_reservation()] {
        assert!(
            dsdt.contains(&want),
            "not in the disassembly as\n{want}\ndisassembly:\n{dsdt}"
        );
    }
    assert_eq!(dsdt.matches("EisaId (\"PNP0A08\")").count(), 1, "{dsdt}");
    assert!(!dsdt.contains("LNRO0005"), "{dsdt}");
    // No INTx: the functions use MSI-X only, so no routing table.
    assert!(!dsdt.contains("_PRT"), "{dsdt}");

    let mcfg = fields(&find(&tables, b"MCFG").dsl);
    assert_eq!(
        values(&mcfg, "Base Address"),
        [format!("{:016X}", layout::PCI_ECAM_START)],
        "MCFG: {mcfg:?}"
    );
    assert_eq!(values(&mcfg, "Segment Group Number"), ["0000"]);
    assert_eq!(values(&mcfg, "Start Bus Number"), ["00"]);
    assert_eq!(values(&mcfg, "End Bus Number"), ["00"]);
    assert_eq!(
        values(&mcfg, "Table Length"),
        ["0000003C"],
        "one allocation"
    );

    let (listed, found) = xsdt_lists(&tables);
    assert_eq!(listed, found);
    assert_eq!(listed.len(), 3, "FADT, MADT, MCFG");

    let fadt = fields(&find(&tables, b"FACP").dsl);
    assert_eq!(values(&fadt, "MSI Not Supported (V4)"), ["0"], "{fadt:?}");
}

/// The mmio transport's tables have no PCI: no MCFG, no host bridge, MSI declared absent.
#[test]
fn iasl_finds_no_pci_on_mmio() {
    let Some(tables) = disassemble(2, &slots(2), Transport::Mmio) else {
        return;
    };
    assert!(!tables.iter().any(|t| &t.signature == b"MCFG"));
    let dsdt = &find(&tables, b"DSDT").dsl;
    for absent in ["PNP0A08", "PNP0A03", "PNP0C02", "PCI0"] {
        assert!(!dsdt.contains(absent), "{absent}: {dsdt}");
    }
    let fadt = fields(&find(&tables, b"FACP").dsl);
    assert_eq!(values(&fadt, "MSI Not Supported (V4)"), ["1"], "{fadt:?}");
    let (listed, found) = xsdt_lists(&tables);
    assert_eq!(listed, found);
    assert_eq!(listed.len(), 2, "FADT, MADT");
}

/// One resource as ACPICA's `acpiexec` decodes it: its title and `Key : Value` fields.
#[derive(Debug)]
struct Resource {
    title: String,
    fields: Vec<(String, String)>,
}

impl Resource {
    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }
}

/// The resources of `device`'s `_CRS`, decoded by ACPICA's resource manager (the code
/// Linux's `acpi_walk_resources` runs) after `acpiexec` loaded `dsdt` into its namespace.
fn acpica_resources(dsdt: &[u8], device: &str) -> Vec<Resource> {
    let dir = TempDir::new("acpiexec");
    std::fs::write(dir.0.join("dsdt.dat"), dsdt).unwrap();
    let out = Command::new("acpiexec")
        .args(["-b", &format!("resources {device}"), "dsdt.dat"])
        .current_dir(&dir.0)
        .output()
        .expect("running acpiexec (package acpica-tools)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "acpiexec:\n{text}");
    assert!(
        text.contains("1 ACPI AML tables successfully acquired and loaded"),
        "{text}"
    );
    assert!(text.contains("Evaluating _CRS"), "{text}");
    let mut resources: Vec<Resource> = Vec::new();
    for line in text.lines() {
        let is_title = line.len() > 5
            && line.starts_with('[')
            && line[1..3].bytes().all(|b| b.is_ascii_digit())
            && &line[3..5] == "] ";
        if is_title {
            resources.push(Resource {
                title: line[5..].trim().to_string(),
                fields: Vec::new(),
            });
        } else if line.starts_with("Resource Conversion") {
            break;
        } else if let (Some(r), Some((k, v))) = (resources.last_mut(), line.split_once(" : ")) {
            r.fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    assert_eq!(
        resources.last().map(|r| r.title.as_str()),
        Some("EndTag Resource"),
        "{text}"
    );
    resources.pop();
    resources
}

/// ACPICA's interpreter (what Linux runs) loads the PCI DSDT and decodes the host bridge's
/// `_CRS` into the bus range, the consumed config ports, the forwarded I/O and the BAR
/// window, all produced for children, and the PNP0C02's into the ECAM.
#[test]
fn acpica_decodes_the_host_bridge_and_ecam_resources() {
    let Some(tables) = disassemble(2, &[], Transport::Pci) else {
        return;
    };
    let dsdt = &find(&tables, b"DSDT").bytes;
    let bridge = acpica_resources(dsdt, "\\_SB.PCI0");
    let summary: Vec<_> = bridge
        .iter()
        .map(|r| {
            let kind = r
                .fields
                .iter()
                .find(|(k, _)| k == "Resource Type")
                .map_or(r.title.as_str(), |(_, v)| v.as_str());
            let (min, max) = (r.get("Address Minimum"), r.get("Address Maximum"));
            (kind.to_string(), min.to_string(), max.to_string())
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("Bus Number Range", "0000", "0000"),
            s("I/O Resource", "0CF8", "0CF8"),
            s("I/O Range", "0000", "0CF7"),
            s("I/O Range", "0D00", "FFFF"),
            s(
                "Memory Range",
                &format!("{:08X}", layout::PCI_MMIO_START),
                &format!("{:08X}", layout::PCI_MMIO_END - 1)
            ),
        ],
        "{bridge:#?}"
    );
    assert_eq!(bridge[1].get("Address Length"), "08", "0xCF8..=0xCFF");
    for window in [&bridge[0], &bridge[2], &bridge[3], &bridge[4]] {
        assert_eq!(window.get("Consumer/Producer"), "ResourceProducer");
    }
    assert_eq!(bridge[4].get("Write Protect"), "ReadWrite");

    let ecam = acpica_resources(dsdt, "\\_SB.MRES");
    assert_eq!(ecam.len(), 1, "{ecam:#?}");
    assert_eq!(ecam[0].title, "32-Bit Fixed Memory Range Resource");
    assert_eq!(
        ecam[0].get("Address"),
        format!("{:08X}", layout::PCI_ECAM_START)
    );
    assert_eq!(
        ecam[0].get("Address Length"),
        format!("{:08X}", layout::PCI_ECAM_SIZE)
    );
}
