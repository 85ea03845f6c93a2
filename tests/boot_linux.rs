//! A stock Linux kernel (Debian's cloud kernel) goes through bulkhead's boot path: its
//! console shows the version banner, the command line we passed and the e820 map we built.
//!
//! On hosts without hardware virtualisation the kernel's own code is emulated (see
//! shared/host-kvm.md), so this stops at the e820 map; booting to user space needs
//! hardware KVM and is skipped here with a message.

mod common;

use std::time::Duration;

/// The banner and e820 map take about 20-35 s here (kernel code is emulated).
const DEADLINE: Duration = Duration::from_secs(240);
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
    let kernel = match common::debian_kernel::debian_vmlinux() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIPPED: no stock kernel: {why}");
            return;
        }
    };
    let cmdline =
        "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 pci=off bulkhead.test-marker=e820check";
    let mut cmd = common::bulkhead();
    cmd.arg("run").arg("--kernel").arg(&kernel.vmlinux).args([
        "--memory",
        &MEMORY_MIB.to_string(),
        "--cmdline",
        cmdline,
    ]);
    let banner = kernel.banner_prefix();
    let e820 = expected_e820();
    let want_cmdline = format!("Command line: {cmdline}");
    let seen = |lines: &[String], needle: &str| lines.iter().any(|l| l.contains(needle));
    let (lines, ok, stderr) = common::run_until(cmd, DEADLINE, |lines| {
        seen(lines, &banner) && seen(lines, &want_cmdline) && e820.iter().all(|e| seen(lines, e))
    });
    assert!(
        ok,
        "within {DEADLINE:?} the console did not show {banner:?}, {want_cmdline:?} and {e820:#?}.\nconsole:\n{}\nstderr:\n{stderr}",
        lines.join("\n")
    );
    // Nothing else claims to be RAM: exactly our three entries.
    let entries: Vec<&String> = lines.iter().filter(|l| l.contains("BIOS-e820:")).collect();
    assert_eq!(entries.len(), 3, "{entries:#?}");
    if !common::hardware_kvm() {
        eprintln!(
            "SKIPPED (part): booting to an initramfs shell needs hardware virtualisation \
             (no /sys/module/kvm_intel or kvm_amd here; guest kernel code is emulated)"
        );
    }
}
