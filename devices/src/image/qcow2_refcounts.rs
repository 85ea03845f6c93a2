//! Before a qcow2 image is served writable: the clusters imago must never allocate over
//! (the header, the refcount table, the L1 table) each have a refcount block and a
//! refcount that is not 0.
//!
//! imago (0.2.6) takes a cluster whose refcount reads 0 as free. Fuzzing found an image
//! whose refcount table is empty: its first write made imago allocate a refcount block
//! for each refcount block it allocated, until the backend's stack overflowed, and by
//! then it had written over the header. `qemu-img check` calls such an image corrupt
//! (`qemu-img check -r all` repairs it). This check reads only the refcount table entries
//! and refcount blocks that cover those clusters, each block once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::qcow2_header::Qcow2Header;

/// Bits 9..=63 of a refcount table entry: the refcount block's offset.
const REFT_OFFSET_MASK: u64 = !0x1ff;

/// `Err(problem)` if a cluster of the header, the refcount table or the L1 table of the
/// image in `file` has no refcount block or a refcount of 0.
pub fn check(file: &File, h: &Qcow2Header) -> Result<(), String> {
    let cluster = h.cluster_size();
    let bits = 1u64 << h.refcount_order;
    let per_block = cluster * 8 / bits;
    let table_entries = u64::from(h.refcount_table_clusters) * cluster / 8;
    let clusters_of = |what: &'static str, start: u64, len: u64| {
        let first = start / cluster;
        let end = (start + len).div_ceil(cluster);
        (what, first..end.max(first + 1))
    };
    let parts: [(&str, Range<u64>); 3] = [
        clusters_of("the header", 0, cluster),
        clusters_of(
            "the refcount table",
            h.refcount_table_offset,
            table_entries * 8,
        ),
        clusters_of("the L1 table", h.l1_table_offset, u64::from(h.l1_size) * 8),
    ];
    let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
    for (what, clusters) in parts {
        for c in clusters {
            let index = c / per_block;
            if index >= table_entries {
                return Err(format!(
                    "cluster {c} ({what}) lies past what the refcount table covers"
                ));
            }
            let block = match blocks.entry(index) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => new.insert(
                    read_block(file, h, index, cluster)
                        .map_err(|problem| format!("cluster {c} ({what}): {problem}"))?,
                ),
            };
            if refcount(block, c % per_block, bits) == 0 {
                return Err(format!("cluster {c} ({what}) has a refcount of 0"));
            }
        }
    }
    Ok(())
}

/// Refcount block `index`, as the refcount table points at it.
fn read_block(file: &File, h: &Qcow2Header, index: u64, cluster: u64) -> Result<Vec<u8>, String> {
    let mut entry = [0u8; 8];
    file.read_exact_at(&mut entry, h.refcount_table_offset + index * 8)
        .map_err(|e| format!("reading refcount table entry {index}: {e}"))?;
    let offset = u64::from_be_bytes(entry) & REFT_OFFSET_MASK;
    if offset == 0 {
        return Err(format!(
            "refcount table entry {index} names no refcount block"
        ));
    }
    if offset % cluster != 0
        || offset
            .checked_add(cluster)
            .is_none_or(|end| end > h.file_len)
    {
        return Err(format!(
            "refcount block {index} at offset {offset} is not a cluster inside the file"
        ));
    }
    let mut block = vec![0u8; cluster as usize];
    file.read_exact_at(&mut block, offset)
        .map_err(|e| format!("reading refcount block {index}: {e}"))?;
    Ok(block)
}

/// Entry `i` of a refcount block of `bits`-bit entries: big-endian from a byte on, packed
/// from the least significant bit below (as QEMU writes them).
fn refcount(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let at = i as usize * bytes;
        block[at..at + bytes]
            .iter()
            .fold(0, |v, &b| (v << 8) | u64::from(b))
    } else {
        let per_byte = 8 / bits;
        let byte = block[(i / per_byte) as usize];
        (u64::from(byte) >> ((i % per_byte) * bits)) & ((1 << bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_file::file_with;

    const CLUSTER: usize = 512;

    /// A header of 512-byte clusters: refcount table in cluster 1, L1 table (2 entries) in
    /// cluster 3, `order`-bit refcounts.
    fn header(order: u32, file_len: u64) -> Qcow2Header {
        Qcow2Header {
            version: 3,
            cluster_bits: 9,
            virtual_size: 64 << 10,
            l1_size: 2,
            l1_table_offset: 3 * CLUSTER as u64,
            refcount_table_offset: CLUSTER as u64,
            refcount_table_clusters: 1,
            crypt_method: 0,
            refcount_order: order,
            incompatible: 0,
            backing_file: None,
            backing_format: None,
            external_data_file: false,
            file_len,
        }
    }

    /// An image of four clusters whose refcount block (cluster 2) gives clusters 0..4 the
    /// refcounts `counts`, 16-bit.
    fn image(counts: [u16; 4]) -> Vec<u8> {
        let mut bytes = vec![0u8; 4 * CLUSTER];
        bytes[CLUSTER..CLUSTER + 8].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
        for (i, n) in counts.iter().enumerate() {
            let at = 2 * CLUSTER + 2 * i;
            bytes[at..at + 2].copy_from_slice(&n.to_be_bytes());
        }
        bytes
    }

    fn check_bytes(bytes: &[u8], order: u32) -> Result<(), String> {
        check(&file_with(bytes), &header(order, bytes.len() as u64))
    }

    #[test]
    fn sound_refcounts_pass() {
        assert_eq!(check_bytes(&image([1, 1, 1, 1]), 4), Ok(()));
    }

    #[test]
    fn an_empty_refcount_table_is_refused() {
        let mut bytes = image([1, 1, 1, 1]);
        bytes[CLUSTER..CLUSTER + 8].fill(0);
        let e = check_bytes(&bytes, 4).unwrap_err();
        assert!(
            e.contains("cluster 0 (the header)") && e.contains("names no refcount block"),
            "{e}"
        );
    }

    #[test]
    fn metadata_with_a_refcount_of_0_is_refused() {
        let e = check_bytes(&image([1, 1, 1, 0]), 4).unwrap_err();
        assert_eq!(e, "cluster 3 (the L1 table) has a refcount of 0");
        let e = check_bytes(&image([1, 0, 1, 1]), 4).unwrap_err();
        assert_eq!(e, "cluster 1 (the refcount table) has a refcount of 0");
    }

    #[test]
    fn a_refcount_block_outside_the_file_is_refused() {
        let mut bytes = image([1, 1, 1, 1]);
        bytes[CLUSTER..CLUSTER + 8].copy_from_slice(&(64 * CLUSTER as u64).to_be_bytes());
        let e = check_bytes(&bytes, 4).unwrap_err();
        assert!(e.contains("not a cluster inside the file"), "{e}");
    }

    #[test]
    fn one_bit_refcounts_are_read_from_the_least_significant_bit() {
        let mut bytes = image([0, 0, 0, 0]);
        bytes[2 * CLUSTER] = 0b0000_1111;
        assert_eq!(check_bytes(&bytes, 0), Ok(()));
        bytes[2 * CLUSTER] = 0b0000_0111;
        let e = check_bytes(&bytes, 0).unwrap_err();
        assert_eq!(e, "cluster 3 (the L1 table) has a refcount of 0");
    }

    #[test]
    fn entries_of_every_width_are_read() {
        let block = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(refcount(&block, 0, 64), 0x1234_5678_9abc_def0);
        assert_eq!(refcount(&block, 1, 32), 0x9abc_def0);
        assert_eq!(refcount(&block, 3, 16), 0xdef0);
        assert_eq!(refcount(&block, 1, 8), 0x34);
        assert_eq!(refcount(&block, 1, 4), 0x1);
        assert_eq!(refcount(&block, 3, 2), 0x0);
        assert_eq!(refcount(&block, 4, 1), 0x1);
    }
}
