//! What an orchestrator prepares before it starts Firecracker (here `bulkhead-firecracker`):
//! the guest's ELF and a root image in a directory, and a TAP in the host's namespace.

use std::path::Path;
use std::process::Command;

/// Writes the test guest as `dir/guest.elf` and a 16 MiB `dir/root.img`.
pub fn write_guest_files(dir: &Path) {
    std::fs::write(dir.join("guest.elf"), bulkhead_vmm::TEST_GUEST).unwrap();
    let img = std::fs::File::create(dir.join("root.img")).unwrap();
    img.set_len(16 << 20).unwrap();
}

/// A TAP made in the host's network namespace (`ip tuntap add`), deleted on drop.
pub struct HostTap(pub String);

impl HostTap {
    /// Makes TAP `name`; panics with ip's output if it cannot.
    pub fn add(name: String) -> HostTap {
        let out = Command::new("ip")
            .args(["tuntap", "add", &name, "mode", "tap"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip tuntap add: {out:?}");
        HostTap(name)
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}
