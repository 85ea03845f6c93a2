//! A minimal initramfs for booting a stock kernel to user space: a static busybox, a
//! `/dev/console` node and an `/init` that prints one line and reboots (with `reboot=k`
//! bulkhead then powers off). Written as an uncompressed `newc` cpio archive.

use std::path::Path;

/// The line `/init` prints once user space runs.
pub const READY_LINE: &str = "bulkhead-initramfs: shell ready";

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds the archive around the static busybox at `busybox`; `Err` says why it cannot
/// (no busybox, or a dynamically linked one that cannot run alone in an initramfs).
pub fn build(busybox: &Path) -> Result<Vec<u8>, String> {
    let bin = std::fs::read(busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    if has_interpreter(&bin) {
        return Err(format!(
            "{} is dynamically linked; install Debian's busybox-static",
            busybox.display()
        ));
    }
    let init =
        format!("#!/bin/busybox sh\n/bin/busybox echo {READY_LINE}\n/bin/busybox reboot -f\n");
    let mut w = Cpio::default();
    w.dir("dev");
    w.dir("bin");
    w.dir("proc");
    w.node("dev/console", 5, 1);
    w.file("bin/busybox", 0o755, &bin);
    w.file("init", 0o755, init.as_bytes());
    Ok(w.finish())
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
