//! A stock Linux kernel (Debian's cloud kernel) goes through bulkhead's boot path: its
//! console shows the version banner, the command line we passed and the e820 map we built.
//!
//! On hosts without hardware virtualisation the kernel's own code is emulated (see
//! shared/host-kvm.md), so this stops at the e820 map; booting to user space needs
//! hardware KVM and is skipped here with a message.
//!
//! On hardware KVM the kernel also boots to an initramfs that loads the package's own virtio
//! modules, mounts an ext4 filesystem served by bulkhead-blk and writes a file the host then
//! reads from the image, once over virtio-mmio (devices found through the DSDT's LNRO0005
//! entries: Debian's kernel ignores `virtio_mmio.device=`) and once over virtio-pci (the
//! host bridge and ECAM from the DSDT and MCFG). What of that can run anywhere does, here
//! too: fetching the modules, ordering them by `modules.dep`, building the initramfs, making
//! and reading the ext4 image.

mod common;

#[path = "boot_linux/ext4.rs"]
mod ext4;
#[path = "boot_linux/newc.rs"]
mod newc;
#[path = "boot_linux/qemu.rs"]
mod qemu;

use common::initramfs::{self, Driver};
use common::skip::SkipKind;
use ext4::Ext4Image;

use std::time::Duration;

/// The banner and e820 map take about 15-35 s here (kernel code is emulated).
const DEADLINE: Duration = Duration::from_secs(240);
/// A bzImage first decompresses itself (emulated here): about 90 s more.
const BZIMAGE_DEADLINE: Duration = Duration::from_secs(600);
const MEMORY_MIB: u64 = 512;

/// The e820 lines Linux prints for the map bulkhead builds for `MEMORY_MIB` over
/// `transport`: on PCI, the ECAM is reserved too.
fn expected_e820(transport: Transport) -> Vec<String> {
    let top = (MEMORY_MIB << 20) - 1;
    let mut lines = vec![
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".to_string(),
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved".to_string(),
        format!("BIOS-e820: [mem 0x0000000000100000-0x{top:016x}] usable"),
    ];
    if transport.name == "pci" {
        lines.push("BIOS-e820: [mem 0x00000000e0000000-0x00000000e00fffff] reserved".to_string());
    }
    lines
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
        MMIO,
        2,
        &kernel.banner_prefix(),
        &[
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
        ],
        DEADLINE,
    );
}

/// Runs here too: over PCI the kernel is given the same map plus the ECAM, reserved (Linux
/// uses the MCFG's area only if it is), and the BAR window is left out of it.
#[test]
fn stock_kernel_on_pci_prints_the_ecam_reserved_in_e820() {
    require_kvm!();
    let Some(kernel) = stock_kernel() else {
        return;
    };
    boots_to_e820(
        &kernel.vmlinux,
        PCI,
        1,
        &kernel.banner_prefix(),
        &[],
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
    boots_to_e820(
        bzimage,
        MMIO,
        1,
        &kernel.banner_prefix(),
        &[],
        BZIMAGE_DEADLINE,
    );
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

/// Boots `kernel` over `transport` with `cpus` vCPUs and waits for the banner, our command
/// line, our e820 map and the `extra` lines.
fn boots_to_e820(
    kernel: &std::path::Path,
    transport: Transport,
    cpus: u8,
    banner: &str,
    extra: &[&str],
    deadline: Duration,
) {
    let cmdline = with_transport(
        "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1",
        transport,
        "nokaslr bulkhead.test-marker=e820check",
    );
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(["--transport", transport.name])
        .args(["--memory", &MEMORY_MIB.to_string()])
        .args(["--cpus", &cpus.to_string()])
        .args(["--cmdline", &cmdline]);
    let mut wanted = expected_e820(transport);
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
    // Nothing else is in the map: exactly our entries.
    let entries: Vec<&String> = lines.iter().filter(|l| l.contains("BIOS-e820:")).collect();
    assert_eq!(
        entries.len(),
        expected_e820(transport).len(),
        "{entries:#?}"
    );
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
    out.assert_guest_line(common::initramfs::READY_LINE);
    assert_eq!(
        out.code(),
        0,
        "reboot -f with reboot=k powers the VM off: {out:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A stock kernel on an ext4 disk, over each transport.

/// The transports, as `bulkhead run --transport` names them, with the driver that finds the
/// devices and where sysfs puts the disk: under the DSDT's first LNRO0005 device, or
/// function 00:01.0 of the PCI host bridge (the first device of the VM's list).
#[derive(Clone, Copy, Debug)]
struct Transport {
    name: &'static str,
    driver: Driver,
    sysfs: &'static str,
    /// Kernel parameters for it: no PCI probing on mmio, where there is no host bridge.
    cmdline: &'static str,
}

const MMIO: Transport = Transport {
    name: "mmio",
    driver: initramfs::VIRTIO_MMIO,
    sysfs: "/sys/devices/platform/LNRO0005:00/",
    cmdline: "pci=off",
};

const PCI: Transport = Transport {
    name: "pci",
    driver: initramfs::VIRTIO_PCI,
    sysfs: "/sys/devices/pci0000:00/0000:00:01.0/",
    cmdline: "",
};

/// `before`, the transport's parameters, `after`, separated by single spaces.
fn with_transport(before: &str, transport: Transport, after: &str) -> String {
    [before, transport.cmdline, after]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the host writes into the filesystem before the boot, and the guest prints.
const HOST_TEXT: &str = "written by the host with mkfs.ext4 -d";

/// What the guest writes over `transport`.
fn guest_text(transport: Transport) -> String {
    format!("written by linux over virtio-{}", transport.name)
}

/// The modules the disk initramfs loads over `transport`, in load order (paths relative to
/// the modules directory), and the modules directory.
fn disk_modules(
    kernel: &common::debian_kernel::DebianKernel,
    transport: Transport,
) -> Result<(common::debian_kernel::KernelModules, Vec<String>), String> {
    let modules = common::debian_kernel::debian_modules(kernel)?;
    let config = modules.read("config")?;
    let wanted = initramfs::modules_for(
        &config,
        &[transport.driver, initramfs::VIRTIO_BLK, initramfs::EXT4],
    )?;
    let files = initramfs::load_order(&modules.read("modules.dep")?, &wanted)?;
    Ok((modules, files))
}

/// The disk initramfs for `transport`, and the names of the modules it loads in order.
fn disk_initramfs(
    kernel: &common::debian_kernel::DebianKernel,
    transport: Transport,
) -> Result<(Vec<u8>, Vec<String>), String> {
    let (modules, files) = disk_modules(kernel, transport)?;
    let loaded = files
        .iter()
        .map(|f| {
            Ok(initramfs::Module {
                name: initramfs::module_name(f),
                elf: modules.module(f)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let names = loaded.iter().map(|m| m.name.clone()).collect();
    let archive = initramfs::build_disk(
        std::path::Path::new(initramfs::BUSYBOX),
        &loaded,
        &guest_text(transport),
    )?;
    Ok((archive, names))
}

/// Runs here: for each transport, the initramfs holds the transport's and virtio_blk's
/// modules (those the kernel's config builds as modules), each an ELF relocatable object,
/// each loaded by `/init` after every module `modules.dep` says it needs.
#[test]
fn disk_initramfs_loads_each_transports_modules_after_their_dependencies() {
    let Some(kernel) = stock_kernel() else {
        return;
    };
    if let Err(why) = std::fs::metadata(initramfs::BUSYBOX) {
        skip!(
            SkipKind::MissingTool,
            "no {} ({why}): install busybox-static",
            initramfs::BUSYBOX
        );
    }
    for transport in [MMIO, PCI] {
        let (archive, names) = match disk_initramfs(&kernel, transport) {
            Ok(built) => built,
            Err(why) => skip!(
                SkipKind::DownloadFailed,
                "no {} initramfs: {why}",
                transport.name
            ),
        };
        let (modules, files) = disk_modules(&kernel, transport).unwrap();
        let config = modules.read("config").unwrap();
        let dep = modules.read("modules.dep").unwrap();
        // The transport and virtio_blk are loaded when they are modules, and last of all
        // what they need; Debian 12's 6.1 kernel has both transports as modules.
        for driver in [transport.driver, initramfs::VIRTIO_BLK] {
            let is_module = initramfs::built(&config, driver.symbol) == initramfs::Built::Module;
            assert_eq!(
                names.iter().any(|n| n == driver.module),
                is_module,
                "{}: CONFIG_{} and the modules loaded {names:?}",
                transport.name,
                driver.symbol
            );
        }
        if initramfs::built(&config, transport.driver.symbol) == initramfs::Built::Module {
            assert!(names.iter().any(|n| n == "virtio"), "{names:?}");
            assert!(names.iter().any(|n| n == "virtio_ring"), "{names:?}");
        }
        let other = if transport.name == "mmio" { PCI } else { MMIO };
        assert!(!names.iter().any(|n| n == other.driver.module), "{names:?}");
        // Every dependency modules.dep gives comes before its user.
        for (i, file) in files.iter().enumerate() {
            let line = dep
                .lines()
                .find(|l| l.starts_with(&format!("{file}:")))
                .unwrap();
            for needed in line.split_once(':').unwrap().1.split_whitespace() {
                let at = files.iter().position(|f| f == needed);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{file} needs {needed}, loaded at {at:?}: {files:?}"
                );
            }
        }

        let entries = newc::entries(&archive);
        let init = entries.iter().find(|e| e.name == "init").expect("an /init");
        let init = String::from_utf8(init.data.clone()).unwrap();
        let insmods: Vec<&str> = init
            .lines()
            .filter_map(|l| l.strip_prefix("$B insmod /lib/modules/"))
            .map(|l| l.split(".ko").next().unwrap())
            .collect();
        assert_eq!(insmods, names, "{init}");
        for name in &names {
            let file = format!("lib/modules/{name}.ko");
            let m = entries
                .iter()
                .find(|e| e.name == file)
                .unwrap_or_else(|| panic!("no {file} in the archive"));
            assert_eq!(&m.data[..4], b"\x7fELF", "{file}");
            assert_eq!(
                u16::from_le_bytes([m.data[16], m.data[17]]),
                1,
                "{file}: ET_REL"
            );
        }
        for dir in ["dev", "proc", "sys", "mnt", "lib/modules"] {
            let e = entries
                .iter()
                .find(|e| e.name == dir)
                .unwrap_or_else(|| panic!("no /{dir}"));
            assert_eq!(e.mode & 0o170_000, 0o040_000, "/{dir} is a directory");
        }
        assert!(init.contains(&guest_text(transport)), "{init}");
        eprintln!(
            "{} ({}): {} bytes, loads {names:?}",
            transport.name,
            kernel.release,
            archive.len()
        );
    }
}

/// Runs here: the image the guest mounts is made with the host's file in it, and what a
/// writer leaves in it is read back by debugfs; e2fsck finds it clean.
#[test]
fn ext4_image_is_made_and_read_back() {
    if let Err(why) = ext4::tools() {
        skip!(SkipKind::MissingTool, "{why}");
    }
    let image = Ext4Image::new("ext4-selftest", &[(initramfs::FROM_HOST, HOST_TEXT)]).unwrap();
    assert_eq!(image.cat(initramfs::FROM_HOST).unwrap(), HOST_TEXT);
    let missing = image.cat(initramfs::FROM_GUEST).unwrap_err();
    assert!(missing.contains("not found"), "{missing}");
    image
        .write(initramfs::FROM_GUEST, &format!("{}\n", guest_text(PCI)))
        .unwrap();
    assert_eq!(
        image.cat(initramfs::FROM_GUEST).unwrap(),
        format!("{}\n", guest_text(PCI))
    );
    image.fsck().unwrap();
}

/// Runs here: the module order from a `modules.dep` (a made-up one, so it can fail), and
/// what a config builds.
#[test]
fn modules_load_after_what_they_depend_on() {
    let dep = "kernel/drivers/virtio/virtio.ko:\n\
               kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
               kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
               kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:\n\
               kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n";
    assert_eq!(
        initramfs::load_order(dep, &["virtio_pci", "virtio_blk"]).unwrap(),
        [
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz",
            "kernel/drivers/virtio/virtio_pci.ko.xz",
            "kernel/drivers/block/virtio_blk.ko",
        ]
    );
    assert!(initramfs::load_order(dep, &["virtio_mmio"])
        .unwrap_err()
        .contains("virtio_mmio"));
    assert_eq!(
        initramfs::module_name("a/b/virtio-rng.ko.zst"),
        "virtio_rng"
    );

    let config = "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_BLK is not set\n\
                  CONFIG_EXT4_FS=y\n";
    assert_eq!(
        initramfs::modules_for(config, &[initramfs::VIRTIO_PCI, initramfs::EXT4]).unwrap(),
        Vec::<&str>::new()
    );
    assert_eq!(
        initramfs::modules_for(config, &[initramfs::VIRTIO_MMIO]).unwrap(),
        ["virtio_mmio"]
    );
    assert!(initramfs::modules_for(config, &[initramfs::VIRTIO_BLK])
        .unwrap_err()
        .contains("CONFIG_VIRTIO_BLK"));
}

#[test]
fn stock_kernel_writes_to_an_ext4_disk_over_virtio_mmio() {
    writes_to_an_ext4_disk(MMIO);
}

#[test]
fn stock_kernel_writes_to_an_ext4_disk_over_virtio_pci() {
    writes_to_an_ext4_disk(PCI);
}

/// Boots the stock kernel over `transport` with an ext4 disk; its `/init` loads the modules,
/// mounts the disk, prints the host's file and writes its own, which the host then reads
/// from the image.
fn writes_to_an_ext4_disk(transport: Transport) {
    require_kvm!();
    if !common::hardware_kvm() {
        skip!(
            SkipKind::NoHardwareVirt,
            "booting a stock kernel to user space needs hardware virtualisation \
             (no /sys/module/kvm_intel or kvm_amd here: guest kernel code is emulated, \
             see shared/host-kvm.md); the initramfs, module and ext4 tests here cover what \
             runs without it"
        );
    }
    let Some(kernel) = stock_kernel() else {
        return;
    };
    if let Err(why) = ext4::tools() {
        skip!(SkipKind::MissingTool, "{why}");
    }
    let (archive, names) = match disk_initramfs(&kernel, transport) {
        Ok(built) => built,
        Err(why) => skip!(SkipKind::DownloadFailed, "no initramfs: {why}"),
    };
    let initrd = std::env::temp_dir().join(format!(
        "bulkhead-disk-initramfs-{}-{}.cpio",
        transport.name,
        std::process::id()
    ));
    std::fs::write(&initrd, archive).expect("writing the initramfs");
    let tag = format!("linux-{}", transport.name);
    let image = Ext4Image::new(&tag, &[(initramfs::FROM_HOST, HOST_TEXT)]).unwrap();
    let cmdline = with_transport("console=ttyS0 reboot=k panic=-1", transport, "rdinit=/init");
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel.vmlinux)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--transport", transport.name])
        .arg("--disk")
        .arg(format!("path={}", image.path.display()))
        .args(["--memory", "512", "--cpus", "2"])
        .args(["--cmdline", &cmdline]);
    let out = common::run(cmd, Duration::from_secs(180));
    let _ = std::fs::remove_file(&initrd);
    out.assert_no_panic();
    check_disk_run(&out, transport, transport.sysfs, &image, &names);
    if transport.name == "pci" {
        // The kernel took the bridge from our DSDT and the ECAM from our MCFG, accepted as
        // reserved in our e820 map (6.1 calls it MMCONFIG, later kernels ECAM).
        let console = &out.stdout;
        assert!(
            console.contains("PCI Root Bridge [PCI0] (domain 0000 [bus 00])"),
            "no PCI0 root bridge on the console:\n{console}"
        );
        assert!(
            console
                .lines()
                .any(|l| l.contains("[mem 0xe0000000-0xe00fffff]")
                    && l.contains("reserved")
                    && l.contains("E820")),
            "the ECAM was not accepted as reserved in e820:\n{console}"
        );
    }
}

/// Checks a disk run over `transport` (modules `names`): `/init` reported no failure, printed
/// the host's file, found `/dev/vda` under `sysfs`, finished; the VM powered off; the image
/// holds the guest's file and is clean.
fn check_disk_run(
    out: &common::Output,
    transport: Transport,
    sysfs: &str,
    image: &Ext4Image,
    names: &[String],
) {
    let console = &out.stdout;
    assert!(
        !console.contains(&format!("{} FAIL", initramfs::DISK_PREFIX)),
        "over {} (modules {names:?}):\n{console}\nstderr:\n{}",
        transport.name,
        out.stderr
    );
    out.assert_guest_line(&format!(
        "{} host wrote {HOST_TEXT}",
        initramfs::DISK_PREFIX
    ));
    let at = console
        .lines()
        .find_map(|l| {
            l.trim_end()
                .strip_prefix(&format!("{} vda at ", initramfs::DISK_PREFIX))
        })
        .unwrap_or_else(|| panic!("no vda line:\n{console}"));
    assert!(
        at.starts_with(sysfs),
        "over {} /dev/vda is {at}, not under {sysfs}",
        transport.name,
    );
    out.assert_guest_line(initramfs::DISK_DONE_LINE);
    assert_eq!(out.code(), 0, "the VM did not power off cleanly: {out:#?}");
    assert_eq!(
        image.cat(initramfs::FROM_GUEST).unwrap(),
        format!("{}\n", guest_text(transport))
    );
    image.fsck().unwrap();
}
