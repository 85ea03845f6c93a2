//! The header checks on headers built by hand (tests/bad_images.rs damages real images
//! made by qemu-img; this covers the arithmetic without it).

use super::*;
use std::io::Write;

const CLUSTER: u64 = 65536;

/// A version 3 header for `size` bytes with 64 KiB clusters: refcount table at cluster 1
/// (one cluster), L1 table at cluster 3, the file 4 clusters long.
fn header(size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 4 * CLUSTER as usize];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    let l1 = size.div_ceil(CLUSTER * (CLUSTER / 8)).max(1) as u32;
    h[36..40].copy_from_slice(&l1.to_be_bytes());
    h[40..48].copy_from_slice(&(3 * CLUSTER).to_be_bytes());
    h[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h
}

fn file_with(bytes: &[u8]) -> File {
    let path = std::env::temp_dir().join(format!(
        "bulkhead-qcow2-header-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn check(bytes: &[u8]) -> Result<HeaderInfo, String> {
    check_header(&file_with(bytes), "/img").map_err(|e| e.to_string())
}

#[test]
fn a_sound_header_passes_with_its_memory_bound() {
    let info = check(&header(1 << 40)).unwrap();
    assert_eq!(info.size, 1 << 40);
    assert_eq!(info.cluster_size, CLUSTER);
    assert_eq!(info.l1_entries, 2048);
    assert_eq!(info.backing_name, None);
    // 128 L2 tables + 32 refcount blocks of 64 KiB, a 16 KiB L1, a 64 KiB refcount table.
    assert_eq!(info.metadata_bound(true), 160 * CLUSTER + 16384 + CLUSTER);
    assert_eq!(info.metadata_bound(false), 128 * CLUSTER + 16384);
}

/// Something done to a header.
type Damage = dyn Fn(&mut Vec<u8>);

#[test]
fn each_broken_field_is_named() {
    let cases: [(&Damage, &str); 8] = [
        (&|h| h.truncate(60), "its header ends at byte 72"),
        (&|h| h[0] = b'X', "no qcow2 magic"),
        (&|h| h[7] = 4, "version 4"),
        (&|h| h[23] = 30, "cluster size 2^30"),
        (&|h| h[35] = 1, "encryption"),
        (&|h| h[79] = 1, "the dirty bit"),
        (&|h| h[39] = 0, "too small for a virtual size"),
        (
            &|h| h[47] = 1,
            "L1 table offset 196609 is not cluster aligned",
        ),
    ];
    for (damage, want) in cases {
        let mut h = header(1 << 30);
        damage(&mut h);
        let e = check(&h).unwrap_err();
        assert!(e.contains("/img") && e.contains(want), "{want}: {e}");
    }
    let mut h = header(1 << 30);
    h.truncate(3 * CLUSTER as usize + 4);
    let e = check(&h).unwrap_err();
    assert!(e.contains("its L1 table ends at byte 196624"), "{e}");
    let mut h = header(1 << 30);
    h[56..60].copy_from_slice(&200u32.to_be_bytes());
    let e = check(&h).unwrap_err();
    assert!(e.contains("a refcount table of 13107200 bytes"), "{e}");
}
