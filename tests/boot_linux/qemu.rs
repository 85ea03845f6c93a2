//! The Linux-side pieces checked under an independent VMM, QEMU with TCG (no KVM needed, so
//! they run on every host; package qemu-system-x86): the disk initramfs on both transports,
//! and Debian's kernel taking bulkhead's own PCI tables (MCFG, host bridge, ECAM
//! reservation), which it cannot reach under this host's KVM (shared/host-kvm.md).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const QEMU: &str = "qemu-system-x86_64";
/// A TCG boot to the initramfs takes 5-10 s here.
const QEMU_DEADLINE: Duration = Duration::from_secs(240);
/// microvm's timers cannot be calibrated under TCG: the kernel is told the TSC's rate.
const MICROVM_TIMERS: &str = "tsc_early_khz=2000000 tsc=reliable lpj=4000000";

/// `Err` says why QEMU cannot be run.
fn available() -> Result<(), String> {
    Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(drop)
        .map_err(|e| format!("{QEMU} is not installed (package qemu-system-x86): {e}"))
}

/// QEMU with TCG, `machine`, the serial console on stdout, exiting when the guest reboots.
fn qemu(machine: &str, kernel: &Path, initrd: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.stdin(Stdio::null())
        .args(["-M", machine, "-accel", "tcg", "-cpu", "max", "-m", "512"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline]);
    cmd
}

/// Writes `bytes` to a fresh temporary file named for `what`; removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(what: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("bulkhead-{what}-{}.cpio", std::process::id()));
        std::fs::write(&path, bytes).expect("writing a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The disk initramfs, modules and image work under QEMU, so what the hardware-KVM test
/// boots is known to be right apart from bulkhead itself: virtio-mmio on a microvm with ACPI
/// (its DSDT's LNRO0005 devices), modern virtio-pci on a q35.
#[test]
fn disk_initramfs_works_under_qemu() {
    if let Err(why) = available().and_then(|()| ext4::tools()) {
        skip!(SkipKind::MissingTool, "{why}");
    }
    let Some(kernel) = stock_kernel() else {
        return;
    };
    let Some(bzimage) = kernel.bzimage.clone() else {
        skip!(
            SkipKind::DownloadFailed,
            "${} named a vmlinux without its bzImage",
            common::debian_kernel::VMLINUX_ENV
        );
    };
    for transport in [MMIO, PCI] {
        let (archive, names) = match disk_initramfs(&kernel, transport) {
            Ok(built) => built,
            Err(why) => skip!(SkipKind::DownloadFailed, "no initramfs: {why}"),
        };
        let initrd = TempFile::new(&format!("qemu-initramfs-{}", transport.name), &archive);
        let image = Ext4Image::new(
            &format!("qemu-{}", transport.name),
            &[(initramfs::FROM_HOST, HOST_TEXT)],
        )
        .unwrap();
        let base = "console=ttyS0 reboot=k panic=-1";
        let (mut cmd, device, sysfs) = if transport.name == "mmio" {
            let cmdline =
                with_transport(base, transport, &format!("rdinit=/init {MICROVM_TIMERS}"));
            (
                qemu("microvm,acpi=on", &kernel.vmlinux, &initrd.0, &cmdline),
                "virtio-blk-device,drive=d",
                MMIO.sysfs,
            )
        } else {
            let cmdline = with_transport(base, transport, "rdinit=/init");
            (
                qemu("q35", &bzimage, &initrd.0, &cmdline),
                "virtio-blk-pci,drive=d,disable-legacy=on",
                "/sys/devices/pci0000:00/",
            )
        };
        let drive = format!("file={},if=none,id=d,format=raw", image.path.display());
        cmd.args(["-drive", &drive, "-device", device]);
        let started = Instant::now();
        let out = common::run(cmd, QEMU_DEADLINE);
        check_disk_run(&out, transport, sysfs, &image, &names);
        eprintln!(
            "{}: QEMU ran the disk initramfs in {:.1?}",
            transport.name,
            started.elapsed()
        );
    }
}

/// Debian's kernel takes bulkhead's PCI tables, exactly as `acpi::build` makes them for
/// `--transport pci`: the DSDT's AML (loaded as an SSDT beside the microvm's own DSDT, which
/// has no PCI) and the MCFG, given through the initrd (`CONFIG_ACPI_TABLE_UPGRADE`). The
/// microvm's e820 map does not reserve the ECAM, so Linux uses it only because our PNP0C02
/// device reserves it; it then enumerates `\_SB_.PCI0` with our windows. (No device answers
/// at the ECAM there, so the bus is empty: the vmm's side is tested elsewhere.)
#[test]
fn linux_takes_bulkheads_pci_tables_under_qemu() {
    if let Err(why) = available() {
        skip!(SkipKind::MissingTool, "{why}");
    }
    let Some(kernel) = stock_kernel() else {
        return;
    };
    let shell = match initramfs::build(Path::new(initramfs::BUSYBOX)) {
        Ok(a) => a,
        Err(why) => skip!(SkipKind::MissingTool, "no initramfs: {why}"),
    };
    let image = bulkhead_vmm::boot::acpi::build(1, &[], bulkhead_vmm::config::Transport::Pci)
        .expect("the PCI tables");
    let tables = [
        ("ssdt.aml", as_ssdt(table(&image, b"DSDT"))),
        ("mcfg.aml", table(&image, b"MCFG").to_vec()),
    ];
    let initrd = TempFile::new(
        "qemu-acpi-upgrade",
        &initramfs::with_acpi_tables(&tables, &shell),
    );
    let cmdline = format!("console=ttyS0 reboot=k panic=-1 rdinit=/init {MICROVM_TIMERS}");
    let cmd = qemu("microvm,acpi=on", &kernel.vmlinux, &initrd.0, &cmdline);
    let out = common::run(cmd, QEMU_DEADLINE);
    out.assert_guest_line(initramfs::READY_LINE);
    let console = &out.stdout;
    let has = |needle: &str| console.lines().any(|l| l.contains(needle));
    for needle in [
        "ACPI: Table Upgrade: install [SSDT-BULKHD-BKHDDSDT]",
        "ACPI: Table Upgrade: install [MCFG-BULKHD-BKHDMCFG]",
        "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])",
        "pci_bus 0000:00: root bus resource [bus 00]",
        "pci_bus 0000:00: root bus resource [io  0x0000-0x0cf7 window]",
        "pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]",
        "pci_bus 0000:00: root bus resource [mem 0xc0000000-0xcfffffff window]",
        "[mem 0xe0000000-0xe00fffff] has been reserved",
    ] {
        assert!(has(needle), "no {needle:?} on the console:\n{console}");
    }
    // Linux 6.1 says MMCONFIG, later ones ECAM; either way the MCFG's area, accepted
    // because a motherboard resource reserves it.
    assert!(
        console
            .lines()
            .any(|l| l.contains("[mem 0xe0000000-0xe00fffff]")
                && l.contains("reserved")
                && l.contains("motherboard resource")),
        "the ECAM was not accepted as reserved by a motherboard resource:\n{console}"
    );
    for bad in ["ACPI Error", "ACPI BIOS Error", "ACPI Warning"] {
        assert!(!has(bad), "{bad:?} on the console:\n{console}");
    }
    assert_eq!(out.code(), 0, "{out:#?}");
}

/// The table with `signature` in the image `acpi::build` made (RSDP first, at
/// `layout::ACPI_START`): through the XSDT, and the FADT for the DSDT.
fn table<'a>(image: &'a [u8], signature: &[u8; 4]) -> &'a [u8] {
    let base = bulkhead_vmm::layout::ACPI_START;
    let at = |addr: u64| {
        let off = usize::try_from(addr - base).unwrap();
        let len = u32::from_le_bytes(image[off + 4..off + 8].try_into().unwrap()) as usize;
        &image[off..off + len]
    };
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let xsdt = at(u64_at(image, 24));
    for entry in xsdt[36..].chunks(8) {
        let t = at(u64::from_le_bytes(entry.try_into().unwrap()));
        if &t[..4] == signature {
            return t;
        }
        if &t[..4] == b"FACP" && signature == b"DSDT" {
            return at(u64_at(t, 140));
        }
    }
    panic!("no {} table", String::from_utf8_lossy(signature));
}

/// The DSDT renamed SSDT (same AML), its checksum fixed.
fn as_ssdt(dsdt: &[u8]) -> Vec<u8> {
    let mut t = dsdt.to_vec();
    t[..4].copy_from_slice(b"SSDT");
    t[9] = 0;
    t[9] = t.iter().fold(0u8, |s, b| s.wrapping_sub(*b));
    t
}
