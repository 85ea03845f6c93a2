//! A minimal initramfs for booting a stock kernel to user space: a static busybox, a
//! `/dev/console` node and an `/init` that prints one line and reboots (with `reboot=k`
//! bulkhead then powers off). Written as an uncompressed `newc` cpio archive.
//!
//! [`build_disk`] makes the one of the disk test: it also holds kernel modules (the virtio
//! transport and virtio_blk when the kernel builds them as modules, each after the modules
//! it depends on as `modules.dep` lists them) and an `/init` that loads them, mounts the
//! ext4 filesystem on `/dev/vda`, prints a file the host put there, writes one back,
//! unmounts and reboots.

use std::path::Path;

/// The line `/init` prints once user space runs.
pub const READY_LINE: &str = "bulkhead-initramfs: shell ready";

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds the archive around the static busybox at `busybox`; `Err` says why it cannot
/// (no busybox, or a dynamically linked one that cannot run alone in an initramfs).
pub fn build(busybox: &Path) -> Result<Vec<u8>, String> {
    let init =
        format!("#!/bin/busybox sh\n/bin/busybox echo {READY_LINE}\n/bin/busybox reboot -f\n");
    Ok(base(busybox, &init)?.finish())
}

/// A driver the disk test needs: its Kconfig symbol and, when built as a module, the module's
/// name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Driver {
    /// `CONFIG_<symbol>`.
    pub symbol: &'static str,
    /// The module's name (its file name without `.ko`).
    pub module: &'static str,
}

/// The virtio-mmio transport (devices found through the DSDT's LNRO0005 entries).
pub const VIRTIO_MMIO: Driver = Driver {
    symbol: "VIRTIO_MMIO",
    module: "virtio_mmio",
};
/// The virtio-pci transport.
pub const VIRTIO_PCI: Driver = Driver {
    symbol: "VIRTIO_PCI",
    module: "virtio_pci",
};
/// The virtio block driver.
pub const VIRTIO_BLK: Driver = Driver {
    symbol: "VIRTIO_BLK",
    module: "virtio_blk",
};
/// ext4.
pub const EXT4: Driver = Driver {
    symbol: "EXT4_FS",
    module: "ext4",
};

/// How a kernel's `config` builds a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Built {
    /// `=y`: in the kernel image.
    In,
    /// `=m`: a module.
    Module,
    /// Not set.
    Absent,
}

/// What `config` (a kernel `.config`) says of `CONFIG_<symbol>`.
pub fn built(config: &str, symbol: &str) -> Built {
    let key = format!("CONFIG_{symbol}=");
    match config.lines().find_map(|l| l.strip_prefix(&key)) {
        Some("y") => Built::In,
        Some("m") => Built::Module,
        _ => Built::Absent,
    }
}

/// The modules to load for `drivers` on a kernel built with `config`: those built as
/// modules, in order; `Err` names a driver the kernel lacks.
pub fn modules_for(config: &str, drivers: &[Driver]) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for d in drivers {
        match built(config, d.symbol) {
            Built::In => {}
            Built::Module => out.push(d.module),
            Built::Absent => return Err(format!("the kernel has no CONFIG_{}", d.symbol)),
        }
    }
    Ok(out)
}

/// A module's name from its path in `modules.dep`: the file name without `.ko` (and a
/// compression suffix), `-` read as `_` as the kernel does.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The files to `insmod`, in order, to load `modules`: each module's dependencies from
/// `modules_dep` (depmod lists a module's whole dependency chain, the one to load first
/// last) before it, each file once. `Err` names a module `modules.dep` does not list.
pub fn load_order(modules_dep: &str, modules: &[&str]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for &want in modules {
        let (path, deps) = modules_dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(path, _)| module_name(path) == want)
            .ok_or_else(|| format!("modules.dep lists no module {want}"))?;
        for file in deps.split_whitespace().rev().chain([path]) {
            if !out.iter().any(|f| f == file) {
                out.push(file.to_string());
            }
        }
    }
    Ok(out)
}

/// What the disk `/init` prints before each of its own lines.
pub const DISK_PREFIX: &str = "bulkhead-initramfs:";
/// The file the host puts on the filesystem, which `/init` prints.
pub const FROM_HOST: &str = "from-host";
/// The file `/init` writes.
pub const FROM_GUEST: &str = "from-guest";
/// The line `/init` prints once it has written and unmounted the filesystem.
pub const DISK_DONE_LINE: &str = "bulkhead-initramfs: disk done";

/// A module for the initramfs: its name and its (uncompressed) ELF bytes.
pub struct Module {
    /// Its name ([`module_name`]); it goes in as `/lib/modules/<name>.ko`.
    pub name: String,
    /// The ELF relocatable object.
    pub elf: Vec<u8>,
}

/// The disk test's `/init`: loads `modules` in order, waits for `/dev/vda`, prints where
/// sysfs puts it (the transport's device path), mounts it as ext4, prints `/from-host`,
/// writes `wrote` (one line, no quotes) to `/from-guest`, unmounts and reboots. Every
/// failure prints a `FAIL` line and reboots.
pub fn disk_init(modules: &[String], wrote: &str) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("$B insmod /lib/modules/{m}.ko || fail \"insmod {m}\"\n"))
        .collect();
    format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
say() {{ $B echo "{DISK_PREFIX} $*"; }}
fail() {{ say "FAIL $*"; $B cat /proc/partitions; $B reboot -f; }}
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev || fail "mounting devtmpfs"
{insmods}n=0
while [ ! -b /dev/vda ]; do
    n=$((n + 1))
    [ $n -gt 30 ] && fail "no /dev/vda after 30 s"
    $B sleep 1
done
say "vda at $($B readlink -f /sys/block/vda)"
$B mount -t ext4 /dev/vda /mnt || fail "mounting /dev/vda as ext4"
say "host wrote $($B cat /mnt/{FROM_HOST})"
$B echo "{wrote}" > /mnt/{FROM_GUEST} || fail "writing /mnt/{FROM_GUEST}"
$B umount /mnt || fail "unmounting /mnt"
$B echo "{DISK_DONE_LINE}"
$B reboot -f
"#
    )
}

/// The disk test's archive: busybox, `modules` under `/lib/modules`, and [`disk_init`].
pub fn build_disk(busybox: &Path, modules: &[Module], wrote: &str) -> Result<Vec<u8>, String> {
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    let mut w = base(busybox, &disk_init(&names, wrote))?;
    for dir in ["sys", "mnt", "lib", "lib/modules"] {
        w.dir(dir);
    }
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.elf);
    }
    Ok(w.finish())
}

/// The archive's common part: `/dev/console`, `/bin/busybox`, `/proc` and `init`.
fn base(busybox: &Path, init: &str) -> Result<Cpio, String> {
    let bin = std::fs::read(busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    if has_interpreter(&bin) {
        return Err(format!(
            "{} is dynamically linked; install Debian's busybox-static",
            busybox.display()
        ));
    }
    let mut w = Cpio::default();
    w.dir("dev");
    w.dir("bin");
    w.dir("proc");
    w.node("dev/console", 5, 1);
    w.file("bin/busybox", 0o755, &bin);
    w.file("init", 0o755, init.as_bytes());
    Ok(w)
}

/// `archive` with ACPI tables in front, for Linux's table upgrade
/// (`CONFIG_ACPI_TABLE_UPGRADE`): an uncompressed cpio holding each `(file name, table)` as
/// `kernel/firmware/acpi/<name>`, which the kernel reads before the rest of the initrd.
pub fn with_acpi_tables(tables: &[(&str, Vec<u8>)], archive: &[u8]) -> Vec<u8> {
    let mut w = Cpio::default();
    for dir in ["kernel", "kernel/firmware", "kernel/firmware/acpi"] {
        w.dir(dir);
    }
    for (name, table) in tables {
        w.file(&format!("kernel/firmware/acpi/{name}"), 0o644, table);
    }
    let mut out = w.finish();
    // The next archive starts on a 512-byte boundary, as the kernel's documentation does it.
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend_from_slice(archive);
    out
}

/// Whether an ELF has a PT_INTERP program header (is dynamically linked).
pub(crate) fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    })
}

/// A `newc` cpio writer.
#[derive(Default)]
pub(crate) struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn node(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, (0, 0), data);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

// Its unit tests are in tests/common_selftest/initramfs.rs, so that they run once, not in
// every end-to-end binary that compiles this module.
