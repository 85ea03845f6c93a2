//! Unit tests of tests/common/debian_kernel.rs.

use crate::common::debian_kernel::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// A synthetic bzImage: `setup_sects` sectors of setup plus the boot sector, then the
/// protected-mode code holding `payload` at `offset`.
fn bzimage(setup_sects: u8, version: u16, offset: u32, payload: &[u8]) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        setup_sects as usize
    };
    let pm = (sects + 1) * 512;
    let mut img = vec![0u8; pm + offset as usize + payload.len()];
    img[SETUP_SECTS] = setup_sects;
    img[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
    img[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
    img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
    img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let at = pm + offset as usize;
    img[at..at + payload.len()].copy_from_slice(payload);
    img
}

#[test]
fn payload_is_found_after_the_setup_sectors() {
    let img = bzimage(27, 0x020f, 0x3b4, b"0123456789");
    let r = payload_range(&img).unwrap();
    assert_eq!(r, 28 * 512 + 0x3b4..28 * 512 + 0x3b4 + 10);
    assert_eq!(&img[r], b"0123456789");
}

#[test]
fn zero_setup_sects_means_four() {
    let img = bzimage(0, 0x0208, 0, b"abcdefgh");
    assert_eq!(payload_range(&img).unwrap().start, 5 * 512);
}

#[test]
fn short_files_are_rejected() {
    assert_eq!(payload_range(&[0u8; 100]), Err(HeaderError::TooShort(100)));
}

#[test]
fn bad_boot_flag_is_rejected() {
    let mut img = bzimage(4, 0x020f, 0, b"abcdefgh");
    img[BOOT_FLAG] = 0;
    assert_eq!(payload_range(&img), Err(HeaderError::BootFlag(0xaa00)));
}

#[test]
fn bad_magic_is_rejected() {
    let mut img = bzimage(4, 0x020f, 0, b"abcdefgh");
    img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"\x7fELF");
    let err = payload_range(&img).unwrap_err();
    assert_eq!(err, HeaderError::Magic(*b"\x7fELF"));
    assert!(err.to_string().starts_with("no \"HdrS\" at 0x202"));
}

#[test]
fn old_protocols_are_rejected() {
    let img = bzimage(4, 0x0207, 0, b"abcdefgh");
    let err = payload_range(&img).unwrap_err();
    assert_eq!(err, HeaderError::Protocol(0x0207));
    assert_eq!(
        err.to_string(),
        "boot protocol 2.07, older than 2.08 (no payload fields)"
    );
}

#[test]
fn payload_past_the_end_is_rejected() {
    let mut img = bzimage(4, 0x020f, 0x10, b"abcdefgh");
    img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        payload_range(&img),
        Err(HeaderError::PayloadOutOfBounds { .. })
    ));
    // An offset that overflows 32 bits must not wrap.
    img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        payload_range(&img),
        Err(HeaderError::PayloadOutOfBounds { .. })
    ));
}

#[test]
fn tiny_payloads_are_rejected() {
    let img = bzimage(4, 0x020f, 0, b"abc");
    assert_eq!(payload_range(&img), Err(HeaderError::PayloadTooShort(3)));
}

#[test]
fn compressions_are_detected_by_magic() {
    let cases: &[(&[u8], Compression)] = &[
        (&[0x1f, 0x8b, 0x08], Compression::Gzip),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0], Compression::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd, 0x64], Compression::Zstd),
        (&[0x5d, 0, 0, 0x80, 0], Compression::Lzma),
        (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
        (b"BZh9", Compression::Bzip2),
        (&[0x89, b'L', b'Z', b'O', 0], Compression::Lzo),
    ];
    for (bytes, want) in cases {
        assert_eq!(Compression::detect(bytes), Some(*want), "{bytes:02x?}");
    }
    assert_eq!(Compression::detect(b"\x7fELF"), None);
}

#[test]
fn apt_cache_depends_output_gives_the_kernel_package() {
    let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-48-cloud-amd64\n";
    assert_eq!(
        kernel_dependency(out).as_deref(),
        Some("linux-image-6.1.0-48-cloud-amd64")
    );
    let alt = "linux-image-cloud-amd64\n |Depends: linux-image-6.1.0-48-cloud-amd64-unsigned\n  Depends: linux-image-6.1.0-48-cloud-amd64\n";
    assert_eq!(
        kernel_dependency(alt).as_deref(),
        Some("linux-image-6.1.0-48-cloud-amd64-unsigned")
    );
    assert_eq!(kernel_dependency("N: Unable to locate package x\n"), None);
    assert_eq!(
        kernel_dependency(
            "  Depends: linux-base\n  Recommends: linux-image-6.1.0-48-cloud-amd64\n"
        ),
        None
    );
}

#[test]
fn package_names_give_the_release() {
    assert_eq!(
        package_release("linux-image-6.1.0-48-cloud-amd64").as_deref(),
        Some("6.1.0-48-cloud-amd64")
    );
    assert_eq!(
        package_release("linux-image-6.1.0-48-cloud-amd64-unsigned").as_deref(),
        Some("6.1.0-48-cloud-amd64")
    );
    assert_eq!(package_release("linux-image-cloud-amd64"), None);
    assert_eq!(package_release("linux-image-6.1.0-48-amd64"), None);
}

#[test]
fn banner_release_skips_format_strings() {
    let img = b"\0Linux version %s\0junk\0Linux version 6.1.0-48-cloud-amd64 (debian-kernel@lists.debian.org) #1\n";
    assert_eq!(banner_release(img).as_deref(), Some("6.1.0-48-cloud-amd64"));
    assert_eq!(banner_release(b"no banner"), None);
}

#[test]
fn a_gzip_payload_is_extracted_and_its_size_checked() {
    // A fake ELF, gzip-compressed by the real tool, wrapped in a synthetic bzImage.
    let elf: Vec<u8> = ELF_MAGIC.iter().copied().chain(0..200u8).collect();
    let Ok(gz) = pipe("gzip", &["-c", "-n"], &elf) else {
        crate::skip!(crate::common::skip::SkipKind::MissingTool, "no gzip here");
    };
    let img = bzimage(4, 0x020f, 0x100, &gz);
    assert_eq!(extract_vmlinux(&img).unwrap(), elf);

    // A wrong size trailer is caught.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 4..].copy_from_slice(&999u32.to_le_bytes());
    let img = bzimage(4, 0x020f, 0x100, &bad);
    assert!(extract_vmlinux(&img).is_err());
}

/// Compresses a fake ELF with the real tool, appends the size trailer the kernel build
/// appends, and extracts it back through a synthetic bzImage.
fn round_trip(program: &str, args: &[&str], want: Compression) {
    let elf: Vec<u8> = ELF_MAGIC.iter().copied().chain(0..200u8).collect();
    let Ok(mut stream) = pipe(program, args, &elf) else {
        crate::skip!(
            crate::common::skip::SkipKind::MissingTool,
            "no {program} here"
        );
    };
    stream.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    assert_eq!(Compression::detect(&stream), Some(want));
    let img = bzimage(4, 0x020f, 0, &stream);
    assert_eq!(extract_vmlinux(&img).unwrap(), elf);
}

#[test]
fn an_xz_payload_with_a_size_trailer_is_extracted() {
    round_trip("xz", &["-c", "--check=crc32"], Compression::Xz);
}

#[test]
fn an_lz4_legacy_payload_is_extracted() {
    // Debian's 6.1 cloud kernel uses this one (`lz4 -l`, the legacy frame).
    round_trip("lz4", &["-l", "-9", "-c"], Compression::Lz4);
}

#[test]
fn a_zstd_payload_is_extracted() {
    round_trip("zstd", &["-c", "-q"], Compression::Zstd);
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, ()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|_| ())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input)
        .map_err(|_| ())?;
    let out = child.wait_with_output().map_err(|_| ())?;
    out.status.success().then_some(out.stdout).ok_or(())
}
