//! Headers built by hand, each field broken in turn (tests/bad_images.rs and
//! devices/tests/qcow2_bad.rs damage real images made by qemu-img; this covers the parsing
//! and the arithmetic without it).

use super::extensions::{EXT_BACKING_FORMAT, EXT_DATA_FILE};
use super::*;
use crate::image::test_file::file_with;

pub(crate) const CLUSTER: u64 = 65536;

/// A version 3 image of `size` bytes with 64 KiB clusters, four clusters long: the header,
/// `extra` written after byte 104 (extensions) and a backing file name at 512 if given; the
/// refcount table at cluster 1 (one cluster), the L1 table at cluster 3.
pub(crate) fn image(size: u64, extra: &[u8], backing: Option<&[u8]>) -> Vec<u8> {
    let mut h = vec![0u8; 4 * CLUSTER as usize];
    h[..4].copy_from_slice(&QCOW2_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if let Some(name) = backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[512..512 + name.len()].copy_from_slice(name);
    }
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    let l1 = size.div_ceil(CLUSTER * (CLUSTER / 8)).max(1) as u32;
    h[36..40].copy_from_slice(&l1.to_be_bytes());
    h[40..48].copy_from_slice(&(3 * CLUSTER).to_be_bytes());
    h[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h[104..104 + extra.len()].copy_from_slice(extra);
    h
}

fn ext(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend((data.len() as u32).to_be_bytes());
    e.extend(data);
    e.resize(8 + data.len().div_ceil(8) * 8, 0);
    e
}

/// Read, then checked for serving: the first error's text.
fn both(bytes: &[u8]) -> Result<Qcow2Header, String> {
    let h = Qcow2Header::read(&file_with(bytes)).map_err(|e| e.to_string())?;
    h.check_servable().map_err(|e| e.to_string())?;
    Ok(h)
}

#[test]
fn reads_size_backing_name_and_format() {
    let h = both(&image(
        1 << 30,
        &ext(EXT_BACKING_FORMAT, b"raw"),
        Some(b"base.raw"),
    ))
    .unwrap();
    assert_eq!(h.virtual_size, 1 << 30);
    assert_eq!(h.backing_file.as_deref(), Some(&b"base.raw"[..]));
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    assert!(!h.external_data_file);
    let plain = both(&image(1 << 30, &[], None)).unwrap();
    assert_eq!((plain.backing_file, plain.backing_format), (None, None));
}

#[test]
fn a_sound_header_passes_with_its_tables() {
    let h = both(&image(1 << 40, &[], None)).unwrap();
    assert_eq!(h.virtual_size, 1 << 40);
    assert_eq!(h.cluster_size(), CLUSTER);
    assert_eq!(h.l1_size, 2048);
    assert_eq!(h.reftable_bytes(), CLUSTER);
    assert_eq!(h.file_len, 4 * CLUSTER);
}

#[test]
fn external_data_files_are_seen() {
    let h = both(&image(1 << 30, &ext(EXT_DATA_FILE, b"d.raw"), None));
    assert!(h.unwrap().external_data_file);
    let mut bit = image(1 << 30, &[], None);
    bit[79] = INCOMPAT_DATA_FILE as u8;
    let h = Qcow2Header::read(&file_with(&bit)).unwrap();
    assert!(h.external_data_file);
    let e = h.check_servable().unwrap_err().to_string();
    assert!(e.contains("an external data file"), "{e}");
}

/// Something done to a header.
type Damage = dyn Fn(&mut Vec<u8>);

#[test]
fn each_broken_field_is_named() {
    let v3 = |extra: &[u8], backing: Option<&[u8]>| image(1 << 30, extra, backing);
    let cases: Vec<(&Damage, &str)> = vec![
        // What makes the header unreadable (Qcow2Header::read).
        (&|h| h.truncate(50), "its header ends at byte 72"),
        (&|h| h.truncate(90), "its header ends at byte 104"),
        (&|h| h[0] = b'X', "no qcow2 magic"),
        (&|h| h[7] = 9, "version is 9"),
        (&|h| h[23] = 40, "cluster_bits is 40"),
        (&|h| h[103] = 100, "header_length is 100"),
        (&|h| h[99] = 7, "refcount_order is 7"),
        (
            &|h| {
                h[16..20].copy_from_slice(&5000u32.to_be_bytes());
                h[8..16].copy_from_slice(&512u64.to_be_bytes());
            },
            "backing_file_size is 5000",
        ),
        (
            &|h| h[8..16].copy_from_slice(&50u64.to_be_bytes()),
            "backing_file_offset is 50",
        ),
        // What bulkhead does not serve (check_servable).
        (&|h| h[35] = 1, "does not support: encryption"),
        (&|h| h[79] = 1, "the dirty bit"),
        (&|h| h[79] = 2, "the corrupt bit"),
        (&|h| h[78] = 4, "unknown incompatible feature bit 10"),
        (&|h| h[39] = 0, "too small for a virtual size"),
        (
            &|h| h[47] = 1,
            "L1 table offset 196609 is not cluster aligned",
        ),
        (
            &|h| h.truncate(3 * CLUSTER as usize + 4),
            "its L1 table ends at byte 196624",
        ),
        (
            &|h| h[36..40].copy_from_slice(&(8u32 << 20).to_be_bytes()),
            "an L1 table of 67108864 bytes",
        ),
        (&|h| h[59] = 0, "an empty refcount table"),
        (
            &|h| h[56..60].copy_from_slice(&200u32.to_be_bytes()),
            "a refcount table of 13107200 bytes",
        ),
        (
            &|h| h[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes()),
            "its refcount table ends at byte 1099511693312",
        ),
    ];
    for (damage, want) in cases {
        let mut h = v3(&[], None);
        damage(&mut h);
        let e = both(&h).unwrap_err();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut e = ext(EXT_BACKING_FORMAT, b"raw");
                e[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
                v3(&e, None)
            },
            "runs past the end",
        ),
        (
            v3(&ext(EXT_BACKING_FORMAT, b"raw"), None)[..108].to_vec(),
            "its header extension list ends at byte 112",
        ),
        (
            v3(&[], Some(b"base"))[..514].to_vec(),
            "its backing file name ends at byte 516",
        ),
    ];
    for (bytes, want) in cases {
        let e = both(&bytes).unwrap_err();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
}

#[test]
fn the_size_bound_covers_a_full_allocation() {
    let h = both(&image(1 << 30, &[], None)).unwrap();
    let bound = h.size_bound(4096);
    // 16384 data clusters, 8 L2 tables, a refcount block or so: just above 1 GiB.
    assert!(bound > 1 << 30 && bound < (1 << 30) + (4 << 20), "{bound}");
    // A large file as it is counts in full.
    assert!(h.size_bound(1 << 30) > 2 << 30);
    let mut huge = h.clone();
    huge.virtual_size = u64::MAX;
    huge.cluster_bits = 9;
    huge.refcount_order = 6;
    assert_eq!(huge.size_bound(u64::MAX), u64::MAX);
}
