//! The launcher's copy of KVM's supported CPUID (`/run/bulkhead/kvm-cpuid`), handed to the
//! vmm so that it need not ask KVM: `KVM_GET_SUPPORTED_CPUID` runs the host's `cpuid` for
//! every leaf, about 1 ms of CPU per VM where the host is itself a guest (see
//! `bulkhead_vmm::kvm::cpuid_table`).
//!
//! The answer is fixed for one boot of the kernel with one load of the KVM modules, so the
//! copy is kept with that key on its first line: the boot id and the inode of every
//! `/sys/module/kvm*` directory (a module loaded again gets a new one, and may have new
//! parameters). A copy with another key, or that is not a table, is replaced by asking
//! KVM. Only root keeps one (in the run directory, root's alone); anyone else's vmm asks
//! KVM itself. Nothing here stops a VM from starting: when the copy can be neither read
//! nor made, the vmm asks KVM as it always could.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bulkhead_vmm::kvm::cpuid_table;

/// The file in the run directory.
const FILE: &str = "kvm-cpuid";
/// Where the boot id is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Where the loaded modules are.
const MODULES: &str = "/sys/module";
/// The longest first line read: a boot id and a few modules.
const MAX_KEY_LINE: usize = 512;

/// The table for this vmm, as a memory file to inherit, or `None` (the vmm
/// asks KVM): kept as root in the run directory, otherwise not at all.
pub fn for_vmm() -> Option<OwnedFd> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let dir = Path::new(crate::run_dir::RUN_DIR);
    let table = match table_in(dir) {
        Ok(t) => t,
        Err(e) => {
            log::debug!("KVM CPUID table not kept ({e}); the vmm asks KVM");
            return None;
        }
    };
    match memory_file(&table) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::debug!("KVM CPUID table not handed over ({e}); the vmm asks KVM");
            None
        }
    }
}

/// The table kept in `dir` if its key is this host's, else KVM's answer (then kept).
fn table_in(dir: &Path) -> io::Result<String> {
    let key = key(Path::new(BOOT_ID), Path::new(MODULES))?;
    // Read only from a directory that is root's alone, as written.
    crate::run_dir::ensure_dir(dir).map_err(io::Error::other)?;
    let path = dir.join(FILE);
    match read_kept(&path, &key) {
        Ok(Some(table)) => return Ok(table),
        Ok(None) => {}
        Err(e) => log::info!("{}: {e}; asking KVM again", path.display()),
    }
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let entries =
        cpuid_table::supported(&kvm).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let table = cpuid_table::encode(&entries);
    keep(dir, &path, &key, &table)?;
    Ok(table)
}

/// What a kept table is valid for: `key <boot id> <module>:<inode> ...`, modules sorted.
fn key(boot_id: &Path, modules: &Path) -> io::Result<String> {
    let boot = fs::read_to_string(boot_id)?;
    let mut key = format!("key {}", boot.trim());
    let mut loaded: Vec<(String, u64)> = fs::read_dir(modules)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name == "kvm" || name.starts_with("kvm_"))
                .then(|| e.metadata().ok().map(|m| (name, m.ino())))
                .flatten()
        })
        .collect();
    if loaded.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no KVM module under {}", modules.display()),
        ));
    }
    loaded.sort();
    for (name, ino) in loaded {
        key.push_str(&format!(" {name}:{ino}"));
    }
    Ok(key)
}

/// The table kept at `path` under `key`: `None` when there is none or its key is another's;
/// an error when it is not one we wrote.
fn read_kept(path: &Path, key: &str) -> io::Result<Option<String>> {
    // Not through a symlink, and never waiting on a FIFO put in its place.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file"));
    }
    let limit = (MAX_KEY_LINE + 1 + cpuid_table::MAX_TEXT) as u64;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(invalid("too long for a table"));
    }
    let Some((first, table)) = text.split_once('\n') else {
        return Err(invalid("no key line"));
    };
    if first != key {
        log::debug!("{}: kept for {first:?}, not {key:?}", path.display());
        return Ok(None);
    }
    cpuid_table::decode(table).map_err(|e| invalid(&e.to_string()))?;
    Ok(Some(table.to_string()))
}

/// The file a table is written to before it is renamed into place: named after its
/// launcher (`bulkhead-<pid>-...`), so that the stale sweep removes one that a launcher
/// killed between the write and the rename left (`crate::stale::reap`).
pub(crate) fn temporary_name(pid: u32) -> String {
    format!("bulkhead-{pid}-{FILE}.new")
}

/// Writes `key` and `table` to `path` whole or not at all (a file of our own in `dir`,
/// renamed over it), mode 0600.
fn keep(dir: &Path, path: &Path, key: &str, table: &str) -> io::Result<()> {
    let temporary: PathBuf = dir.join(temporary_name(std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        f.write_all(format!("{key}\n{table}").as_bytes())?;
        fs::rename(&temporary, path)
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// `table` in a memory file the vmm inherits and reads from offset 0.
fn memory_file(table: &str) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"bulkhead-kvm-cpuid", MFdFlags::MFD_CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(table.as_bytes())?;
    Ok(file.into())
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bulkhead-kvm-cpuid-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const TABLE: &str = "bulkhead-kvm-cpuid 1\n0 0 0 d 756e6547 6c65746e 49656e69\n";

    #[test]
    fn the_key_names_the_boot_and_each_kvm_module_by_inode() {
        let dir = scratch("key");
        fs::write(dir.join("boot_id"), "0123-abcd\n").unwrap();
        let modules = dir.join("module");
        for m in ["kvm_intel", "kvm", "kvmgt_not_ours", "virtio", "kvm_pvm"] {
            fs::create_dir_all(modules.join(m)).unwrap();
        }
        let ino = |m: &str| fs::metadata(modules.join(m)).unwrap().ino();
        let key = key(&dir.join("boot_id"), &modules).unwrap();
        assert_eq!(
            key,
            format!(
                "key 0123-abcd kvm:{} kvm_intel:{} kvm_pvm:{}",
                ino("kvm"),
                ino("kvm_intel"),
                ino("kvm_pvm")
            )
        );
        // A module loaded again is another directory: another key (the old one is kept
        // aside, so that its inode cannot be the new one's).
        fs::rename(modules.join("kvm_intel"), dir.join("old_kvm_intel")).unwrap();
        fs::create_dir(modules.join("kvm_intel")).unwrap();
        assert_ne!(key, super::key(&dir.join("boot_id"), &modules).unwrap());
        fs::remove_dir_all(&modules).unwrap();
        fs::create_dir(&modules).unwrap();
        assert!(super::key(&dir.join("boot_id"), &modules).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_table_is_read_back_only_under_its_own_key() {
        let dir = scratch("kept");
        let path = dir.join(FILE);
        assert_eq!(read_kept(&path, "key a").unwrap(), None);
        keep(&dir, &path, "key a", TABLE).unwrap();
        assert_eq!(read_kept(&path, "key a").unwrap().as_deref(), Some(TABLE));
        assert_eq!(read_kept(&path, "key b").unwrap(), None);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Nothing but the file is left.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_file_that_is_no_table_is_an_error() {
        let dir = scratch("bad");
        let path = dir.join(FILE);
        for bad in [
            "no newline".to_string(),
            "key a\nbulkhead-kvm-cpuid 1\n".to_string(),
            "key a\nbulkhead-kvm-cpuid 1\n0 0 0 zz 0 0 0\n".to_string(),
            format!(
                "key a\n{}",
                "x".repeat(MAX_KEY_LINE + cpuid_table::MAX_TEXT + 2)
            ),
        ] {
            fs::write(&path, &bad).unwrap();
            let e = read_kept(&path, "key a").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:.40}: {e}");
        }
        // Neither a FIFO (whose open would wait for a writer) nor a directory.
        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_kept(&path, "key a").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(read_kept(&path, "key a").is_err());
        fs::remove_dir(&path).unwrap();
        // Never through a symlink.
        fs::write(dir.join("elsewhere"), format!("key a\n{TABLE}")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).unwrap();
        assert!(read_kept(&path, "key a").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_memory_file_holds_the_table() {
        let fd = memory_file(TABLE).unwrap();
        let mut text = String::new();
        use std::os::unix::fs::FileExt;
        let file = File::from(fd);
        let mut buf = vec![0u8; 200];
        let n = file.read_at(&mut buf, 0).unwrap();
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        assert_eq!(text, TABLE);
    }
}
