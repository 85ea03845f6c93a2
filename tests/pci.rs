//! End to end, virtio-pci only: what the guest finds on PCI bus 0 is what the transport
//! promises (README, "Transports"), and a guest programming hostile PCI state has no
//! effect beyond its own VM. What both transports share is tested once for each in the
//! device tests (`blk.rs`, `net.rs`, `console.rs`, `boot_test_guest.rs`).

mod common;

use std::time::Duration;

use common::disk::{assert_pattern_only, Image};
use common::transport::{assert_guest_used, Transport};

const DEADLINE: Duration = Duration::from_secs(120);

/// The guest's `pci <bdf> ...` lines for function `bdf`, without the prefix.
fn function<'a>(stdout: &'a str, bdf: &str) -> Vec<&'a str> {
    let prefix = format!("bulkhead-guest: pci {bdf} ");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// The value of `key=` in `line`.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{v:?} is not hex: {e}"))
}

/// Disks, then NICs, then the console: 00:01.0, 00:02.0, 00:03.0 behind the host bridge
/// at 00:00.0, each with virtio's ids for its type, revision 1, BAR0 in the 32-bit window
/// (each its own), and an MSI-X table of one vector per queue plus one for configuration:
/// a disk with 4 queues has 5, a NIC with 2 queue pairs (4 queues and the control queue)
/// has 6, the console (2 queues) 3.
#[test]
fn functions_are_where_the_transport_puts_them() {
    require_kvm!();
    require_netns!();
    let img = Image::new("pci-probe", 1 << 20);
    let console =
        std::env::temp_dir().join(format!("bulkhead-pci-probe-{}.log", std::process::id()));
    let out = common::run_vm_on(
        Transport::Pci,
        &[
            "--disk",
            &img.disk_arg(",queues=4"),
            "--net",
            "auto,queues=2",
            "--console",
            &format!("file={}", console.display()),
            "--cmdline",
            "bulkhead.test=pci-probe",
        ],
        DEADLINE,
    );
    let _ = std::fs::remove_file(&console);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS pci-probe");
    assert_guest_used(Transport::Pci, &out.stdout);
    out.assert_line("bulkhead-guest: pci functions=4 virtio=3");
    let bridge = function(&out.stdout, "00:00.0");
    assert_eq!(field(bridge[0], "class"), "0x060000", "{bridge:?}");
    let mut bars = Vec::new();
    for (bdf, device, msix) in [
        ("00:01.0", "0x1042", "5"),
        ("00:02.0", "0x1041", "6"),
        ("00:03.0", "0x1043", "3"),
    ] {
        let lines = function(&out.stdout, bdf);
        assert_eq!(lines.len(), 2, "{bdf}: {lines:?}\n{}", out.stdout);
        let (header, virtio) = (lines[0], lines[1]);
        assert_eq!(field(header, "vendor"), "0x1af4", "{header}");
        assert_eq!(field(header, "device"), device, "{header}");
        assert_eq!(field(header, "rev"), "1", "{header}");
        let bar = hex(field(header, "bar0"));
        assert!(
            (0xc000_0000..0xd000_0000).contains(&bar),
            "{bdf}: BAR0 {bar:#x} outside the window"
        );
        bars.push(bar);
        assert_eq!(field(virtio, "msix"), msix, "{bdf}: {virtio}");
    }
    bars.sort();
    bars.dedup();
    assert_eq!(bars.len(), 3, "each function its own BAR0: {bars:x?}");
}

/// The guest moves its disk's BAR0 over RAM and over the console's BAR, points an MSI-X
/// entry at RAM and has the device interrupt, writes all-ones of every size at every
/// offset of config space (`pci-hostile`, each step checked in the guest: RAM stays RAM,
/// the page is not written, the disk still reads); afterwards the disk serves writes and
/// interrupts as before, the image holds exactly those writes, the VM ends with status 0,
/// the vmm neither panicked nor died, and what it logged stays small.
#[test]
fn hostile_pci_state_stays_in_the_vm() {
    require_kvm!();
    let img = Image::new("pci-hostile", 16 << 20);
    let console =
        std::env::temp_dir().join(format!("bulkhead-pci-hostile-{}.log", std::process::id()));
    let out = common::run_vm_on(
        Transport::Pci,
        &[
            "--disk",
            &img.disk_arg(""),
            "--console",
            &format!("file={}", console.display()),
            "--cmdline",
            "bulkhead.test=pci-hostile,blk-rw,blk-irq bulkhead.blk.rw=100:8",
        ],
        DEADLINE,
    );
    let _ = std::fs::remove_file(&console);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(Transport::Pci, &out.stdout);
    for step in [
        "bar-over-ram",
        "bar-over-bar",
        "msix-bad-address",
        "config-writes",
    ] {
        out.assert_line(&format!("bulkhead-guest: blk0 pci-hostile {step} ok"));
    }
    for pass in ["pci-hostile", "blk-rw", "blk-irq"] {
        out.assert_line(&format!("bulkhead-guest: PASS {pass}"));
    }
    assert!(!out.stderr.contains("failed"), "{}", out.stderr);
    assert!(
        out.stderr.len() < 64 << 10,
        "{} bytes of stderr",
        out.stderr.len()
    );
    assert_pattern_only(&img.path, &img.original, &img.read(), 100, 8);
}
