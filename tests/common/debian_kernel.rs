//! Debian's stock cloud kernel, for the test that boots a real Linux through our boot path.
//!
//! [`debian_vmlinux`] finds an ELF `vmlinux`, in this order:
//! 1. `$BULKHEAD_TEST_VMLINUX`, if set;
//! 2. `<target dir>/debian-kernel/vmlinux`, extracted by an earlier run;
//! 3. otherwise it downloads the package behind `linux-image-cloud-amd64` with
//!    `apt-get download` (running `apt-get update` once if apt knows no such package), takes
//!    `boot/vmlinuz-*` out of it with `dpkg-deb -x`, and extracts the ELF from that bzImage
//!    using the setup header's payload fields (boot protocol 2.08+), decompressing with the
//!    matching command-line tool.
//!
//! It needs `apt`, `dpkg` and the decompressor of the kernel's payload: `lz4` for Debian 12's
//! 6.1 cloud kernel (its payload is an lz4 legacy frame); `xz-utils`, `zstd`, `gzip`, `bzip2`
//! or `lzop` for other builds. An `Err` is a human reason, meant to be printed when a test
//! skips.
//!
//! [`debian_modules`] gives that kernel's modules: `lib/modules/<release>` from the same
//! package, with its build `config` and the `modules.dep` that `depmod -b` (package kmod)
//! writes for it (Debian generates modules.dep when the package is installed; the package
//! itself has none). It is extracted along with the vmlinux, or fetched again for a cache an
//! older run left without it.
//!
//! Several test binaries may call it at once: the cache is guarded by an `flock`ed lock file
//! and every file lands there by an atomic rename.

// Every test binary that declares `mod common` compiles this file; not all of them use it.
#![allow(dead_code)]

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The environment variable naming a `vmlinux` to use instead of Debian's.
pub const VMLINUX_ENV: &str = "BULKHEAD_TEST_VMLINUX";

/// The Debian metapackage that depends on the current cloud kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// A stock kernel ready to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebianKernel {
    /// The ELF `vmlinux` (Debian's carries a PVH entry note).
    pub vmlinux: PathBuf,
    /// The bzImage it was extracted from; `None` when it came from `$BULKHEAD_TEST_VMLINUX`.
    pub bzimage: Option<PathBuf>,
    /// The kernel release, e.g. `6.1.0-48-cloud-amd64`: its first console line starts with
    /// `Linux version <release> `.
    pub release: String,
}

impl DebianKernel {
    /// The start of the kernel's version banner, e.g. `Linux version 6.1.0-48-cloud-amd64`.
    pub fn banner_prefix(&self) -> String {
        format!("Linux version {}", self.release)
    }
}

/// Finds or fetches a stock kernel's `vmlinux`; `Err` says why there is none (print it and
/// skip).
pub fn debian_vmlinux() -> Result<DebianKernel, String> {
    if let Some(path) = std::env::var_os(VMLINUX_ENV) {
        let vmlinux = PathBuf::from(path);
        let bytes = fs::read(&vmlinux)
            .map_err(|e| format!("reading ${VMLINUX_ENV}={}: {e}", vmlinux.display()))?;
        if !bytes.starts_with(ELF_MAGIC) {
            return Err(format!(
                "${VMLINUX_ENV}={} is not an ELF file",
                vmlinux.display()
            ));
        }
        let release = banner_release(&bytes).ok_or_else(|| {
            format!(
                "${VMLINUX_ENV}={}: no `Linux version <release>` banner in it",
                vmlinux.display()
            )
        })?;
        return Ok(DebianKernel {
            vmlinux,
            bzimage: None,
            release,
        });
    }
    let cache = target_dir()?.join("debian-kernel");
    fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let _lock = CacheLock::take(&cache)?;
    if let Some(kernel) = cached(&cache) {
        return Ok(kernel);
    }
    fetch(&cache)
}

/// A kernel's modules: `lib/modules/<release>` with `modules.dep`, `modules.builtin` and the
/// kernel's build configuration as `config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelModules {
    /// The directory (`modules.dep` names files relative to it).
    pub dir: PathBuf,
    /// The kernel release the modules are for.
    pub release: String,
}

impl KernelModules {
    /// The text of one of its files (`config`, `modules.dep`, `modules.builtin`).
    pub fn read(&self, name: &str) -> Result<String, String> {
        let path = self.dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))
    }

    /// The module at `relative` (as `modules.dep` names it), decompressed if the package
    /// compressed it (`.ko.xz`, `.ko.zst`, `.ko.gz`), checked to be an ELF file.
    pub fn module(&self, relative: &str) -> Result<Vec<u8>, String> {
        let path = self.dir.join(relative);
        let bytes = fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let compression = if relative.ends_with(".ko") {
            None
        } else if relative.ends_with(".ko.xz") {
            Some(Compression::Xz)
        } else if relative.ends_with(".ko.zst") {
            Some(Compression::Zstd)
        } else if relative.ends_with(".ko.gz") {
            Some(Compression::Gzip)
        } else {
            return Err(format!("{}: not a kernel module name", path.display()));
        };
        let elf = match compression {
            None => bytes,
            Some(c) => decompress(c, &bytes).map_err(|e| format!("{}: {e}", path.display()))?,
        };
        if !elf.starts_with(ELF_MAGIC) {
            return Err(format!("{} is not an ELF file", path.display()));
        }
        Ok(elf)
    }
}

/// The modules of `kernel` (Debian's, from [`debian_vmlinux`]); `Err` says why there are none
/// (print it and skip).
pub fn debian_modules(kernel: &DebianKernel) -> Result<KernelModules, String> {
    if kernel.bzimage.is_none() {
        return Err(format!(
            "${VMLINUX_ENV} names a kernel whose modules are not known"
        ));
    }
    let cache = target_dir()?.join("debian-kernel");
    let _lock = CacheLock::take(&cache)?;
    let modules = KernelModules {
        dir: cache.join(format!("{MODULES}-{}", kernel.release)),
        release: kernel.release.clone(),
    };
    if modules.dir.join(MODULES_DEP).is_file() {
        return Ok(modules);
    }
    // An older cache has the vmlinux only: fetch the package again for its modules.
    let package = resolve_package()?;
    if package_release(&package).as_deref() != Some(kernel.release.as_str()) {
        return Err(format!(
            "the cached kernel is {} but {METAPACKAGE} now depends on {package}; remove {} to \
             fetch both again",
            kernel.release,
            cache.display()
        ));
    }
    let work = cache.join(format!("work{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let result = (|| {
        let root = download_and_unpack(&work, &package)?;
        install_modules(&root, &cache, &kernel.release)
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(modules)
}

// ---------------------------------------------------------------------------------------------
// The cache.

const VMLINUX: &str = "vmlinux";
const BZIMAGE: &str = "vmlinuz";
const RELEASE: &str = "release";
/// `<cache>/modules-<release>`: the modules directory, complete once `modules.dep` is there.
const MODULES: &str = "modules";
const MODULES_DEP: &str = "modules.dep";

/// The cargo target directory, from this test binary's path (`target/debug/deps/x-hash`):
/// the nearest ancestor holding cargo's `CACHEDIR.TAG`, else the parent of `debug/`.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the test binary: {e}"))?;
    if let Some(dir) = exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return Ok(dir.to_path_buf());
    }
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no cargo target directory above {}", exe.display()))
}

/// An exclusive `flock` on `<cache>/lock`, released when dropped (the file closes).
struct CacheLock(File);

impl CacheLock {
    fn take(cache: &Path) -> Result<Self, String> {
        let path = cache.join("lock");
        let file = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns for the call's duration; it takes
        // no pointers.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if ret != 0 {
            return Err(format!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(CacheLock(file))
    }
}

/// The kernel an earlier run left in the cache, if complete.
fn cached(cache: &Path) -> Option<DebianKernel> {
    let vmlinux = cache.join(VMLINUX);
    let mut magic = [0u8; 4];
    File::open(&vmlinux).ok()?.read_exact(&mut magic).ok()?;
    if &magic != ELF_MAGIC {
        return None;
    }
    let release = fs::read_to_string(cache.join(RELEASE)).ok()?;
    let bzimage = cache.join(BZIMAGE);
    Some(DebianKernel {
        vmlinux,
        bzimage: bzimage.is_file().then_some(bzimage),
        release: release.trim().to_string(),
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

// ---------------------------------------------------------------------------------------------
// Download and extraction.

/// Downloads the cloud kernel package, extracts the bzImage and the vmlinux into `cache`.
fn fetch(cache: &Path) -> Result<DebianKernel, String> {
    let package = resolve_package()?;
    let release = package_release(&package)
        .ok_or_else(|| format!("cannot tell the kernel release from package name {package}"))?;

    let work = cache.join(format!("work{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let result = download_and_extract(cache, &work, &package, &release);
    let _ = fs::remove_dir_all(&work);
    result
}

fn download_and_extract(
    cache: &Path,
    work: &Path,
    package: &str,
    release: &str,
) -> Result<DebianKernel, String> {
    let root = download_and_unpack(work, package)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let bzimage = fs::read(&vmlinuz)
        .map_err(|e| format!("reading {} from package {package}: {e}", vmlinuz.display()))?;

    let vmlinux = extract_vmlinux(&bzimage)
        .map_err(|e| format!("extracting the vmlinux from {}: {e}", vmlinuz.display()))?;
    match banner_release(&vmlinux) {
        Some(found) if found == release => {}
        other => {
            return Err(format!(
                "the vmlinux from {} has banner release {other:?}, expected {release:?}",
                vmlinuz.display()
            ))
        }
    }

    // The modules too, while the package is unpacked; if that fails (no depmod, say),
    // debian_modules() tries again and reports why.
    let _ = install_modules(&root, cache, release);
    write_atomically(&cache.join(BZIMAGE), &bzimage)?;
    write_atomically(&cache.join(RELEASE), release.as_bytes())?;
    // The vmlinux last: its presence marks the cache complete.
    write_atomically(&cache.join(VMLINUX), &vmlinux)?;
    Ok(DebianKernel {
        vmlinux: cache.join(VMLINUX),
        bzimage: Some(cache.join(BZIMAGE)),
        release: release.to_string(),
    })
}

/// Downloads `package` (or its `-unsigned` twin) into `work` and unpacks it into
/// `work/root`; returns that directory.
fn download_and_unpack(work: &Path, package: &str) -> Result<PathBuf, String> {
    // The signed package is what the metapackage names; its -unsigned twin holds the same
    // kernel without the EFI signature. Either will do.
    let unsigned = format!("{package}-unsigned");
    let deb = download(work, package).or_else(|first| {
        download(work, &unsigned).map_err(|second| format!("{first}; {second}"))
    })?;
    let root = work.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        &format!("extracting {}", deb.display()),
    )?;
    Ok(root)
}

/// Moves the modules of the package unpacked at `root` into `<cache>/modules-<release>`,
/// with the kernel's config and a `modules.dep` from `depmod`.
fn install_modules(root: &Path, cache: &Path, release: &str) -> Result<PathBuf, String> {
    // Debian 12 ships /lib/modules, Debian 13 /usr/lib/modules; depmod -b looks under the
    // one its build chose, so both paths lead to the modules.
    let lib = root.join("lib/modules");
    let usr = root.join("usr/lib/modules");
    let (real, other, link) = if lib.join(release).is_dir() {
        (lib.clone(), usr, "../../lib/modules")
    } else if usr.join(release).is_dir() {
        (usr, lib.clone(), "../usr/lib/modules")
    } else {
        return Err(format!("the kernel package has no lib/modules/{release}"));
    };
    if !other.exists() {
        let parent = other.parent().expect("a parent");
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        std::os::unix::fs::symlink(link, &other)
            .map_err(|e| format!("linking {}: {e}", other.display()))?;
    }
    let dir = real.join(release);
    let config = root.join("boot").join(format!("config-{release}"));
    fs::copy(&config, dir.join("config"))
        .map_err(|e| format!("copying {}: {e}", config.display()))?;
    run(
        Command::new("depmod").arg("-b").arg(root).arg(release),
        "writing modules.dep with depmod (package kmod)",
    )?;
    if !dir.join(MODULES_DEP).is_file() {
        return Err(format!(
            "depmod wrote no {}",
            dir.join(MODULES_DEP).display()
        ));
    }
    let dest = cache.join(format!("{MODULES}-{release}"));
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&dir, &dest)
        .map_err(|e| format!("moving the modules to {}: {e}", dest.display()))?;
    Ok(dest)
}

/// The real kernel package behind the metapackage, e.g. `linux-image-6.1.0-48-cloud-amd64`.
fn resolve_package() -> Result<String, String> {
    let depends = || -> Result<Option<String>, String> {
        let out = Command::new("apt-cache")
            .args(["depends", METAPACKAGE])
            .output()
            .map_err(|e| format!("running apt-cache (is this Debian?): {e}"))?;
        Ok(kernel_dependency(&String::from_utf8_lossy(&out.stdout)))
    };
    if let Some(package) = depends()? {
        return Ok(package);
    }
    // A fresh machine may have empty package lists.
    run(
        Command::new("apt-get").args(["update", "-q"]),
        &format!("apt-cache knows no {METAPACKAGE}; updating the package lists"),
    )?;
    depends()?.ok_or_else(|| {
        format!("apt-cache depends {METAPACKAGE}: no linux-image-*-cloud-amd64 dependency")
    })
}

/// Picks the kernel package out of `apt-cache depends` output.
pub(crate) fn kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let (kind, name) = line.trim().trim_start_matches('|').split_once(": ")?;
        let name = name.trim();
        (kind == "Depends" && package_release(name).is_some()).then(|| name.to_string())
    })
}

/// `linux-image-6.1.0-48-cloud-amd64[-unsigned]` -> `6.1.0-48-cloud-amd64`.
pub(crate) fn package_release(package: &str) -> Option<String> {
    let rest = package.strip_prefix("linux-image-")?;
    let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
    let ok = rest.starts_with(|c: char| c.is_ascii_digit()) && rest.ends_with("-cloud-amd64");
    ok.then(|| rest.to_string())
}

/// `apt-get download`s `package` into `dir` and returns the `.deb`'s path.
fn download(dir: &Path, package: &str) -> Result<PathBuf, String> {
    run(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir),
        &format!("downloading {package}"),
    )?;
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            )
        })
}

/// Runs a command to completion; a failure names `what` and carries stderr's last lines.
fn run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: running {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what}: {:?} {}: {}",
            cmd.get_program(),
            out.status,
            stderr_tail(&out.stderr)
        ))
    }
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

// ---------------------------------------------------------------------------------------------
// The bzImage: setup header, payload, decompression.

pub(crate) const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Offsets in the setup header (Documentation/arch/x86/boot.rst).
pub(crate) const SETUP_SECTS: usize = 0x1f1;
pub(crate) const BOOT_FLAG: usize = 0x1fe;
pub(crate) const HEADER_MAGIC: usize = 0x202;
pub(crate) const VERSION: usize = 0x206;
pub(crate) const PAYLOAD_OFFSET: usize = 0x248;
pub(crate) const PAYLOAD_LENGTH: usize = 0x24c;
/// The header ends after payload_length; a bzImage is always longer.
const HEADER_END: usize = PAYLOAD_LENGTH + 4;

/// Why a bzImage's payload cannot be located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than the setup header.
    TooShort(usize),
    /// No 0xAA55 boot flag at 0x1fe.
    BootFlag(u16),
    /// No `HdrS` at 0x202.
    Magic([u8; 4]),
    /// Boot protocol older than 2.08, which has no payload fields.
    Protocol(u16),
    /// The payload lies (partly) outside the file.
    PayloadOutOfBounds { start: u64, end: u64, len: usize },
    /// The payload is too short to hold a compressed stream and its size trailer.
    PayloadTooShort(u32),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort(len) => write!(
                f,
                "{len} bytes, shorter than a setup header ({HEADER_END:#x} bytes)"
            ),
            HeaderError::BootFlag(v) => write!(f, "boot flag at 0x1fe is {v:#06x}, not 0xaa55"),
            HeaderError::Magic(m) => write!(f, "no \"HdrS\" at 0x202 (found {m:02x?})"),
            HeaderError::Protocol(v) => write!(
                f,
                "boot protocol {}.{:02}, older than 2.08 (no payload fields)",
                v >> 8,
                v & 0xff
            ),
            HeaderError::PayloadOutOfBounds { start, end, len } => write!(
                f,
                "payload {start:#x}..{end:#x} lies outside the {len}-byte file"
            ),
            HeaderError::PayloadTooShort(n) => write!(f, "payload of {n} bytes is too short"),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Where the compressed kernel lies in a bzImage, from the setup header: `payload_offset`
/// and `payload_length` are relative to the protected-mode code at `(setup_sects + 1) * 512`.
pub fn payload_range(bzimage: &[u8]) -> Result<Range<usize>, HeaderError> {
    if bzimage.len() < HEADER_END {
        return Err(HeaderError::TooShort(bzimage.len()));
    }
    let flag = le16(bzimage, BOOT_FLAG);
    if flag != 0xaa55 {
        return Err(HeaderError::BootFlag(flag));
    }
    let magic = [
        bzimage[HEADER_MAGIC],
        bzimage[HEADER_MAGIC + 1],
        bzimage[HEADER_MAGIC + 2],
        bzimage[HEADER_MAGIC + 3],
    ];
    if &magic != b"HdrS" {
        return Err(HeaderError::Magic(magic));
    }
    let version = le16(bzimage, VERSION);
    if version < 0x0208 {
        return Err(HeaderError::Protocol(version));
    }
    let setup_sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => u64::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let length = le32(bzimage, PAYLOAD_LENGTH);
    let start = pm_start + u64::from(le32(bzimage, PAYLOAD_OFFSET));
    let end = start + u64::from(length);
    if end > bzimage.len() as u64 {
        return Err(HeaderError::PayloadOutOfBounds {
            start,
            end,
            len: bzimage.len(),
        });
    }
    if length < 8 {
        return Err(HeaderError::PayloadTooShort(length));
    }
    // Both fit in usize: they are at most bzimage.len().
    Ok(start as usize..end as usize)
}

/// The compressions Linux's x86 build offers for its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Lzma,
    Lz4,
    Bzip2,
    Lzo,
}

impl Compression {
    /// Recognises a compressed stream by its first bytes.
    pub fn detect(payload: &[u8]) -> Option<Self> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            // lz4's legacy frame, which the kernel's `lz4 -l` writes.
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (b"BZh", Compression::Bzip2),
            (&[0x89, 0x4c, 0x5a, 0x4f], Compression::Lzo),
            // .lzma: properties byte 0x5d (lc=3 lp=0 pb=2), then a little-endian dictionary
            // size; the kernel's is a power of two below 4 GiB.
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|(_, c)| *c)
    }

    /// The decompressor command line (it reads stdin and writes stdout) and its package.
    fn tool(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Compression::Gzip => ("gzip", &["-d", "-c"], "gzip"),
            Compression::Xz => ("xz", &["-d", "-c", "--single-stream"], "xz-utils"),
            Compression::Zstd => ("zstd", &["-d", "-c", "-q"], "zstd"),
            Compression::Lzma => ("xz", &["--format=lzma", "-d", "-c"], "xz-utils"),
            Compression::Lz4 => ("lz4", &["-d", "-c"], "lz4"),
            Compression::Bzip2 => ("bzip2", &["-d", "-c"], "bzip2"),
            Compression::Lzo => ("lzop", &["-d", "-c"], "lzop"),
        }
    }
}

/// Extracts the ELF kernel from a bzImage: locate the payload, decompress it, check the ELF
/// magic and the decompressed size the build appended to the payload.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let range = payload_range(bzimage).map_err(|e| format!("reading the setup header: {e}"))?;
    let payload = &bzimage[range.clone()];
    let compression = Compression::detect(payload).ok_or_else(|| {
        format!(
            "payload at {:#x}: unknown compression (starts {:02x?})",
            range.start,
            &payload[..payload.len().min(6)]
        )
    })?;
    // Every x86 payload ends with the decompressed size as a little-endian u32 (gzip's own
    // ISIZE field; the build appends one for the other formats). Only gzip and xz know where
    // their stream ends, so the others get the stream without those four bytes.
    let expected = le32(payload, payload.len() - 4);
    let stream = match compression {
        Compression::Gzip | Compression::Xz => payload,
        _ => &payload[..payload.len() - 4],
    };
    let vmlinux = decompress(compression, stream)?;
    if !vmlinux.starts_with(ELF_MAGIC) {
        return Err(format!(
            "decompressed {compression:?} payload is not an ELF file (starts {:02x?})",
            &vmlinux[..vmlinux.len().min(4)]
        ));
    }
    if vmlinux.len() as u64 != u64::from(expected) {
        return Err(format!(
            "decompressed {} bytes, but the payload's size trailer says {expected}",
            vmlinux.len()
        ));
    }
    Ok(vmlinux)
}

/// Pipes `stream` through the decompressor for `compression`.
fn decompress(compression: Compression, stream: &[u8]) -> Result<Vec<u8>, String> {
    let (program, args, package) = compression.tool();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("decompressing the {compression:?} payload: running {program} (package {package}): {e}")
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| format!("{program}: no stdin pipe"))?;
    let out = std::thread::scope(|s| {
        // Feed stdin from another thread so a full stdout pipe cannot deadlock us. A write
        // error (the tool quit early) shows in its exit status and stderr, reported below.
        s.spawn(move || {
            let _ = stdin.write_all(stream);
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("decompressing the {compression:?} payload with {program}: {e}"))?;
    // gzip exits 2 for a mere warning (e.g. trailing bytes it ignored).
    let warning_only = compression == Compression::Gzip && out.status.code() == Some(2);
    if !out.status.success() && !warning_only {
        return Err(format!(
            "decompressing the {compression:?} payload: {program} {}: {}",
            out.status,
            stderr_tail(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// The release in a kernel's `Linux version <release> (...)` banner.
pub fn banner_release(image: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(at) = find(&image[from..], BANNER) {
        let rest = &image[from + at + BANNER.len()..];
        if rest.first().is_some_and(u8::is_ascii_digit) {
            let end = rest
                .iter()
                .position(|b| !b.is_ascii_graphic())
                .unwrap_or(rest.len());
            return String::from_utf8(rest[..end].to_vec()).ok();
        }
        from += at + BANNER.len();
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// Its unit tests are in tests/common_selftest/debian_kernel.rs, so that they run once, not in
// every end-to-end binary that compiles this module.
