//! Chains made by `qemu-img create -f qcow2 -b ... -F ...`, opened as the launcher does;
//! skipped with a printed reason when qemu-img is absent (a failure under CI=true).

use super::*;
use std::process::Command;

/// A scratch directory, removed with what it holds when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("bulkhead-chain-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Dir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `qemu-img ARGS` run in this directory; panics with its output when it fails.
    fn qemu_img(&self, args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .current_dir(&self.0)
            .output()
            .expect("running qemu-img");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }

    fn open(&self, top: &str, format: ImageFormat) -> Result<Chain, ChainError> {
        let path = self.path(top);
        let file = File::open(&path).unwrap();
        open_chain(&path, file, format, &mut |p: &Path| File::open(p))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-img can run; prints why not (and fails under CI).
fn have_qemu_img() -> bool {
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        return true;
    }
    let msg = "qemu-img (Debian package qemu-utils) is not installed";
    assert!(std::env::var("CI").is_err(), "{msg}");
    eprintln!(
        "SKIPPED: {}: {msg}",
        std::thread::current().name().unwrap_or("?")
    );
    false
}

fn formats(chain: &Chain) -> Vec<(PathBuf, ImageFormat)> {
    chain
        .links
        .iter()
        .map(|l| (l.path.clone(), l.format))
        .collect()
}

#[test]
fn an_overlay_names_its_base_relative_to_its_own_directory() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("relative");
    d.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
    ]);
    let mid = d.path("mid.qcow2");
    let mid_abs = mid.to_str().unwrap();
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        mid_abs,
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    let chain = d.open("top.qcow2", ImageFormat::Qcow2).unwrap();
    assert_eq!(
        formats(&chain),
        vec![
            (d.path("top.qcow2"), ImageFormat::Qcow2),
            (mid.clone(), ImageFormat::Qcow2),
            (d.path("base.raw"), ImageFormat::Raw),
        ]
    );
    // The top as a raw image has no chain.
    let raw = d.open("top.qcow2", ImageFormat::Raw).unwrap();
    assert_eq!(raw.links.len(), 1);
}

#[test]
fn a_missing_backing_file_is_named_with_the_image_naming_it() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("missing");
    d.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
    ]);
    std::fs::remove_file(d.path("base.raw")).unwrap();
    let e = d.open("top.qcow2", ImageFormat::Qcow2).unwrap_err();
    assert!(matches!(e, ChainError::Backing { .. }), "{e:?}");
    let msg = e.to_string();
    let want = format!(
        "backing file {} of disk image {}: No such file",
        d.path("base.raw").display(),
        d.path("top.qcow2").display()
    );
    assert!(msg.contains(&want), "{msg}");
}

#[test]
fn backing_loops_are_refused() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("loop");
    // -u: qemu-img does not open the backing file (it would loop too).
    d.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "1M",
    ]);
    d.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "./self.qcow2",
        "-F",
        "qcow2",
        "self.qcow2",
        "1M",
    ]);
    let e = d
        .open("a.qcow2", ImageFormat::Qcow2)
        .unwrap_err()
        .to_string();
    let want = format!(
        "backing file {} of disk image {} is already in the chain (a backing loop)",
        d.path("a.qcow2").display(),
        d.path("b.qcow2").display()
    );
    assert!(e.contains(&want), "{e}");
    let e = d.open("self.qcow2", ImageFormat::Qcow2).unwrap_err();
    assert!(matches!(e, ChainError::Loop { .. }), "{e:?}");
}

#[test]
fn a_chain_longer_than_max_chain_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("deep");
    d.qemu_img(&["create", "-q", "-f", "raw", "f0", "1M"]);
    for i in 1..=MAX_CHAIN {
        let (below, this) = (format!("f{}", i - 1), format!("f{i}"));
        let fmt = if i == 1 { "raw" } else { "qcow2" };
        d.qemu_img(&[
            "create", "-q", "-f", "qcow2", "-u", "-b", &below, "-F", fmt, &this, "1M",
        ]);
    }
    let top = format!("f{}", MAX_CHAIN - 1);
    assert_eq!(
        d.open(&top, ImageFormat::Qcow2).unwrap().links.len(),
        MAX_CHAIN
    );
    let e = d
        .open(&format!("f{MAX_CHAIN}"), ImageFormat::Qcow2)
        .unwrap_err();
    assert!(matches!(e, ChainError::TooDeep { .. }), "{e:?}");
    assert!(e.to_string().contains("longer than 16 files"), "{e}");
}

#[test]
fn an_external_data_file_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("datafile");
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=data.raw",
        "top.qcow2",
        "1M",
    ]);
    let e = d
        .open("top.qcow2", ImageFormat::Qcow2)
        .unwrap_err()
        .to_string();
    let want = format!(
        "disk image {} keeps its data in an external data file",
        d.path("top.qcow2").display()
    );
    assert!(e.contains(&want), "{e}");
}

/// Rewrites the backing-format extension's type of the qcow2 at `path` to one nobody
/// knows, as an image made without `-F` (which qemu-img 7.2 no longer writes) looks.
fn forget_backing_format(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u32::from_be_bytes(bytes[100..104].try_into().unwrap()) as usize;
    let mut at = header_len;
    loop {
        let kind = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert_ne!(kind, 0, "no backing format extension in {}", path.display());
        if kind == 0xe279_2aca {
            bytes[at..at + 4].copy_from_slice(&0x0bad_f00du32.to_be_bytes());
            break;
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_unrecorded_backing_format_is_probed_and_only_raw_accepted() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("probe");
    d.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    d.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "on-raw.qcow2",
    ]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "on-qcow2.qcow2",
    ]);
    forget_backing_format(&d.path("on-raw.qcow2"));
    forget_backing_format(&d.path("on-qcow2.qcow2"));
    let chain = d.open("on-raw.qcow2", ImageFormat::Qcow2).unwrap();
    assert_eq!(chain.links[1].format, ImageFormat::Raw);
    let e = d.open("on-qcow2.qcow2", ImageFormat::Qcow2).unwrap_err();
    assert!(matches!(e, ChainError::UnrecordedQcow2 { .. }), "{e:?}");
    assert!(e.to_string().contains("does not record its format"), "{e}");
}

#[test]
fn a_backing_format_other_than_raw_or_qcow2_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let d = Dir::new("vmdk");
    d.qemu_img(&["create", "-q", "-f", "vmdk", "base.vmdk", "1M"]);
    d.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.qcow2",
    ]);
    let e = d
        .open("top.qcow2", ImageFormat::Qcow2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("of format \"vmdk\": only raw and qcow2"), "{e}");
}

#[test]
fn an_unparsable_header_is_named() {
    let d = Dir::new("garbage");
    let mut bytes = vec![0u8; 4096];
    bytes[..4].copy_from_slice(b"QFI\xfb");
    bytes[7] = 7;
    std::fs::write(d.path("bad.qcow2"), bytes).unwrap();
    let e = d
        .open("bad.qcow2", ImageFormat::Qcow2)
        .unwrap_err()
        .to_string();
    let want = format!(
        "disk image {}: invalid qcow2 header: version is 7",
        d.path("bad.qcow2").display()
    );
    assert!(e.contains(&want), "{e}");
}

#[test]
fn backing_names_resolve_as_qemu_resolves_them() {
    let by = Path::new("/imgs/vm/top.qcow2");
    let ok = |name: &str| resolve(by, name.as_bytes()).unwrap();
    assert_eq!(ok("base.raw"), PathBuf::from("/imgs/vm/base.raw"));
    assert_eq!(ok("../base.raw"), PathBuf::from("/imgs/vm/../base.raw"));
    assert_eq!(ok("/abs/base.raw"), PathBuf::from("/abs/base.raw"));
    assert_eq!(ok("file:/abs/b"), PathBuf::from("/abs/b"));
    assert_eq!(ok("./a:b"), PathBuf::from("/imgs/vm/./a:b"));
    assert_eq!(
        resolve(Path::new("top.qcow2"), b"base.raw").unwrap(),
        PathBuf::from("base.raw")
    );
    for bad in [
        "nbd://host/x",
        "json:{\"driver\":\"raw\"}",
        "a:b",
        "file:",
        "x\0y",
    ] {
        let e = resolve(by, bad.as_bytes()).unwrap_err();
        assert!(matches!(e, ChainError::BadName { .. }), "{bad:?}: {e:?}");
    }
}
