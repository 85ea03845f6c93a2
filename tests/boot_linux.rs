//! A stock Linux kernel (Debian's cloud kernel) goes through bulkhead's boot path: its
//! console shows the version banner, the command line we passed and the e820 map we built.
//!
//! On hosts without hardware virtualisation the kernel's own code is emulated (see
//! shared/host-kvm.md), so this stops at the e820 map; booting to user space needs
//! hardware KVM and is skipped here with a message.

mod common;

use common::skip::SkipKind;

use std::time::Duration;

/// The banner and e820 map take about 15-35 s here (kernel code is emulated).
const DEADLINE: Duration = Duration::from_secs(240);
/// A bzImage first decompresses itself (emulated here): about 90 s more.
const BZIMAGE_DEADLINE: Duration = Duration::from_secs(600);
const MEMORY_MIB: u64 = 512;

/// The e820 lines Linux prints for the map bulkhead builds for `MEMORY_MIB`.
fn expected_e820() -> Vec<String> {
    let top = (MEMORY_MIB << 20) - 1;
    vec![
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".to_string(),
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved".to_string(),
        format!("BIOS-e820: [mem 0x0000000000100000-0x{top:016x}] usable"),
    ]
}

#[test]
fn stock_kernel_prints_banner_cmdline_and_e820() {
    require_kvm!();
    let Some(kernel) = stock_kernel() else {
        return;
    };
    // An ELF vmlinux with a PVH note: entered through PVH. Debian's kernel has no MP-table
    // support, so it counts its CPUs from our ACPI MADT.
    boots_to_e820(
        &kernel.vmlinux,
        2,
        &kernel.banner_prefix(),
        &[
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
        ],
        DEADLINE,
    );
}

#[test]
fn stock_bzimage_decompresses_and_boots() {
    require_kvm!();
    let Some(kernel) = stock_kernel() else {
        return;
    };
    let Some(bzimage) = &kernel.bzimage else {
        // CI sets no such variable, so there (as for a failed download) this fails.
        skip!(
            SkipKind::DownloadFailed,
            "${} named a vmlinux without its bzImage",
            common::debian_kernel::VMLINUX_ENV
        );
    };
    // A bzImage: entered at startup_64 through the 64-bit boot protocol; its decompressor
    // (emulated here, so slow) unpacks the kernel before the banner.
    boots_to_e820(bzimage, 1, &kernel.banner_prefix(), &[], BZIMAGE_DEADLINE);
}

/// Debian's kernel, or `None` after saying why the test skips (fetching or extracting it
/// failed: a failure under CI, which installs apt, dpkg and the decompressors).
fn stock_kernel() -> Option<common::debian_kernel::DebianKernel> {
    match common::debian_kernel::debian_vmlinux() {
        Ok(k) => Some(k),
        Err(why) => {
            common::skip::skip_or_fail(
                SkipKind::DownloadFailed,
                &format!("no stock kernel: {why}"),
            );
            None
        }
    }
}

/// Boots `kernel` with `cpus` vCPUs and waits for the banner, our command line, our e820
/// map and the `extra` lines.
fn boots_to_e820(
    kernel: &std::path::Path,
    cpus: u8,
    banner: &str,
    extra: &[&str],
    deadline: Duration,
) {
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 pci=off nokaslr bulkhead.test-marker=e820check";
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", &MEMORY_MIB.to_string()])
        .args(["--cpus", &cpus.to_string()])
        .args(["--cmdline", cmdline]);
    let mut wanted = expected_e820();
    wanted.extend(extra.iter().map(|s| s.to_string()));
    let want_cmdline = format!("Command line: {cmdline}");
    let seen = |lines: &[String], needle: &str| lines.iter().any(|l| l.contains(needle));
    let started = std::time::Instant::now();
    let (lines, ok, stderr) = common::run_until(cmd, deadline, |lines| {
        seen(lines, banner) && seen(lines, &want_cmdline) && wanted.iter().all(|e| seen(lines, e))
    });
    assert!(
        ok,
        "within {deadline:?} the console of {} did not show {banner:?}, {want_cmdline:?} and all of {wanted:#?}.\nconsole:\n{}\nstderr:\n{stderr}",
        kernel.display(),
        lines.join("\n")
    );
    eprintln!(
        "{}: banner, command line, e820 map and {} more lines after {:.1?}",
        kernel.display(),
        extra.len(),
        started.elapsed()
    );
    // Nothing else claims to be RAM: exactly our three entries.
    let entries: Vec<&String> = lines.iter().filter(|l| l.contains("BIOS-e820:")).collect();
    assert_eq!(entries.len(), 3, "{entries:#?}");
}

#[test]
fn stock_kernel_boots_to_an_initramfs_shell() {
    require_kvm!();
    if !common::hardware_kvm() {
        skip!(
            SkipKind::NoHardwareVirt,
            "booting a stock kernel to user space needs hardware virtualisation \
             (no /sys/module/kvm_intel or kvm_amd here: guest kernel code is emulated, \
             see shared/host-kvm.md); the banner/e820 test covers the boot path"
        );
    }
    let Some(kernel) = stock_kernel() else {
        return;
    };
    let archive = match common::initramfs::build(std::path::Path::new(common::initramfs::BUSYBOX)) {
        Ok(a) => a,
        Err(why) => skip!(SkipKind::MissingTool, "no initramfs: {why}"),
    };
    let initrd =
        std::env::temp_dir().join(format!("bulkhead-initramfs-{}.cpio", std::process::id()));
    std::fs::write(&initrd, archive).expect("writing the initramfs");
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel.vmlinux)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory", "512", "--cpus", "2"])
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 pci=off rdinit=/init",
        ]);
    let out = common::run(cmd, Duration::from_secs(120));
    let _ = std::fs::remove_file(&initrd);
    out.assert_no_panic();
    out.assert_line(common::initramfs::READY_LINE);
    assert_eq!(
        out.code(),
        0,
        "reboot -f with reboot=k powers the VM off: {out:#?}"
    );
}
