//! Unit tests of tests/common/initramfs.rs.

use crate::common::initramfs::*;

#[test]
fn newc_headers_are_well_formed() {
    let mut w = Cpio::default();
    w.file("init", 0o755, b"#!x\n");
    let a = w.finish();
    assert_eq!(&a[..6], b"070701");
    // mode field (second), file size (seventh), name size (twelfth)
    assert_eq!(&a[14..22], b"000081ed");
    assert_eq!(&a[54..62], b"00000004");
    assert_eq!(&a[94..102], b"00000005");
    assert_eq!(&a[110..115], b"init\0");
    assert_eq!(a.len() % 4, 0);
    assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
}

#[test]
fn dynamic_binaries_are_refused() {
    let mut elf = vec![0u8; 200];
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    assert!(!has_interpreter(&elf));
    elf[64..68].copy_from_slice(&3u32.to_le_bytes());
    assert!(has_interpreter(&elf));
}
