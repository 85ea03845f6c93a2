//! Unit tests of `disk.rs` (kept beside it so that file stays readable).

use super::*;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use vmm_sys_util::tempfile::TempFile;

fn options() -> DiskOptions {
    DiskOptions {
        read_only: false,
        direct: false,
        logical_block_size: 512,
    }
}

fn image(size: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

#[test]
fn pattern_write_then_read_back() {
    let img = image(1 << 20);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    assert_eq!(disk.capacity_sectors(), 2048);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    disk.write_all_at(&pattern, 4096).unwrap();
    let mut back = vec![0u8; 8192];
    disk.read_exact_at(&mut back, 4096).unwrap();
    assert_eq!(back, pattern);
    disk.flush().unwrap();
    let raw = std::fs::read(img.as_path()).unwrap();
    assert_eq!(&raw[4096..4096 + 8192], &pattern[..]);
    assert!(raw[..4096].iter().all(|&b| b == 0));
}

#[test]
fn vectored_io_spans_buffers() {
    let img = image(65536);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    let a = vec![0xaau8; 512];
    let b = vec![0xbbu8; 1024];
    let mut iovs = [
        libc::iovec {
            iov_base: a.as_ptr().cast_mut().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        },
    ];
    // SAFETY: the iovecs describe `a` and `b`, alive for the call.
    unsafe { disk.write_all_vectored_at(&mut iovs, 512).unwrap() };
    let mut x = vec![0u8; 1536];
    disk.read_exact_at(&mut x, 512).unwrap();
    assert!(x[..512].iter().all(|&v| v == 0xaa));
    assert!(x[512..].iter().all(|&v| v == 0xbb));
}

#[test]
fn reading_past_the_end_fails() {
    let img = image(4096);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    let mut buf = vec![0u8; 1024];
    let err = disk.read_exact_at(&mut buf, 3584).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn discard_makes_a_hole() {
    let img = image(1 << 20);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    disk.write_all_at(&vec![0x5a; 1 << 20], 0).unwrap();
    disk.flush().unwrap();
    let before = img.as_file().metadata().unwrap().blocks();
    disk.discard(256 << 10, 512 << 10).unwrap();
    let after = img.as_file().metadata().unwrap().blocks();
    assert!(after < before, "blocks {before} -> {after}");
    // SEEK_HOLE finds the hole where we punched it.
    let hole = nix::unistd::lseek(img.as_file(), 0, nix::unistd::Whence::SeekHole);
    assert_eq!(hole, Ok(256 << 10));
    let mut back = vec![1u8; 512 << 10];
    disk.read_exact_at(&mut back, 256 << 10).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(disk.size(), 1 << 20, "size kept");
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let img = image(1 << 20);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    disk.write_all_at(&vec![0xff; 1 << 20], 0).unwrap();
    disk.write_zeroes(4096, 8192, false).unwrap();
    disk.write_zeroes(65536, 65536, true).unwrap();
    let raw = std::fs::read(img.as_path()).unwrap();
    assert_eq!(raw.len(), 1 << 20);
    assert!(raw[..4096].iter().all(|&b| b == 0xff));
    assert!(raw[4096..12288].iter().all(|&b| b == 0));
    assert!(raw[12288..65536].iter().all(|&b| b == 0xff));
    assert!(raw[65536..131072].iter().all(|&b| b == 0));
    assert!(raw[131072..].iter().all(|&b| b == 0xff));
}

#[test]
fn zero_fallback_writes_zeros() {
    let img = image(3 << 20);
    let disk = Disk::open(img.as_path(), options()).unwrap();
    disk.write_all_at(&vec![0x11; 3 << 20], 0).unwrap();
    disk.write_zero_bytes(512, (2 << 20) + 1024).unwrap();
    let raw = std::fs::read(img.as_path()).unwrap();
    assert!(raw[..512].iter().all(|&b| b == 0x11));
    assert!(raw[512..512 + (2 << 20) + 1024].iter().all(|&b| b == 0));
    assert!(raw[512 + (2 << 20) + 1024..].iter().all(|&b| b == 0x11));
}

#[test]
fn read_only_refuses_writes_and_leaves_the_file() {
    let img = image(8192);
    img.as_file().write_all(&[7u8; 8192]).unwrap();
    let disk = Disk::open(
        img.as_path(),
        DiskOptions {
            read_only: true,
            ..options()
        },
    )
    .unwrap();
    assert!(disk.read_only());
    assert_eq!(
        disk.write_all_at(&[0; 512], 0).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert!(disk.discard(0, 4096).is_err());
    assert!(disk.write_zeroes(0, 4096, true).is_err());
    assert_eq!(std::fs::read(img.as_path()).unwrap(), vec![7u8; 8192]);
}

#[test]
fn size_not_a_multiple_of_512_is_rejected() {
    let img = image(1000);
    let err = Disk::open(img.as_path(), options()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DiskError::Misaligned { size: 1000, .. }));
    assert!(msg.contains(&img.as_path().display().to_string()), "{msg}");
    assert!(msg.contains("1000 bytes"), "{msg}");
}

#[test]
fn size_not_a_multiple_of_the_logical_block_is_rejected() {
    let img = image(4096 + 512);
    let err = Disk::open(
        img.as_path(),
        DiskOptions {
            logical_block_size: 4096,
            ..options()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::Misaligned { multiple: 4096, .. }));
}

#[test]
fn empty_image_is_rejected() {
    let img = image(0);
    let err = Disk::open(img.as_path(), options()).unwrap_err();
    assert!(matches!(err, DiskError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("empty"));
}

#[test]
fn missing_image_names_the_path_and_the_os_error() {
    let err = Disk::open(Path::new("/nonexistent/x.img"), options()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "opening disk image /nonexistent/x.img: No such file or directory (os error 2)"
    );
}

#[test]
fn directory_is_not_a_disk() {
    let err = Disk::open(Path::new("/"), {
        DiskOptions {
            read_only: true,
            ..options()
        }
    })
    .unwrap_err();
    assert!(matches!(err, DiskError::NotADisk { .. }), "{err}");
}

#[test]
fn read_only_fd_needs_read_only_flag() {
    let img = image(4096);
    let ro = File::open(img.as_path()).unwrap();
    let err = Disk::from_fd(ro.into(), "fd 9".into(), options()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "disk image fd 9 was opened read-only; pass --read-only to serve it read-only"
    );
    let ro = File::open(img.as_path()).unwrap();
    let disk = Disk::from_fd(
        ro.into(),
        "fd 9".into(),
        DiskOptions {
            read_only: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(disk.size(), 4096);
}

/// A loop device over a temporary file, detached on drop.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_device_size_comes_from_the_ioctl() {
    let backing = image(8 << 20);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(backing.as_path())
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        // Not root, or no loop devices here: nothing to test with.
        _ => {
            eprintln!("skipped: cannot set up a loop device");
            return;
        }
    };
    let _detach = Loop(dev.clone());
    let disk = Disk::open(Path::new(&dev), options()).unwrap();
    assert!(disk.is_block_device());
    assert_eq!(disk.size(), 8 << 20);
    disk.write_all_at(&[0x42; 4096], 1 << 20).unwrap();
    let mut back = [0u8; 4096];
    disk.read_exact_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, [0x42; 4096]);
    disk.write_zeroes(1 << 20, 4096, false).unwrap();
    disk.discard(2 << 20, 1 << 20).unwrap();
    disk.read_exact_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, [0; 4096]);
    disk.flush().unwrap();
}

#[test]
fn direct_io_alignment_found_on_this_file_system() {
    let img = image(1 << 20);
    match Disk::open(
        img.as_path(),
        DiskOptions {
            direct: true,
            logical_block_size: 4096,
            ..options()
        },
    ) {
        Ok(disk) => {
            let a = disk.direct_alignment().unwrap();
            assert!(a.memory > 0 && a.offset > 0);
            // An aligned buffer works straight through O_DIRECT.
            let buf = &ZEROS.0[..4096];
            disk.write_all_at(buf, 8192).unwrap();
        }
        // Some file systems (tmpfs before 6.6, overlayfs) refuse O_DIRECT: then the
        // error must say so rather than fail later.
        Err(e) => assert!(
            matches!(e, DiskError::Direct { .. } | DiskError::Open { .. }),
            "{e}"
        ),
    }
}

#[test]
fn an_adopted_image_is_served_and_bad_sizes_are_refused() {
    use std::os::unix::fs::FileExt;
    let img = image(4096);
    img.as_file().write_all_at(b"new image", 0).unwrap();
    let fd = || OwnedFd::from(img.as_file().try_clone().unwrap());
    let disk = Disk::adopt(fd(), "new.img".into(), 4096, false, options()).unwrap();
    assert_eq!((disk.capacity_sectors(), disk.name()), (8, "new.img"));
    let mut back = [0u8; 9];
    disk.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"new image");
    assert!(matches!(
        Disk::adopt(fd(), "e".into(), 0, false, options()),
        Err(DiskError::Empty { .. })
    ));
    assert!(matches!(
        Disk::adopt(fd(), "m".into(), 1000, false, options()),
        Err(DiskError::Misaligned { .. })
    ));
    let direct = DiskOptions {
        direct: true,
        ..options()
    };
    assert!(matches!(
        Disk::adopt(fd(), "d".into(), 4096, false, direct),
        Err(DiskError::Direct { .. })
    ));
}
